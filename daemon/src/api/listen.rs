//! Where the API listens: a unix socket (default, mode 0600) or TCP when asked for.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, bail};
use sidewall_proto::v1::sensors_server::SensorsServer;
use tokio::{net::UnixListener, sync::watch};
use tokio_stream::wrappers::UnixListenerStream;

use super::service::SensorsService;
use crate::config::{Address, tcp_listen_addr};

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
        Address::Tcp(authority) => {
            let a = tcp_listen_addr(&authority).map_err(anyhow::Error::msg)?;
            router.serve_with_shutdown(a, stop).await.with_context(|| format!("serving on tcp://{a}"))
        }
        Address::Unix(path) => {
            let listener = bind_unix(&path)?;
            let r = router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop).await;
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
