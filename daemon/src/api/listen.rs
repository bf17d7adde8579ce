//! Where the API listens: a unix socket (default, mode 0600) or TCP when asked for.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use sidewall_proto::v1::sensors_server::SensorsServer;
use tokio::{net::UnixListener, sync::watch};
use tokio_stream::wrappers::UnixListenerStream;

use super::service::SensorsService;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for Address {
    type Err = String;

    /// `unix:///path`, `/path`, `tcp://host:port` or `host:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix://") {
            return unix_path(p);
        }
        if s.starts_with('/') {
            return unix_path(s);
        }
        let hostport = s.strip_prefix("tcp://").unwrap_or(s);
        hostport
            .parse()
            .map(Address::Tcp)
            .map_err(|_| format!("{s:?} is neither unix:///absolute/path nor tcp://ip:port"))
    }
}

fn unix_path(p: &str) -> Result<Address, String> {
    if p.starts_with('/') {
        Ok(Address::Unix(PathBuf::from(p)))
    } else {
        Err(format!("unix socket path {p:?} must be absolute"))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Serves until `shutdown` flips; removes the socket file afterwards.
pub async fn serve(
    addr: Address,
    svc: SensorsService,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let router = tonic::transport::Server::builder().add_service(SensorsServer::new(svc));
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    match addr {
        Address::Tcp(a) => router
            .serve_with_shutdown(a, stop)
            .await
            .with_context(|| format!("serving on tcp://{a}")),
        Address::Unix(path) => {
            let listener = bind_unix(&path)?;
            let r = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
                .await;
            let _ = fs::remove_file(&path);
            r.with_context(|| format!("serving on unix://{}", path.display()))
        }
    }
}

/// Binds the socket with mode 0600. A stale socket is replaced; a live one (another daemon
/// answering on it) is an error rather than being stolen.
fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another process is already serving on unix://{}", path.display());
        }
        fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // Create it private from the start: no window in which others could connect.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding unix://{}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        assert_eq!(
            "unix:///run/s.sock".parse(),
            Ok(Address::Unix("/run/s.sock".into()))
        );
        assert_eq!("/run/s.sock".parse(), Ok(Address::Unix("/run/s.sock".into())));
        assert_eq!(
            "tcp://127.0.0.1:50051".parse(),
            Ok(Address::Tcp("127.0.0.1:50051".parse().expect("addr")))
        );
        assert_eq!(
            "[::1]:1".parse::<Address>().map(|a| a.to_string()),
            Ok("tcp://[::1]:1".into())
        );
        assert!("unix://relative.sock".parse::<Address>().is_err());
        assert!("localhost".parse::<Address>().is_err());
    }
}
