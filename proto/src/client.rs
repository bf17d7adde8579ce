//! Where sidewalld listens (`--grpc-address`, `--server`), and a gRPC channel to it over a
//! unix socket, or TCP with mutual TLS (or plaintext). Shared by the daemon, the CLI and any
//! Rust client.

use std::{
    error::Error as StdError,
    fmt, io,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

pub const DEFAULT_SERVER: &str = "unix:///run/sidewall/sidewall.sock";

/// A local daemon answers at once; this only bounds a remote host that drops packets.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const FORMS: &str = "expected unix:///path, /path, tcp://host:port, http://host:port or host:port";

/// A parsed `--server` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    /// `host:port`, spoken to as plaintext HTTP/2.
    Tcp(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
            Address::Tcp(authority) => write!(f, "tcp://{authority}"),
        }
    }
}

/// Parses `--server`; the error text is shown by clap after the offending value.
pub fn parse_address(s: &str) -> Result<Address, String> {
    if let Some(rest) = s.strip_prefix("unix:") {
        return unix_path(rest.strip_prefix("//").unwrap_or(rest));
    }
    if s.starts_with('/') {
        return unix_path(s);
    }
    if s.starts_with("https://") {
        return Err("use tcp://host:port; TLS is asked for with --tls-ca".into());
    }
    let authority = s.strip_prefix("tcp://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    tcp_authority(authority.strip_suffix('/').unwrap_or(authority))
}

fn unix_path(path: &str) -> Result<Address, String> {
    if path.starts_with('/') {
        Ok(Address::Unix(PathBuf::from(path)))
    } else {
        Err(format!("unix socket path must be absolute; {FORMS}"))
    }
}

fn tcp_authority(authority: &str) -> Result<Address, String> {
    let uri: Uri = format!("http://{authority}").parse().map_err(|_| FORMS.to_string())?;
    // The round trip rejects paths and queries; a gRPC server address is only host:port.
    let whole = uri.authority().is_some_and(|a| a.as_str() == authority) && !authority.contains('@');
    let has_host = uri.host().is_some_and(|h| !h.is_empty());
    if whole && has_host && uri.port_u16().is_some() {
        Ok(Address::Tcp(authority.to_string()))
    } else {
        Err(FORMS.to_string())
    }
}

/// Failing to reach the daemon: one line naming the address, the OS reason and a hint.
#[derive(Debug)]
pub struct ConnectError {
    server: String,
    reason: String,
    hint: Option<&'static str>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot connect to sidewalld at {}: {}", self.server, self.reason)?;
        match self.hint {
            Some(hint) => write!(f, " ({hint})"),
            None => Ok(()),
        }
    }
}

impl StdError for ConnectError {}

impl ConnectError {
    fn new(addr: &Address, tls: bool, err: &(dyn StdError + 'static)) -> Self {
        let (reason, kind) = root_cause(err);
        let hint = match kind {
            Some(io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => Some("is sidewalld running?"),
            Some(io::ErrorKind::TimedOut) => Some("is sidewalld running and reachable?"),
            Some(io::ErrorKind::PermissionDenied) => Some("the socket is for root; try sudo"),
            _ if matches!(addr, Address::Tcp(_)) && !tls => {
                Some("if sidewalld serves TLS there, give --tls-ca, --tls-cert and --tls-key")
            }
            _ => None,
        };
        ConnectError { server: addr.to_string(), reason, hint }
    }
}

/// The client side of mutual TLS, for TCP addresses: the CA that signed sidewalld's
/// certificate, this client's certificate and key, and the name to verify the server's
/// certificate against (default: the host of the address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// TLS is spoken when a CA is given.
    pub fn enabled(&self) -> bool {
        self.ca.is_some()
    }

    /// The tonic configuration; errors name the option and the file.
    pub fn config(&self) -> Result<Option<ClientTlsConfig>, String> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err(
                    "--tls-cert and --tls-key need --tls-ca (the CA of sidewalld's certificate)".into()
                );
            }
            return Ok(None);
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem("--tls-ca", ca, CERT)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    pem("--tls-cert", cert, CERT)?,
                    pem("--tls-key", key, KEY)?,
                ));
            }
            (None, None) => {}
            (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(Some(config))
    }
}

/// The end of the PEM labels each option needs ("BEGIN CERTIFICATE", "BEGIN EC PRIVATE KEY").
const CERT: &str = "CERTIFICATE-----";
const KEY: &str = "PRIVATE KEY-----";

/// A PEM file's content, checked to hold what `option` needs.
fn pem(option: &str, path: &Path, label: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!("{option} {}: cannot read: {}", path.display(), strip_os_error(&e.to_string()))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.lines().map(str::trim).any(|l| l.starts_with("-----BEGIN ") && l.ends_with(label)) {
        let what = if label == CERT { "certificate" } else { "private key" };
        return Err(format!("{option} {}: no PEM {what} in it", path.display()));
    }
    Ok(bytes)
}

/// The OS error behind tonic's "transport error", without Rust's " (os error N)" suffix.
fn root_cause(err: &(dyn StdError + 'static)) -> (String, Option<io::ErrorKind>) {
    let mut last = err;
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            let reason = match io_err.kind() {
                io::ErrorKind::TimedOut => "timed out".to_string(),
                _ => strip_os_error(&io_err.to_string()).to_string(),
            };
            return (reason, Some(io_err.kind()));
        }
        last = e;
        current = e.source();
    }
    (last.to_string(), None)
}

fn strip_os_error(text: &str) -> &str {
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    }
}

/// Connects eagerly, so that a missing daemon is reported before any request is made.
pub async fn connect(addr: &Address) -> Result<Channel, ConnectError> {
    open(addr, None).await.map_err(|e| ConnectError::new(addr, false, &e))
}

/// As `connect`, speaking TLS to a TCP address when `tls` is enabled (a unix socket needs
/// none and ignores it).
pub async fn connect_tls(addr: &Address, tls: &TlsOptions) -> Result<Channel, ConnectError> {
    let config =
        tls.config().map_err(|reason| ConnectError { server: addr.to_string(), reason, hint: None })?;
    open(addr, config).await.map_err(|e| ConnectError::new(addr, tls.enabled(), &e))
}

async fn open(addr: &Address, tls: Option<ClientTlsConfig>) -> Result<Channel, tonic::transport::Error> {
    match addr {
        Address::Unix(path) => {
            let path = path.clone();
            // tonic wants a URI; the connector below ignores it.
            Endpoint::from_static("http://[::]:50051")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
        }
        Address::Tcp(authority) => {
            let endpoint = match tls {
                Some(config) => Endpoint::from_shared(format!("https://{authority}"))?.tls_config(config)?,
                None => Endpoint::from_shared(format!("http://{authority}"))?,
            };
            endpoint.connect_timeout(CONNECT_TIMEOUT).connect().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(p: &str) -> Result<Address, String> {
        Ok(Address::Unix(PathBuf::from(p)))
    }

    fn tcp(a: &str) -> Result<Address, String> {
        Ok(Address::Tcp(a.to_string()))
    }

    #[test]
    fn parses_unix_forms() {
        assert_eq!(parse_address(DEFAULT_SERVER), unix("/run/sidewall/sidewall.sock"));
        assert_eq!(parse_address("unix:/tmp/s.sock"), unix("/tmp/s.sock"));
        assert_eq!(parse_address("/tmp/s.sock"), unix("/tmp/s.sock"));
    }

    #[test]
    fn rejects_relative_unix_paths() {
        assert!(parse_address("unix://tmp/s.sock").is_err());
        assert!(parse_address("unix:s.sock").is_err());
        assert!(parse_address("unix://").is_err());
    }

    #[test]
    fn parses_tcp_forms() {
        assert_eq!(parse_address("tcp://127.0.0.1:50051"), tcp("127.0.0.1:50051"));
        assert_eq!(parse_address("http://node1:50051/"), tcp("node1:50051"));
        assert_eq!(parse_address("localhost:50051"), tcp("localhost:50051"));
        assert_eq!(parse_address("[::1]:50051"), tcp("[::1]:50051"));
    }

    #[test]
    fn rejects_bad_tcp_forms() {
        for bad in [
            "localhost",
            "tcp://host",
            "host:port",
            "http://host:1/path",
            "user@host:1",
            "https://host:443",
            "ftp://host:21",
            "",
            ":50051",
        ] {
            assert!(parse_address(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn displays_canonical_forms() {
        assert_eq!(parse_address("/run/x.sock").map(|a| a.to_string()), Ok("unix:///run/x.sock".to_string()));
        assert_eq!(parse_address("h:1").map(|a| a.to_string()), Ok("tcp://h:1".to_string()));
    }

    #[test]
    fn strips_os_error_suffix() {
        assert_eq!(strip_os_error("No such file or directory (os error 2)"), "No such file or directory");
        assert_eq!(strip_os_error("broken"), "broken");
    }

    #[tokio::test]
    async fn missing_socket_is_one_line_with_hint() {
        let addr = Address::Unix(PathBuf::from("/nonexistent/sidewall-test.sock"));
        let Err(err) = connect(&addr).await else {
            panic!("connected to a missing socket");
        };
        assert_eq!(
            err.to_string(),
            "cannot connect to sidewalld at unix:///nonexistent/sidewall-test.sock: \
             No such file or directory (is sidewalld running?)"
        );
    }

    /// A stand-in sidewalld on a unix socket: proves the connector speaks gRPC end to end.
    mod fake {
        use std::pin::Pin;

        use crate::v1::{
            GetEventsRequest, GetEventsResponse, GetStatusRequest, GetStatusResponse, GetVersionRequest,
            GetVersionResponse,
            sensors_server::{Sensors, SensorsServer},
        };
        use tokio::net::UnixListener;
        use tokio_stream::{Stream, wrappers::UnixListenerStream};
        use tonic::{Request, Response, Status};

        pub struct Fake;

        type Events = Pin<Box<dyn Stream<Item = Result<GetEventsResponse, Status>> + Send>>;

        #[tonic::async_trait]
        impl Sensors for Fake {
            type GetEventsStream = Events;

            async fn get_events(
                &self,
                request: Request<GetEventsRequest>,
            ) -> Result<Response<Events>, Status> {
                let request = request.into_inner();
                if request.allow_list.iter().any(|f| f.pod_regex.iter().any(|r| r == "(")) {
                    return Err(Status::invalid_argument("bad pod_regex"));
                }
                // Echo the filter count in node_name so that the test sees what arrived.
                let ev = GetEventsResponse {
                    node_name: format!("{}/{}", request.allow_list.len(), request.deny_list.len()),
                    ..GetEventsResponse::default()
                };
                Ok(Response::new(Box::pin(tokio_stream::iter([Ok(ev)]))))
            }

            async fn get_status(
                &self,
                _: Request<GetStatusRequest>,
            ) -> Result<Response<GetStatusResponse>, Status> {
                Ok(Response::new(GetStatusResponse {
                    node_name: "n1".into(),
                    ..GetStatusResponse::default()
                }))
            }

            async fn get_flows(
                &self,
                _: Request<crate::v1::GetFlowsRequest>,
            ) -> Result<Response<crate::v1::GetFlowsResponse>, Status> {
                Ok(Response::new(Default::default()))
            }

            async fn add_policy(
                &self,
                _: Request<crate::v1::AddPolicyRequest>,
            ) -> Result<Response<crate::v1::AddPolicyResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }

            async fn delete_policy(
                &self,
                _: Request<crate::v1::DeletePolicyRequest>,
            ) -> Result<Response<crate::v1::DeletePolicyResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }

            async fn suggest_policy(
                &self,
                _: Request<crate::v1::SuggestPolicyRequest>,
            ) -> Result<Response<crate::v1::SuggestPolicyResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn list_policies(
                &self,
                _: Request<crate::v1::ListPoliciesRequest>,
            ) -> Result<Response<crate::v1::ListPoliciesResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }

            async fn set_policy_mode(
                &self,
                _: Request<crate::v1::SetPolicyModeRequest>,
            ) -> Result<Response<crate::v1::SetPolicyModeResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }

            async fn prepare_container(
                &self,
                _: Request<crate::v1::PrepareContainerRequest>,
            ) -> Result<Response<crate::v1::PrepareContainerResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }

            async fn get_version(
                &self,
                _: Request<GetVersionRequest>,
            ) -> Result<Response<GetVersionResponse>, Status> {
                Ok(Response::new(GetVersionResponse { version: "9.9.9".into() }))
            }
        }

        pub fn serve(listener: UnixListener) {
            let server = tonic::transport::Server::builder()
                .add_service(SensorsServer::new(Fake))
                .serve_with_incoming(UnixListenerStream::new(listener));
            tokio::spawn(server);
        }
    }

    #[tokio::test]
    async fn talks_grpc_over_a_unix_socket() {
        use crate::v1::{
            Filter, GetEventsRequest, GetStatusRequest, GetVersionRequest, sensors_client::SensorsClient,
        };

        let path = std::env::temp_dir().join(format!("sidewall-cli-test-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("binds a temp socket");
        fake::serve(listener);

        let channel = connect(&Address::Unix(path.clone())).await.expect("connects");
        let mut client = SensorsClient::new(channel);
        let version = client.get_version(GetVersionRequest {}).await.expect("version");
        assert_eq!(version.into_inner().version, "9.9.9");
        let status = client.get_status(GetStatusRequest {}).await.expect("status");
        assert_eq!(status.into_inner().node_name, "n1");

        let request = GetEventsRequest {
            allow_list: vec![Filter::default()],
            deny_list: vec![Filter::default(), Filter::default()],
        };
        let mut events = client.get_events(request).await.expect("stream").into_inner();
        let first = events.message().await.expect("event");
        assert_eq!(first.map(|e| e.node_name), Some("1/2".to_string()));

        let bad = GetEventsRequest {
            allow_list: vec![Filter { pod_regex: vec!["(".into()], ..Filter::default() }],
            deny_list: Vec::new(),
        };
        let err = client.get_events(bad).await.expect_err("rejected");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let _ = std::fs::remove_file(&path);
    }
}
