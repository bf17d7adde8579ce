//! Where the API listens: unix sockets (peers by their credentials), TCP with mutual TLS
//! (peers by their certificate), or plaintext TCP when asked for. Every listener serves the
//! same service behind the same authorization layer (`access`).

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use sidewall_proto::v1::{self as pb, sensors_server::SensorsServer};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_stream::{
    StreamExt as _,
    wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream},
};

use super::{
    access::{AccessStats, Authorize},
    peer::{Conn, Peer},
    service::SensorsService,
    tls::{self, TlsState},
};
use crate::config::{
    Config, Listener,
    api::{Access, Role},
};

/// A listener ready to serve.
enum Prepared {
    Unix { path: PathBuf, mode: u32, gid: Option<u32> },
    Tls { addr: SocketAddr, tls: Arc<TlsState> },
    Insecure { addr: SocketAddr },
}

/// The configured API: its listeners, who holds which role, and what status shows of it.
pub struct Api {
    listeners: Vec<Prepared>,
    access: Arc<Access>,
    pub report: Arc<ApiReport>,
}

/// What GetStatus shows of the API.
pub struct ApiReport {
    listeners: Vec<ListenerReport>,
    pub stats: Arc<AccessStats>,
    warnings: Vec<String>,
}

struct ListenerReport {
    address: String,
    security: &'static str,
    detail: String,
    tls: Option<Arc<TlsState>>,
}

impl ApiReport {
    pub fn snapshot(&self) -> pb::ApiStatus {
        pb::ApiStatus {
            listeners: self.listeners.iter().map(ListenerReport::snapshot).collect(),
            denied_by_method: self.stats.denied().into_iter().map(|(m, n)| (m.to_string(), n)).collect(),
            refused_handshakes: self.stats.refused_handshakes(),
            warnings: self.warnings.clone(),
        }
    }
}

impl ListenerReport {
    fn snapshot(&self) -> pb::ApiListener {
        let tls = self.tls.as_ref();
        pb::ApiListener {
            address: self.address.clone(),
            security: self.security.into(),
            detail: tls.map_or_else(|| self.detail.clone(), |t| t.detail()),
            certificate_not_after: tls.and_then(|t| t.not_after()),
            last_error: tls.and_then(|t| t.last_error()).unwrap_or_default(),
        }
    }
}

/// Loads the TLS files and resolves the socket group: a configuration that cannot be served
/// fails here, before anything is loaded into the kernel.
pub fn prepare(cfg: &Config) -> anyhow::Result<Api> {
    let access = cfg.access();
    let mut listeners = Vec::new();
    let mut reports = Vec::new();
    let mut warnings = Vec::new();
    for l in cfg.listeners() {
        let address = l.address();
        let (prepared, report) = match l {
            Listener::Unix { path, mode, group } => {
                let gid = group.as_deref().map(resolve_group).transpose()?;
                let detail = format!("mode {mode:04o}, group {}", group.as_deref().unwrap_or("root"));
                (Prepared::Unix { path, mode, gid }, report(address, "unix", detail, None))
            }
            Listener::Tls { addr, files } => {
                let tls = TlsState::load(files)?;
                (Prepared::Tls { addr, tls: tls.clone() }, report(address, "mtls", String::new(), Some(tls)))
            }
            Listener::InsecureTcp { addr } => {
                let role = access.insecure_tcp.map_or("none", Role::name);
                let warning = format!(
                    "{address} serves the API in plaintext without client authentication \
                     (insecure_tcp): anyone who reaches it has the role {role}"
                );
                tracing::warn!("{warning}");
                warnings.push(warning);
                let detail = format!("plaintext, every peer has the role {role}");
                (Prepared::Insecure { addr }, report(address, "insecure", detail, None))
            }
        };
        listeners.push(prepared);
        reports.push(report);
    }
    let stats = Arc::new(AccessStats::default());
    let report = Arc::new(ApiReport { listeners: reports, stats, warnings });
    Ok(Api { listeners, access: Arc::new(access), report })
}

fn report(
    address: String,
    security: &'static str,
    detail: String,
    tls: Option<Arc<TlsState>>,
) -> ListenerReport {
    ListenerReport { address, security, detail, tls }
}

/// Serves every listener until `shutdown` flips; the first that fails ends the API.
pub async fn serve(api: Api, svc: SensorsService, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let svc = Arc::new(svc);
    let layer = Authorize::new(api.access.clone(), api.report.stats.clone());
    let mut servers = JoinSet::new();
    for l in api.listeners {
        let router = tonic::transport::Server::builder()
            .layer(layer.clone())
            .add_service(SensorsServer::from_arc(svc.clone()));
        let mut stop = shutdown.clone();
        let stop = async move {
            let _ = stop.changed().await;
        };
        match l {
            Prepared::Unix { path, mode, gid } => {
                let listener = bind_unix(&path, mode, gid)?;
                tracing::info!(address = %format!("unix://{}", path.display()), "serving the gRPC API");
                let incoming = UnixListenerStream::new(listener).map(|r| r.map(Conn::unix));
                servers.spawn(async move {
                    let r = router.serve_with_incoming_shutdown(incoming, stop).await;
                    let _ = fs::remove_file(&path);
                    r.with_context(|| format!("serving on unix://{}", path.display()))
                });
            }
            Prepared::Tls { addr, tls } => {
                let listener = bind_tcp(addr).await?;
                tracing::info!(address = %format!("tcp://{addr}"), "serving the gRPC API with mutual TLS");
                tokio::spawn(tls.clone().watch(tls::RELOAD_EVERY));
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(tls::accept(listener, tls, api.report.stats.clone(), tx));
                servers.spawn(async move {
                    let r = router.serve_with_incoming_shutdown(ReceiverStream::new(rx), stop).await;
                    r.with_context(|| format!("serving on tcp://{addr}"))
                });
            }
            Prepared::Insecure { addr } => {
                let listener = bind_tcp(addr).await?;
                tracing::warn!(address = %format!("tcp://{addr}"), "serving the gRPC API in plaintext");
                let incoming = TcpListenerStream::new(listener).map(|r| {
                    r.map(|tcp| {
                        let peer = tcp.peer_addr().map_or(Peer::Unknown, |addr| Peer::Tcp { addr });
                        Conn::new(tcp, peer)
                    })
                });
                servers.spawn(async move {
                    let r = router.serve_with_incoming_shutdown(incoming, stop).await;
                    r.with_context(|| format!("serving on tcp://{addr}"))
                });
            }
        }
    }
    while let Some(done) = servers.join_next().await {
        done.context("API listener task")??;
    }
    Ok(())
}

async fn bind_tcp(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding tcp://{addr}"))
}

/// Binds the socket with `mode` (0600 unless configured) and group `gid`. A stale socket is
/// replaced; a live one (another daemon answering on it) is an error rather than being stolen.
fn bind_unix(path: &Path, mode: u32, gid: Option<u32>) -> anyhow::Result<UnixListener> {
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
    // The group first, then the mode that lets it in.
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving unix://{} to group {gid}", path.display()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// A group name or number to its gid.
fn resolve_group(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).with_context(|| format!("grpc_socket_group {group:?}"))?;
    // SAFETY: libc::group is plain data; all zeroes is a valid (empty) value.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `grp` and `buf`, both valid for their sizes.
    let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        bail!("grpc_socket_group {group:?}: no such group");
    }
    Ok(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(resolve_group("0").expect("number"), 0);
        assert_eq!(resolve_group("root").expect("root exists"), 0);
        let e = resolve_group("no-such-group-here").unwrap_err().to_string();
        assert_eq!(e, "grpc_socket_group \"no-such-group-here\": no such group");
    }
}
