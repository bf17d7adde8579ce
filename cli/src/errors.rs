//! Errors as a shell user expects them: one line on stderr, and an exit status.

use std::{fmt, io};

use anyhow::Context as _;
use tonic::Code;

use sidewall_proto::client::ConnectError;

/// Usage errors exit 2, like clap's own.
const EXIT_USAGE: u8 = 2;
const EXIT_FAILURE: u8 = 1;
/// `sidewall policy test`: the policy would alert, block, kill or cut something.
const EXIT_FIRES: u8 = 3;

/// The replay found what the policy would act on (already printed).
#[derive(Debug, thiserror::Error)]
#[error("the policy would fire")]
pub struct WouldFire;

/// stdout was closed by its reader (`sidewall getevents | head`): it has all it wants.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Tags a failed stdout write, so that a closed pipe ends the program quietly.
pub fn stdout(result: io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => other.context("cannot write to stdout"),
    }
}

/// The line to print (none for a closed stdout) and the exit status.
pub fn report(err: &anyhow::Error) -> (Option<String>, u8) {
    if err.is::<StdoutClosed>() {
        return (None, 0);
    }
    if err.is::<WouldFire>() {
        return (None, EXIT_FIRES);
    }
    if let Some(e) = err.downcast_ref::<ConnectError>() {
        return (Some(e.to_string()), EXIT_FAILURE);
    }
    if let Some(status) = err.chain().find_map(|e| e.downcast_ref::<tonic::Status>()) {
        return grpc(status);
    }
    (Some(one_line(&format!("{err:#}"))), EXIT_FAILURE)
}

fn grpc(status: &tonic::Status) -> (Option<String>, u8) {
    let message = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        one_line(status.message())
    };
    // Unavailable, or a status made on this side from a transport failure (it has a source;
    // one the daemon sent has none): the daemon went away.
    let lost = status.code() == Code::Unavailable
        || (status.code() == Code::Unknown && std::error::Error::source(status).is_some());
    let (line, code) = match status.code() {
        _ if lost => (lost_connection(status, &message), EXIT_FAILURE),
        Code::InvalidArgument => (format!("invalid request: {message}"), EXIT_USAGE),
        // The daemon names what it did not find ("no policy shop/web").
        Code::NotFound => (message, EXIT_FAILURE),
        Code::Unimplemented => {
            (format!("sidewalld does not support this request (older version?): {message}"), EXIT_FAILURE)
        }
        Code::PermissionDenied | Code::Unauthenticated => {
            (format!("permission denied: {message}"), EXIT_FAILURE)
        }
        code => (format!("sidewalld error ({code:?}): {message}"), EXIT_FAILURE),
    };
    (Some(line), code)
}

/// "lost connection to sidewalld: <the deepest cause>", with a hint when TLS is the cause.
fn lost_connection(status: &tonic::Status, message: &str) -> String {
    let mut cause = None;
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        cause = Some(e.to_string());
        next = e.source();
    }
    let cause = cause.map_or_else(|| message.to_string(), |c| one_line(&c));
    let hint = if cause.contains("CertificateRequired") {
        " (sidewalld requires a client certificate: give --tls-cert and --tls-key)"
    } else if cause.contains("UnknownCA")
        || cause.contains("BadCertificate")
        || cause.contains("CertificateUnknown")
    {
        " (sidewalld does not accept this client certificate: is it signed by its client CA?)"
    } else {
        ""
    };
    format!("lost connection to sidewalld: {cause}{hint}")
}

/// A broken connection over TCP is most often TLS that does not fit: say what to check.
pub fn with_tcp_hint(line: String, tcp: Option<&sidewall_proto::client::TlsOptions>) -> String {
    let broken = line.starts_with("lost connection") || line.contains("h2 protocol error");
    match tcp {
        Some(tls) if broken && !line.ends_with(')') => {
            let hint = if !tls.enabled() {
                "does sidewalld serve TLS there? give --tls-ca, --tls-cert and --tls-key"
            } else {
                "is the client certificate signed by the CA sidewalld trusts for clients?"
            };
            format!("{line} ({hint})")
        }
        _ => line,
    }
}

/// Server messages (regex errors, for one) can span lines; stderr gets one.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_is_a_usage_error() {
        let err = anyhow::Error::new(tonic::Status::invalid_argument(
            "bad pod_regex \"(\": regex parse error:\n    (\n    ^\nerror: unclosed group",
        ));
        assert_eq!(
            report(&err),
            (
                Some(
                    "invalid request: bad pod_regex \"(\": regex parse error: ( ^ error: unclosed group"
                        .into()
                ),
                2
            )
        );
    }

    #[test]
    fn not_found_is_the_message() {
        let err = anyhow::Error::new(tonic::Status::not_found("no policy shop/web"));
        assert_eq!(report(&err), (Some("no policy shop/web".into()), 1));
    }

    #[test]
    fn status_found_under_context() {
        let err = anyhow::Error::new(tonic::Status::unavailable("broken pipe")).context("status");
        assert_eq!(report(&err), (Some("lost connection to sidewalld: broken pipe".into()), 1));
    }

    #[test]
    fn other_codes_name_the_code() {
        let err = anyhow::Error::new(tonic::Status::internal(""));
        assert_eq!(report(&err), (Some("sidewalld error (Internal): Internal error".into()), 1));
    }

    #[test]
    fn broken_pipe_is_quiet_success() {
        let err = stdout(Err(io::ErrorKind::BrokenPipe.into())).expect_err("fails");
        assert_eq!(report(&err), (None, 0));
        let err = stdout(Err(io::ErrorKind::StorageFull.into())).expect_err("fails");
        assert_eq!(report(&err).1, 1);
    }

    #[test]
    fn broken_tcp_connections_hint_at_tls() {
        use sidewall_proto::client::TlsOptions;
        let plain = TlsOptions::default();
        let tls = TlsOptions { ca: Some("/ca.pem".into()), ..TlsOptions::default() };
        let line = "sidewalld error (Internal): h2 protocol error: http2 error".to_string();
        assert!(
            with_tcp_hint(line.clone(), Some(&plain))
                .ends_with("(does sidewalld serve TLS there? give --tls-ca, --tls-cert and --tls-key)")
        );
        assert_eq!(with_tcp_hint(line.clone(), None), line, "not over TCP");
        let lost = "lost connection to sidewalld: stream closed because of a broken pipe".to_string();
        assert!(with_tcp_hint(lost, Some(&tls)).ends_with("signed by the CA sidewalld trusts for clients?)"));
        let denied = "permission denied: AddPolicy needs the admin role".to_string();
        assert_eq!(with_tcp_hint(denied.clone(), Some(&tls)), denied);
    }

    #[test]
    fn plain_errors_are_one_line() {
        let err = anyhow::anyhow!("inner\nsecond").context("outer");
        assert_eq!(report(&err), (Some("outer: inner second".into()), 1));
    }
}
