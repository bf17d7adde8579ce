//! The API's listeners and who may do what on them: read and checked here, enforced by `api`.

use std::{fmt, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Deserializer, de};

use super::{Address, Config, parse_address, tcp_listen_addr};

/// What a caller may do. `Admin` may do everything `ReadOnly` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Stream events, read flows, status, version and the policies.
    ReadOnly,
    /// Also add, delete and switch policies.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read_only",
            Role::Admin => "admin",
        }
    }
}

/// The role of every peer of a plaintext TCP listener, which cannot tell peers apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsecureRole {
    None,
    ReadOnly,
    Admin,
}

impl InsecureRole {
    pub fn role(self) -> Option<Role> {
        match self {
            InsecureRole::None => None,
            InsecureRole::ReadOnly => Some(Role::ReadOnly),
            InsecureRole::Admin => Some(Role::Admin),
        }
    }
}

/// The PEM files of a mutual-TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// One place the API listens, and how it tells its peers apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// Peers by their credentials (SO_PEERCRED).
    Unix { path: PathBuf, mode: u32, group: Option<String> },
    /// Peers by their client certificate.
    Tls { addr: SocketAddr, files: TlsFiles },
    /// Peers cannot be told apart: all get `api_insecure_tcp_role`.
    InsecureTcp { addr: SocketAddr },
}

impl Listener {
    pub fn address(&self) -> String {
        match self {
            Listener::Unix { path, .. } => format!("unix://{}", path.display()),
            Listener::Tls { addr, .. } | Listener::InsecureTcp { addr } => format!("tcp://{addr}"),
        }
    }
}

/// Who holds which role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub admin_uids: Vec<u32>,
    pub admin_gids: Vec<u32>,
    pub read_only_uids: Vec<u32>,
    pub read_only_gids: Vec<u32>,
    pub admin_names: Vec<String>,
    pub read_only_names: Vec<String>,
    pub insecure_tcp: Option<Role>,
}

impl Access {
    /// The role of a unix peer, by its uid or its (primary) gid.
    pub fn unix_role(&self, uid: u32, gid: u32) -> Option<Role> {
        if self.admin_uids.contains(&uid) || self.admin_gids.contains(&gid) {
            Some(Role::Admin)
        } else if self.read_only_uids.contains(&uid) || self.read_only_gids.contains(&gid) {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }

    /// The role of a TLS peer whose certificate carries `names` (subject CN and SANs), with
    /// the name that granted it.
    pub fn tls_role<'a>(&self, names: &'a [String]) -> Option<(Role, &'a str)> {
        let find = |allowed: &[String]| names.iter().find(|n| allowed.contains(n)).map(String::as_str);
        find(&self.admin_names)
            .map(|n| (Role::Admin, n))
            .or_else(|| find(&self.read_only_names).map(|n| (Role::ReadOnly, n)))
    }
}

impl Config {
    /// The listeners of the validated configuration.
    pub fn listeners(&self) -> Vec<Listener> {
        let group = (!self.grpc_socket_group.is_empty()).then(|| self.grpc_socket_group.clone());
        self.addresses()
            .into_iter()
            .filter_map(|a| match a {
                Address::Unix(path) => {
                    Some(Listener::Unix { path, mode: self.grpc_socket_mode, group: group.clone() })
                }
                Address::Tcp(authority) => {
                    let addr = tcp_listen_addr(&authority).ok()?;
                    Some(match self.tls_files() {
                        Some(files) => Listener::Tls { addr, files },
                        None => Listener::InsecureTcp { addr },
                    })
                }
            })
            .collect()
    }

    pub fn access(&self) -> Access {
        Access {
            admin_uids: self.api_admin_uids.clone(),
            admin_gids: self.api_admin_gids.clone(),
            read_only_uids: self.api_read_only_uids.clone(),
            read_only_gids: self.api_read_only_gids.clone(),
            admin_names: self.api_admin_names.clone(),
            read_only_names: self.api_read_only_names.clone(),
            insecure_tcp: self.api_insecure_tcp_role.role(),
        }
    }

    fn tls_files(&self) -> Option<TlsFiles> {
        let all = [&self.tls_cert, &self.tls_key, &self.tls_client_ca];
        all.iter().all(|f| !f.is_empty()).then(|| TlsFiles {
            cert: self.tls_cert.clone().into(),
            key: self.tls_key.clone().into(),
            client_ca: self.tls_client_ca.clone().into(),
        })
    }
}

/// The API's part of `Config::validate`: the field at fault and why.
pub(super) fn validate(cfg: &Config) -> Result<(), (&'static str, String)> {
    if cfg.grpc_address.is_empty() {
        return Err(("grpc_address", "at least one address is needed".into()));
    }
    let mut tcp = None;
    for a in &cfg.grpc_address {
        match parse_address(a).map_err(|e| ("grpc_address", format!("{a:?}: {e}")))? {
            Address::Tcp(authority) => {
                tcp_listen_addr(&authority).map_err(|e| ("grpc_address", e))?;
                tcp = Some(authority);
            }
            Address::Unix(_) => {}
        }
    }
    validate_tls(cfg, tcp.as_deref())?;
    if cfg.grpc_socket_mode > 0o777 || cfg.grpc_socket_mode & 0o600 != 0o600 {
        return Err((
            "grpc_socket_mode",
            format!(
                "{:#o}: a permission mode (at most 0o777) that lets the owner read and write",
                cfg.grpc_socket_mode
            ),
        ));
    }
    for (field, names) in
        [("api_admin_names", &cfg.api_admin_names), ("api_read_only_names", &cfg.api_read_only_names)]
    {
        if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
            return Err((field, format!("entry {i} is empty")));
        }
    }
    Ok(())
}

/// TCP needs mutual TLS (all three files) unless plaintext is asked for, and only then.
fn validate_tls(cfg: &Config, tcp: Option<&str>) -> Result<(), (&'static str, String)> {
    let files =
        [("tls_cert", &cfg.tls_cert), ("tls_key", &cfg.tls_key), ("tls_client_ca", &cfg.tls_client_ca)];
    let given: Vec<&str> = files.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| *k).collect();
    if let Some((missing, _)) = files.iter().find(|(_, v)| v.is_empty())
        && let Some(first) = given.first()
    {
        return Err((
            missing,
            format!("{first} is set: mutual TLS needs tls_cert, tls_key and tls_client_ca"),
        ));
    }
    match (tcp, given.is_empty(), cfg.insecure_tcp) {
        (None, false, _) => Err((
            "tls_cert",
            "no tcp://ip:port in grpc_address to serve TLS on (the unix socket needs none)".into(),
        )),
        (Some(a), true, false) => Err((
            "grpc_address",
            format!(
                "tcp://{a}: TCP needs mutual TLS (tls_cert, tls_key and tls_client_ca), or \
                 insecure_tcp = true (--insecure-tcp) for plaintext"
            ),
        )),
        (Some(_), false, true) => {
            Err(("insecure_tcp", "TLS files are set, so TCP listeners use TLS: drop insecure_tcp".into()))
        }
        _ => Ok(()),
    }
}

/// `grpc_address = "unix:///x"` or `grpc_address = ["unix:///x", "tcp://0.0.0.0:50051"]`.
pub(super) fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an address string or a list of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use std::io::Write as _;
    use std::path::Path;

    fn load(text: &str) -> Result<Config, String> {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(text.as_bytes()).expect("write");
        Config::load(Some(f.path()), &Overrides::default()).map_err(|e| e.to_string())
    }

    const TLS: &str = "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\ntls_client_ca = \"/ca.pem\"\n";

    #[test]
    fn defaults_are_one_private_socket_where_root_is_admin() {
        let c = Config::load(None, &Overrides::default()).expect("defaults");
        assert_eq!(
            c.listeners(),
            [Listener::Unix { path: "/run/sidewall/sidewall.sock".into(), mode: 0o600, group: None }]
        );
        let a = c.access();
        assert_eq!(a.unix_role(0, 0), Some(Role::Admin));
        assert_eq!(a.unix_role(1000, 1000), None);
        assert_eq!(a.insecure_tcp, Some(Role::ReadOnly));
        assert_eq!(a.tls_role(&["anyone".into()]), None);
    }

    #[test]
    fn tcp_needs_mutual_tls_or_the_insecure_flag() {
        let e = load("grpc_address = \"tcp://0.0.0.0:50051\"\n").unwrap_err();
        assert!(e.contains("grpc_address: tcp://0.0.0.0:50051: TCP needs mutual TLS"), "{e}");
        let c = load(&format!("grpc_address = [\"unix:///s\", \"tcp://127.0.0.1:1\"]\n{TLS}")).expect("tls");
        assert!(
            matches!(&c.listeners()[1], Listener::Tls { files, .. } if files.client_ca == Path::new("/ca.pem"))
        );
        let c = load("grpc_address = \"tcp://127.0.0.1:1\"\ninsecure_tcp = true\n").expect("insecure");
        assert!(matches!(c.listeners()[0], Listener::InsecureTcp { .. }));
        let e =
            load("grpc_address = \"tcp://127.0.0.1:1\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\n").unwrap_err();
        assert!(e.contains("tls_client_ca: tls_cert is set: mutual TLS needs"), "{e}");
        let e = load(TLS).unwrap_err();
        assert!(e.contains("tls_cert: no tcp://ip:port in grpc_address"), "{e}");
        let e =
            load(&format!("grpc_address = \"tcp://127.0.0.1:1\"\ninsecure_tcp = true\n{TLS}")).unwrap_err();
        assert!(e.contains("insecure_tcp: TLS files are set"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = load("grpc_address = []\n").unwrap_err();
        assert!(e.contains("grpc_address: at least one address"), "{e}");
        let e = load("grpc_address = [\"unix://rel\"]\n").unwrap_err();
        assert!(e.contains("grpc_address: \"unix://rel\": unix socket path must be absolute"), "{e}");
        let e = load("grpc_address = 5\n").unwrap_err();
        assert!(e.contains("an address string or a list of them"), "{e}");
        let e = load("grpc_socket_mode = 0o066\n").unwrap_err();
        assert!(e.contains("grpc_socket_mode: 0o66: a permission mode"), "{e}");
        let e = load("api_admin_names = [\"ok\", \" \"]\n").unwrap_err();
        assert!(e.contains("api_admin_names: entry 1 is empty"), "{e}");
        let e = load("api_insecure_tcp_role = \"root\"\n").unwrap_err();
        assert!(e.contains("unknown variant `root`"), "{e}");
    }

    #[test]
    fn roles_by_credentials_and_by_certificate_name() {
        let a = Access {
            admin_uids: vec![0],
            admin_gids: vec![10],
            read_only_uids: vec![1000],
            read_only_gids: vec![20],
            admin_names: vec!["ops".into()],
            read_only_names: vec!["spiffe://c/ns/siem/sa/reader".into()],
            insecure_tcp: None,
        };
        assert_eq!(a.unix_role(5, 10), Some(Role::Admin));
        assert_eq!(a.unix_role(1000, 1), Some(Role::ReadOnly));
        assert_eq!(a.unix_role(5, 20), Some(Role::ReadOnly));
        assert_eq!(a.unix_role(5, 5), None);
        let names = vec!["reader.example".to_string(), "spiffe://c/ns/siem/sa/reader".to_string()];
        assert_eq!(a.tls_role(&names), Some((Role::ReadOnly, "spiffe://c/ns/siem/sa/reader")));
        let names = vec!["spiffe://c/ns/siem/sa/reader".to_string(), "ops".to_string()];
        assert_eq!(a.tls_role(&names), Some((Role::Admin, "ops")), "the highest role wins");
        assert!(Role::Admin > Role::ReadOnly);
    }
}
