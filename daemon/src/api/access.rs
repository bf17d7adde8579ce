//! Authorization of every API call: the peer's role (`config::api::Access`) against the role
//! the method needs. A tower layer in front of the whole service, so that no method, present
//! or future, is served without a check: a method not listed below needs `admin`. A refused
//! call gets `PermissionDenied` naming the role it needs, and is counted.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
};

use sidewall_proto::v1::{self as pb, policy_actor::Actor};
use tonic::Status;
use tower::{Layer, Service};

use super::peer::Peer;
use crate::config::api::{Access, Role};

/// The gRPC service whose methods are listed here.
const SERVICE: &str = "/sidewall.v1.Sensors/";

/// Every method and the role it needs. Reading is read-only; changing policies is admin.
const METHODS: &[(&str, Role)] = &[
    ("GetEvents", Role::ReadOnly),
    ("GetStatus", Role::ReadOnly),
    ("GetVersion", Role::ReadOnly),
    ("GetFlows", Role::ReadOnly),
    ("ListPolicies", Role::ReadOnly),
    ("SuggestPolicy", Role::ReadOnly),
    ("AddPolicy", Role::Admin),
    ("DeletePolicy", Role::Admin),
    ("SetPolicyMode", Role::Admin),
];

/// The method of a request path and the role it needs; an unknown method is named "other"
/// (so that refusals are counted under a bounded set of names) and needs admin.
pub fn required_role(path: &str) -> (&'static str, Role) {
    let method = path.strip_prefix(SERVICE).unwrap_or_default();
    METHODS.iter().find(|(m, _)| *m == method).copied().unwrap_or(("other", Role::Admin))
}

/// The authorized caller of a request, for the handlers (the audit of policy changes).
#[derive(Clone, Debug)]
pub struct Caller {
    pub peer: Peer,
    pub role: Role,
    /// For a TLS peer: the certificate name that granted the role.
    pub name: String,
}

impl Caller {
    /// The caller as the actor of a policy change.
    pub fn actor(&self) -> pb::PolicyActor {
        let role = self.role.name().to_string();
        let actor = match &self.peer {
            Peer::Unix { uid, gid, pid, binary } => {
                Actor::Unix(pb::UnixPeer { uid: *uid, gid: *gid, pid: *pid, binary: binary.clone(), role })
            }
            Peer::Tls { addr, subject, .. } => Actor::Tls(pb::TlsPeer {
                subject: subject.clone(),
                name: self.name.clone(),
                address: addr.to_string(),
                role,
            }),
            Peer::Tcp { addr } => Actor::InsecureTcp(pb::TcpPeer { address: addr.to_string(), role }),
            Peer::Unknown => Actor::InsecureTcp(pb::TcpPeer { address: String::new(), role }),
        };
        pb::PolicyActor { actor: Some(actor) }
    }
}

/// The caller the layer authorized; a handler reached without one refuses.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Caller, Status> {
    req.extensions().get::<Caller>().ok_or_else(|| Status::permission_denied("caller not authorized"))
}

/// Refusals since start, for status and metrics.
#[derive(Default)]
pub struct AccessStats {
    denied: Mutex<BTreeMap<&'static str, u64>>,
    refused_handshakes: AtomicU64,
}

impl AccessStats {
    pub fn deny(&self, method: &'static str) {
        *self.denied.lock().unwrap_or_else(|e| e.into_inner()).entry(method).or_default() += 1;
    }

    pub fn denied(&self) -> BTreeMap<&'static str, u64> {
        self.denied.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn refuse_handshake(&self) {
        self.refused_handshakes.fetch_add(1, Relaxed);
    }

    pub fn refused_handshakes(&self) -> u64 {
        self.refused_handshakes.load(Relaxed)
    }
}

/// The role `access` grants `peer`, and the name that granted it.
pub fn role_of(access: &Access, peer: &Peer) -> Option<(Role, String)> {
    match peer {
        Peer::Unix { uid, gid, .. } => access.unix_role(*uid, *gid).map(|r| (r, String::new())),
        Peer::Tls { names, .. } => access.tls_role(names).map(|(r, n)| (r, n.to_string())),
        Peer::Tcp { .. } => access.insecure_tcp.map(|r| (r, String::new())),
        Peer::Unknown => None,
    }
}

/// The decision on one call: the caller, or the refusal.
pub fn authorize(access: &Access, peer: Peer, path: &str) -> Result<Caller, (&'static str, Status)> {
    let (method, needed) = required_role(path);
    match role_of(access, &peer) {
        Some((role, name)) if role >= needed => Ok(Caller { peer, role, name }),
        held => {
            let has =
                held.map_or_else(|| "no role".to_string(), |(r, _)| format!("only the {} role", r.name()));
            let message = format!("{method} needs the {} role; {peer} has {has}", needed.name());
            Err((method, Status::permission_denied(message)))
        }
    }
}

/// The layer in front of the service.
#[derive(Clone)]
pub struct Authorize {
    access: Arc<Access>,
    stats: Arc<AccessStats>,
}

impl Authorize {
    pub fn new(access: Arc<Access>, stats: Arc<AccessStats>) -> Self {
        Self { access, stats }
    }
}

impl<S> Layer<S> for Authorize {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized { inner, access: self.access.clone(), stats: self.stats.clone() }
    }
}

#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    access: Arc<Access>,
    stats: Arc<AccessStats>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let peer = req.extensions().get::<Peer>().cloned().unwrap_or(Peer::Unknown);
        match authorize(&self.access, peer, req.uri().path()) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                // The clone is ready only if polled; keep the one that was.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(req))
            }
            Err((method, status)) => {
                self.stats.deny(method);
                tracing::warn!(method, "API call refused: {}", status.message());
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access {
            admin_uids: vec![0],
            read_only_uids: vec![1000],
            admin_names: vec!["ops".into()],
            read_only_names: vec!["siem".into()],
            insecure_tcp: Some(Role::ReadOnly),
            ..Access::default()
        }
    }

    fn unix(uid: u32) -> Peer {
        Peer::Unix { uid, gid: uid, pid: 42, binary: "/usr/bin/sidewall".into() }
    }

    fn tls(name: &str) -> Peer {
        let addr = "10.0.0.1:5000".parse().expect("addr");
        Peer::Tls { addr, subject: format!("CN={name}"), names: vec![name.into()] }
    }

    const ADD: &str = "/sidewall.v1.Sensors/AddPolicy";
    const EVENTS: &str = "/sidewall.v1.Sensors/GetEvents";

    #[test]
    fn reading_is_read_only_changing_policies_is_admin() {
        let a = access();
        assert!(authorize(&a, unix(1000), EVENTS).is_ok());
        let (method, status) = authorize(&a, unix(1000), ADD).expect_err("refused");
        assert_eq!((method, status.code()), ("AddPolicy", tonic::Code::PermissionDenied));
        assert_eq!(
            status.message(),
            "AddPolicy needs the admin role; uid 1000 gid 1000 (pid 42, /usr/bin/sidewall) has only the read_only role"
        );
        assert_eq!(authorize(&a, unix(0), ADD).map(|c| c.role).ok(), Some(Role::Admin));
        let (_, status) = authorize(&a, unix(65534), EVENTS).expect_err("no role");
        assert!(status.message().ends_with("has no role"), "{}", status.message());
        let caller = authorize(&a, tls("ops"), ADD).expect("admin by certificate");
        assert_eq!(caller.name, "ops");
        assert!(authorize(&a, tls("siem"), ADD).is_err());
        assert!(authorize(&a, tls("siem"), EVENTS).is_ok());
        assert!(authorize(&a, Peer::Tcp { addr: "1.2.3.4:5".parse().expect("addr") }, ADD).is_err());
        assert!(authorize(&a, Peer::Unknown, EVENTS).is_err());
    }

    #[test]
    fn unknown_methods_need_admin_and_count_as_other() {
        assert_eq!(required_role("/sidewall.v1.Sensors/Brand/New"), ("other", Role::Admin));
        assert_eq!(required_role("/grpc.reflection.v1.ServerReflection/Info"), ("other", Role::Admin));
        assert_eq!(required_role("/sidewall.v1.Sensors/ListPolicies"), ("ListPolicies", Role::ReadOnly));
    }

    #[test]
    fn callers_become_actors() {
        let c = authorize(&access(), tls("ops"), ADD).expect("ok");
        let Some(Actor::Tls(t)) = c.actor().actor else { panic!("tls actor") };
        assert_eq!((t.subject.as_str(), t.name.as_str(), t.role.as_str()), ("CN=ops", "ops", "admin"));
        assert_eq!(t.address, "10.0.0.1:5000");
        let c = authorize(&access(), unix(0), ADD).expect("ok");
        let Some(Actor::Unix(u)) = c.actor().actor else { panic!("unix actor") };
        assert_eq!((u.uid, u.pid, u.binary.as_str()), (0, 42, "/usr/bin/sidewall"));
    }
}
