//! Errors as a shell user expects them: one line on stderr, and an exit status.

use std::{fmt, io};

use anyhow::Context as _;
use tonic::Code;

use sidewall_proto::client::ConnectError;

/// Usage errors exit 2, like clap's own.
const EXIT_USAGE: u8 = 2;
const EXIT_FAILURE: u8 = 1;

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
        _ if lost => (format!("lost connection to sidewalld: {message}"), EXIT_FAILURE),
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
    fn plain_errors_are_one_line() {
        let err = anyhow::anyhow!("inner\nsecond").context("outer");
        assert_eq!(report(&err), (Some("outer: inner second".into()), 1));
    }
}
