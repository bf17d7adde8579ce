//! Mutual TLS of the TCP listeners (rustls with ring): the server certificate and key, and
//! the CA whose certificates clients must present. The files are read again every few
//! seconds and the configuration is swapped when their content changed (cert-manager and
//! kubelet replace them atomically); a set that does not load (a half-written rotation, a key
//! that does not match) is reported and the previous one stays in use. Each handshake uses
//! the configuration current when it starts.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use sidewall_proto::Timestamp;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use x509_parser::{extensions::GeneralName, prelude::X509Certificate};

use super::{
    access::AccessStats,
    peer::{Conn, Peer, TlsConn},
};
use crate::config::api::TlsFiles;

/// How often the files are compared with those in use.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A peer that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field} {path}: cannot read: {source}")]
    Read { field: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{field} {path}: {reason}")]
    Pem { field: &'static str, path: PathBuf, reason: String },
    #[error("tls_cert {cert} and tls_key {key}: {reason}")]
    Pair { cert: PathBuf, key: PathBuf, reason: String },
    #[error("tls_client_ca {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// The files' content and the configuration made of it.
struct Loaded {
    content: [Vec<u8>; 3],
    config: Arc<ServerConfig>,
    subject: String,
    not_after: Option<Timestamp>,
}

/// A listener's TLS: what is in use, and why the last reload failed.
pub struct TlsState {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
    last_error: Mutex<Option<String>>,
}

impl TlsState {
    /// Loads the files; at start, a set that does not load is an error.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let loaded = load(&files, read_all(&files)?)?;
        Ok(Arc::new(Self { files, loaded: RwLock::new(Arc::new(loaded)), last_error: Mutex::new(None) }))
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().config.clone())
    }

    /// The server certificate's subject and files, for status.
    pub fn detail(&self) -> String {
        let f = &self.files;
        format!(
            "server certificate \"{}\" ({}), clients signed by {}",
            self.current().subject,
            f.cert.display(),
            f.client_ca.display()
        )
    }

    pub fn not_after(&self) -> Option<Timestamp> {
        self.current().not_after
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One comparison of the files with those in use; swaps when they changed and load.
    pub fn reload(&self) {
        let result = read_all(&self.files).and_then(|content| {
            if content == self.current().content {
                return Ok(None);
            }
            load(&self.files, content).map(Some)
        });
        let mut last_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(None) => {}
            Ok(Some(new)) => {
                tracing::info!(subject = %new.subject, "TLS certificate files reloaded");
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
                *last_error = None;
            }
            Err(e) => {
                if last_error.as_deref() != Some(&e.to_string()) {
                    tracing::error!("TLS files not reloaded, the previous ones stay in use: {e}");
                }
                *last_error = Some(e.to_string());
            }
        }
    }

    /// Reloads every `every`, forever.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reload();
        }
    }
}

fn read_all(f: &TlsFiles) -> Result<[Vec<u8>; 3], TlsError> {
    let read = |field, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read { field, path: path.into(), source })
    };
    Ok([read("tls_cert", &f.cert)?, read("tls_key", &f.key)?, read("tls_client_ca", &f.client_ca)?])
}

fn certificates(
    field: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem { field, path: path.into(), reason };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
    }
    Ok(certs)
}

fn load(files: &TlsFiles, content: [Vec<u8>; 3]) -> Result<Loaded, TlsError> {
    let chain = certificates("tls_cert", &files.cert, &content[0])?;
    let key = PrivateKeyDer::from_pem_slice(&content[1]).map_err(|e| TlsError::Pem {
        field: "tls_key",
        path: files.key.clone(),
        reason: format!("no PEM private key in it ({e})"),
    })?;
    let cas = certificates("tls_client_ca", &files.client_ca, &content[2])?;
    let ca_error = |reason: String| TlsError::ClientCa { path: files.client_ca.clone(), reason };
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ca_error(e.to_string()))?;
    let pair_error =
        |reason: String| TlsError::Pair { cert: files.cert.clone(), key: files.key.clone(), reason };
    let (subject, not_after) = describe(&chain[0]).map_err(&pair_error)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pair_error(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| pair_error(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded { content, config: Arc::new(config), subject, not_after })
}

/// The server certificate's subject and expiry.
fn describe(cert: &CertificateDer<'_>) -> Result<(String, Option<Timestamp>), String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).map_err(|e| format!("certificate: {e}"))?;
    let not_after = Timestamp { seconds: c.validity().not_after.timestamp(), nanos: 0 };
    Ok((c.subject().to_string(), Some(not_after)))
}

/// The subject and names of a verified client certificate: subject CNs, then DNS, URI and
/// email subject alternative names.
pub fn client_names(cert: &CertificateDer<'_>) -> (String, Vec<String>) {
    let Ok((_, c)) = x509_parser::parse_x509_certificate(cert) else {
        return (String::new(), Vec::new());
    };
    let mut names: Vec<String> =
        c.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_string).collect();
    names.extend(san_names(&c));
    (c.subject().to_string(), names)
}

fn san_names(c: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = c.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => Some(s.to_string()),
            _ => None,
        })
        .collect()
}

/// Accepts TCP connections and completes their handshakes concurrently; connections with a
/// verified client certificate go to `out`, the others are counted and dropped.
pub async fn accept(
    listener: TcpListener,
    tls: Arc<TlsState>,
    stats: Arc<AccessStats>,
    out: tokio::sync::mpsc::Sender<Result<TlsConn, std::io::Error>>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, stats, out) = (tls.acceptor(), stats.clone(), out.clone());
        tokio::spawn(async move {
            match handshake(acceptor, tcp, addr).await {
                Ok(conn) => {
                    let _ = out.send(Ok(conn)).await;
                }
                Err(reason) => {
                    stats.refuse_handshake();
                    tracing::info!(peer = %addr, "TLS connection refused: {reason}");
                }
            }
        });
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
) -> Result<TlsConn, String> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
    // The verifier demands a certificate; an empty chain cannot pass it.
    let leaf = certs.first().ok_or("no client certificate")?;
    let (subject, names) = client_names(leaf);
    Ok(Conn::new(stream, Peer::Tls { addr, subject, names }))
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

    use super::*;

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "test CA");
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
    }

    /// (certificate PEM, key PEM) with subject CN `cn` and `sans`.
    fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str, sans: Vec<SanType>) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        (params.signed_by(&key, ca).expect("signed").pem(), key.serialize_pem())
    }

    fn files(dir: &Path, ca: &str, (cert, key): &(String, String)) -> TlsFiles {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        TlsFiles { cert: write("tls.crt", cert), key: write("tls.key", key), client_ca: write("ca.crt", ca) }
    }

    #[test]
    fn loads_and_describes_the_server_certificate() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = ca();
        let state =
            TlsState::load(files(dir.path(), &ca.pem(), &leaf(&ca, "sidewalld", vec![]))).expect("loads");
        assert!(state.detail().starts_with("server certificate \"CN=sidewalld\""), "{}", state.detail());
        assert!(state.not_after().is_some_and(|t| t.seconds > 0));
        assert_eq!(state.last_error(), None);
    }

    #[test]
    fn bad_files_name_the_option_the_file_and_the_problem() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = ca();
        let (cert, _) = leaf(&ca, "sidewalld", vec![]);
        let (_, other_key) = leaf(&ca, "other", vec![]);
        let f = files(dir.path(), &ca.pem(), &(cert.clone(), other_key));
        let e = TlsState::load(f.clone()).err().expect("mismatch").to_string();
        assert!(
            e.starts_with(&format!("tls_cert {} and tls_key {}: ", f.cert.display(), f.key.display())),
            "{e}"
        );
        let f = files(dir.path(), "no PEM here", &(cert.clone(), leaf(&ca, "x", vec![]).1));
        let e = TlsState::load(f.clone()).err().expect("no CA").to_string();
        assert_eq!(
            e,
            format!(
                "tls_client_ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                f.client_ca.display()
            )
        );
        let missing = TlsFiles { cert: dir.path().join("nope.crt"), ..f };
        let e = TlsState::load(missing).err().expect("missing").to_string();
        assert!(e.starts_with("tls_cert ") && e.contains("nope.crt: cannot read: "), "{e}");
    }

    #[test]
    fn reloads_changed_files_and_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = ca();
        let f = files(dir.path(), &ca.pem(), &leaf(&ca, "first", vec![]));
        let state = TlsState::load(f.clone()).expect("loads");
        state.reload();
        assert!(state.detail().contains("CN=first"));
        // A half-done rotation: the new certificate with the old key.
        let (cert, key) = leaf(&ca, "second", vec![]);
        std::fs::write(&f.cert, &cert).expect("write");
        state.reload();
        assert!(state.detail().contains("CN=first"), "still the first: {}", state.detail());
        assert!(state.last_error().is_some_and(|e| e.starts_with("tls_cert ")), "{:?}", state.last_error());
        std::fs::write(&f.key, &key).expect("write");
        state.reload();
        assert!(state.detail().contains("CN=second"), "{}", state.detail());
        assert_eq!(state.last_error(), None);
    }

    #[test]
    fn client_names_are_the_cn_and_the_alternative_names() {
        let ca = ca();
        let sans = vec![
            SanType::DnsName("siem.example.com".try_into().expect("dns")),
            SanType::URI("spiffe://cluster.local/ns/siem/sa/reader".try_into().expect("uri")),
            SanType::IpAddress([10, 0, 0, 1].into()),
        ];
        let (cert, _) = leaf(&ca, "siem-reader", sans);
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("der");
        let (subject, names) = client_names(&der);
        assert_eq!(subject, "CN=siem-reader");
        assert_eq!(names, ["siem-reader", "siem.example.com", "spiffe://cluster.local/ns/siem/sa/reader"]);
    }
}
