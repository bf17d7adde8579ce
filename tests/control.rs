//! The control plane against a real daemon: who may reach the API and what they may do there
//! (mutual TLS with certificates made here, unix peers by their credentials), certificate
//! rotation without a restart, and the audit trail: every policy change, from the API, the
//! policy directory and SidecarPolicy objects (a scripted Kubernetes API answering with the
//! fixtures under fixtures/k8s/), is exactly one `policy_change` event naming who made it.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpListener as StdTcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use harness::{
    Daemon, EventStream, bin,
    tls::{self, Ca},
};
use sidewall_proto::{
    client::{self, Address, TlsOptions},
    v1::{
        AddPolicyRequest, DeletePolicyRequest, EventType, Filter, GetEventsRequest, GetEventsResponse,
        GetStatusRequest, GetVersionRequest, PolicyChange, SetPolicyModeRequest, get_events_response::Event,
        policy_actor::Actor, sensors_client::SensorsClient,
    },
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};
use tonic::{Code, transport::Channel};

const WAIT: Duration = Duration::from_secs(20);
/// How long after the expected events a duplicate would still be noticed.
const QUIET: Duration = Duration::from_secs(3);

fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn policy(name: &str, mode: &str) -> String {
    format!(
        "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: {name}\nspec:\n  mode: {mode}\n  containers:\n    - name: {name}-proxy\n      loopback:\n        bind: [15001]\n      action: block\n"
    )
}

fn changes_only() -> GetEventsRequest {
    GetEventsRequest {
        allow_list: vec![Filter { event_set: vec![EventType::PolicyChange as i32], ..Filter::default() }],
        deny_list: Vec::new(),
    }
}

/// The policy_change events of `policy`: waits for `want` of them, then `QUIET` longer for
/// any more.
async fn changes_of(events: &mut EventStream, policy: &str, want: usize) -> Vec<PolicyChange> {
    let mut found = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut quiet_until = None;
    loop {
        let until = quiet_until.unwrap_or(deadline);
        let left = until.saturating_duration_since(Instant::now());
        match events.next(left).await {
            Some(GetEventsResponse { event: Some(Event::PolicyChange(c)), .. }) if c.policy == policy => {
                found.push(c);
                if found.len() >= want && quiet_until.is_none() {
                    quiet_until = Some(Instant::now() + QUIET);
                }
            }
            Some(_) => {}
            None if quiet_until.is_some() => return found,
            None => panic!("{} of {want} policy_change events of {policy} in time: {found:#?}", found.len()),
        }
    }
}

fn kinds(changes: &[PolicyChange]) -> Vec<(&str, &str, &str)> {
    changes.iter().map(|c| (c.change.as_str(), mode(&c.before), mode(&c.after))).collect()
}

fn mode(v: &Option<sidewall_proto::v1::PolicyVersion>) -> &str {
    v.as_ref().map_or("none", |v| v.mode.as_str())
}

fn actor(c: &PolicyChange) -> Actor {
    c.actor.as_ref().and_then(|a| a.actor.clone()).unwrap_or_else(|| panic!("no actor: {c:?}"))
}

/// The policy_change lines of the export file, for `policy`.
fn exported_changes(d: &Daemon, policy: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(&d.export).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["policy_change"]["policy"] == policy)
        .collect()
}

async fn exported_until(d: &Daemon, policy: &str, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    while exported_changes(d, policy).len() < want {
        assert!(Instant::now() < deadline, "{want} changes of {policy} exported:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(QUIET).await;
    exported_changes(d, policy)
}

// ---------------------------------------------------------------------------------------
// Mutual TLS.

/// The certificates of the TLS test, as files.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    server: (PathBuf, PathBuf),
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("sidewall-pki-").tempdir().expect("tempdir");
        let ca = Ca::new("sidewall test CA");
        let ca_file = tls::write(dir.path(), "ca.crt", &ca.pem());
        let server = ca.server("sidewalld", &["127.0.0.1", "localhost"]).write(dir.path(), "server");
        Self { dir, ca, ca_file, server }
    }

    /// A client certificate of this CA with subject CN `cn`, as files.
    fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        self.ca.client(cn).write(self.dir.path(), cn)
    }
}

fn tls_options(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> TlsOptions {
    TlsOptions {
        ca: Some(ca.to_path_buf()),
        cert: client.map(|c| c.0.clone()),
        key: client.map(|c| c.1.clone()),
        server_name: None,
    }
}

async fn tls_client(addr: &Address, tls: &TlsOptions) -> Result<SensorsClient<Channel>, String> {
    client::connect_tls(addr, tls).await.map(SensorsClient::new).map_err(|e| e.to_string())
}

/// GetVersion over a fresh connection: the version, or why it failed.
async fn version(addr: &Address, tls: &TlsOptions) -> Result<String, (Option<Code>, String)> {
    let mut c = tls_client(addr, tls).await.map_err(|e| (None, e))?;
    let v =
        c.get_version(GetVersionRequest {}).await.map_err(|s| (Some(s.code()), s.message().to_string()))?;
    Ok(v.into_inner().version)
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_authenticates_authorizes_and_rotates() {
    let pki = Pki::new();
    let admin = pki.client("ops-admin");
    let reader = pki.client("siem-reader");
    let stranger = pki.client("stranger");
    let foreign = Ca::new("another CA").client("ops-admin").write(pki.dir.path(), "foreign");
    let tcp = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::with_listeners(
        &[format!("tcp://{tcp}")],
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\napi_admin_names = [\"ops-admin\"]\n\
             api_read_only_names = [\"siem-reader\"]\nmetrics_address = \"{metrics}\"\n",
            pki.server.0.display(),
            pki.server.1.display(),
            pki.ca_file.display()
        ),
    )
    .await;
    let addr = Address::Tcp(tcp.clone());

    // Refused at the handshake: plaintext, no client certificate, one from another CA.
    let plain = match client::connect(&addr).await {
        Ok(ch) => SensorsClient::new(ch)
            .get_version(GetVersionRequest {})
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(plain.is_err(), "plaintext answered: {plain:?}");
    let anonymous = version(&addr, &tls_options(&pki.ca_file, None)).await;
    assert!(anonymous.is_err(), "a client without a certificate answered: {anonymous:?}");
    let untrusted = version(&addr, &tls_options(&pki.ca_file, Some(&foreign))).await;
    assert!(untrusted.is_err(), "a certificate of another CA answered: {untrusted:?}");

    // A valid certificate whose name has no role: every call refused, naming the role.
    let (code, message) =
        version(&addr, &tls_options(&pki.ca_file, Some(&stranger))).await.expect_err("refused");
    assert_eq!(code, Some(Code::PermissionDenied), "{message}");
    assert!(message.contains("GetVersion needs the read_only role"), "{message}");
    assert!(message.contains("certificate \"CN=stranger\""), "{message}");

    // The reader streams events, and may not change policies.
    let mut reader_client =
        tls_client(&addr, &tls_options(&pki.ca_file, Some(&reader))).await.expect("reader");
    let stream = reader_client.get_events(changes_only()).await.expect("the reader streams events");
    let mut events = EventStream::new(stream.into_inner());
    let refused = reader_client
        .add_policy(AddPolicyRequest { document: policy("ctl-tls", "enforce") })
        .await
        .expect_err("the reader may not add policies");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().starts_with("AddPolicy needs the admin role; certificate \"CN=siem-reader\""),
        "{refused:?}"
    );
    assert!(refused.message().ends_with("has only the read_only role"), "{refused:?}");

    // The admin changes policies; each change reaches the reader's stream once, with the admin
    // as its actor.
    let mut admin_client = tls_client(&addr, &tls_options(&pki.ca_file, Some(&admin))).await.expect("admin");
    let added = admin_client.add_policy(AddPolicyRequest { document: policy("ctl-tls", "enforce") }).await;
    assert_eq!(added.expect("admin adds").into_inner().name, "default/ctl-tls");
    let mode = SetPolicyModeRequest { name: "ctl-tls".into(), mode: "monitor".into() };
    admin_client.set_policy_mode(mode).await.expect("admin switches");
    admin_client.delete_policy(DeletePolicyRequest { name: "ctl-tls".into() }).await.expect("admin deletes");
    let changes = changes_of(&mut events, "default/ctl-tls", 3).await;
    assert_eq!(
        kinds(&changes),
        [
            ("added", "none", "enforce"),
            ("mode_changed", "enforce", "monitor"),
            ("deleted", "monitor", "none")
        ]
    );
    for c in &changes {
        assert_eq!(c.source, "api");
        let Actor::Tls(t) = actor(c) else { panic!("a TLS actor: {c:?}") };
        assert_eq!(
            (t.subject.as_str(), t.name.as_str(), t.role.as_str()),
            ("CN=ops-admin", "ops-admin", "admin")
        );
        assert!(t.address.starts_with("127.0.0.1:"), "{t:?}");
    }

    // Refusals are counted, in status and in Prometheus.
    let status = d.status().await;
    let api = status.api.expect("api status");
    assert_eq!(api.denied_by_method.get("AddPolicy"), Some(&1), "{api:?}");
    assert_eq!(api.denied_by_method.get("GetVersion"), Some(&1), "{api:?}");
    assert!(api.refused_handshakes >= 2, "{api:?}");
    let tls_listener = api.listeners.iter().find(|l| l.security == "mtls").expect("the TLS listener");
    assert!(tls_listener.detail.contains("CN=sidewalld"), "{tls_listener:?}");
    assert!(tls_listener.certificate_not_after.is_some(), "{tls_listener:?}");
    let scraped = http_get(&metrics, "/metrics");
    assert!(scraped.contains("sidewall_api_denied_total{method=\"AddPolicy\"} 1"), "{scraped}");
    assert!(
        scraped.contains(
            "sidewall_policy_changes_total{source=\"api\",kind=\"mode_changed\",policy=\"default/ctl-tls\",\
             mode_before=\"enforce\",mode_after=\"monitor\"} 1"
        ),
        "{scraped}"
    );

    // Rotation: a server certificate of a new CA replaces the files; new connections get it
    // without a restart.
    let rotated_ca = Ca::new("rotated CA");
    let rotated_ca_file = tls::write(pki.dir.path(), "rotated-ca.crt", &rotated_ca.pem());
    let trusts_rotated = tls_options(&rotated_ca_file, Some(&admin));
    assert!(version(&addr, &trusts_rotated).await.is_err(), "the new CA is not in use yet");
    let rotated = rotated_ca.server("sidewalld-rotated", &["127.0.0.1"]);
    std::fs::write(&pki.server.1, &rotated.key).expect("write key");
    std::fs::write(&pki.server.0, &rotated.cert).expect("write certificate");
    let start = Instant::now();
    while version(&addr, &trusts_rotated).await.is_err() {
        assert!(start.elapsed() < WAIT, "the rotated certificate never served:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = version(&addr, &tls_options(&pki.ca_file, Some(&admin))).await;
    assert!(old.is_err(), "the old certificate still serves: {old:?}");
    let status = d.status().await.api.expect("api status");
    assert!(status.listeners.iter().any(|l| l.detail.contains("CN=sidewalld-rotated")), "{status:?}");

    // A broken rotation is reported, and the certificate in use stays.
    std::fs::write(&pki.server.0, "not a certificate\n").expect("write garbage");
    let start = Instant::now();
    loop {
        let api = d.status().await.api.expect("api status");
        let l = api.listeners.iter().find(|l| l.security == "mtls").expect("the TLS listener");
        if l.last_error.contains("tls_cert") {
            assert!(l.last_error.contains("no PEM certificate"), "{l:?}");
            break;
        }
        assert!(start.elapsed() < WAIT, "the broken certificate file was not reported: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(version(&addr, &trusts_rotated).await.is_ok(), "the last good certificate serves");
}

// ---------------------------------------------------------------------------------------
// Unix socket peers, the API and the policy directory as sources.

/// The `sidewall` CLI as uid 65534 with primary group `gid` and no other groups.
fn cli_as_nobody(gid: u32, d: &Daemon, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
        .arg(bin("sidewall"))
        .args(["--server", &d.server_arg()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("wait")
}

const READ_ONLY_GID: u32 = 4242;

#[tokio::test(flavor = "multi_thread")]
async fn unix_peers_by_credentials_and_every_local_change_audited() {
    let policies = tempfile::Builder::new().prefix("sidewall-ctl-policies-").tempdir().expect("tempdir");
    // The socket is reachable by anyone (mode 0666); the roles decide.
    let d = Daemon::with_config(&format!(
        "policy_dir = \"{}\"\ngrpc_socket_mode = 0o666\napi_read_only_gids = [{READ_ONLY_GID}]\n",
        policies.path().display()
    ))
    .await;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");

    // Connected, but no role: refused with the role it needs.
    let out = cli_as_nobody(65534, &d, &["status"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "sidewall: permission denied: GetStatus needs the read_only role; uid 65534 gid 65534"
        ),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("has no role"), "{stderr}");
    // The read-only group reads, and may not change policies.
    let out = cli_as_nobody(READ_ONLY_GID, &d, &["status"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli_as_nobody(READ_ONLY_GID, &d, &["policy", "add", "-"], &policy("ctl-nobody", "monitor"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("AddPolicy needs the admin role; uid 65534 gid 4242"), "{stderr}");
    assert!(stderr.trim_end().ends_with("has only the read_only role"), "{stderr}");
    let api = d.status().await.api.expect("api status");
    assert_eq!(api.denied_by_method.get("GetStatus"), Some(&1), "{api:?}");
    assert_eq!(api.denied_by_method.get("AddPolicy"), Some(&1), "{api:?}");

    let mut events = d.events(changes_only()).await;

    // The API: root's CLI adds a policy and switches it.
    let file = d.dir.path().join("ctl-api.yaml");
    std::fs::write(&file, policy("ctl-api", "monitor")).expect("write policy");
    let cli = Command::new(bin("sidewall"))
        .args(["--server", &d.server_arg(), "policy", "add"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cli");
    let cli_pid = cli.id();
    let out = cli.wait_with_output().expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(bin("sidewall"))
        .args(["--server", &d.server_arg(), "policy", "mode", "ctl-api", "enforce"])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let changes = changes_of(&mut events, "default/ctl-api", 2).await;
    assert_eq!(kinds(&changes), [("added", "none", "monitor"), ("mode_changed", "monitor", "enforce")]);
    let Actor::Unix(u) = actor(&changes[0]) else { panic!("a unix actor: {changes:?}") };
    assert_eq!((u.uid, u.gid, u.pid, u.role.as_str()), (0, 0, cli_pid, "admin"));
    assert_eq!(Path::new(&u.binary), bin("sidewall").canonicalize().expect("cli path"));
    assert_eq!(changes[0].after.as_ref().map(|v| v.hash.len()), Some(7 + 64));
    assert_ne!(changes[1].before.as_ref().map(|v| &v.hash), changes[1].after.as_ref().map(|v| &v.hash));

    // The policy directory: added, switched by editing the file, rewritten unchanged (no
    // event), removed.
    let file = policies.path().join("ctl-dir.yaml");
    std::fs::write(&file, policy("ctl-dir", "monitor")).expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&file, format!("# switched\n{}", policy("ctl-dir", "enforce"))).expect("rewrite");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&file, format!("# switched, same policy\n{}", policy("ctl-dir", "enforce")))
        .expect("rewrite");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::remove_file(&file).expect("remove");
    let changes = changes_of(&mut events, "default/ctl-dir", 3).await;
    assert_eq!(
        kinds(&changes),
        [
            ("added", "none", "monitor"),
            ("mode_changed", "monitor", "enforce"),
            ("deleted", "enforce", "none")
        ]
    );
    for c in &changes {
        assert_eq!((c.source.as_str(), actor(c)), ("file", Actor::File(file.display().to_string())));
    }

    // The same events in the export file, as canonical JSON with the kind as the top-level key.
    let exported = exported_until(&d, "default/ctl-dir", 3).await;
    assert_eq!(exported.len(), 3, "{exported:#?}");
    assert_eq!(exported[1]["policy_change"]["change"], "mode_changed");
    assert_eq!(exported[1]["policy_change"]["actor"]["file"], file.display().to_string());
    assert!(exported[1]["time"].is_string() && exported[1]["node_name"] == "test-node", "{}", exported[1]);
}

// ---------------------------------------------------------------------------------------
// SidecarPolicy objects, from a scripted Kubernetes API.

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/k8s").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Answers the daemon's lists and watches: no pods on the node; one SidecarPolicy, switched
/// to monitor and then deleted on the first watch. Watches are held open afterwards.
struct KubeApi {
    port: u16,
    /// Request lines, for failure messages.
    seen: Arc<Mutex<Vec<String>>>,
}

impl KubeApi {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, watched) = (seen.clone(), Arc::new(Mutex::new(false)));
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (log, watched) = (log.clone(), watched.clone());
                tokio::spawn(async move { answer(conn, log, watched).await });
            }
        });
        Self { port, seen }
    }

    fn kubeconfig(&self) -> String {
        harness::kubeconfig(self.port)
    }
}

async fn answer(mut conn: TcpStream, log: Arc<Mutex<Vec<String>>>, watched: Arc<Mutex<bool>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split(' ').nth(1).unwrap_or_default().to_string();
    log.lock().await.push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query: HashMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
    let watch = query.get("watch") == Some(&"true");
    match (path, watch) {
        ("/api/v1/pods", false) => respond(&mut conn, &fixture("pods-list-empty.json")).await,
        ("/apis/sidewall.io/v1alpha1/sidecarpolicies", false) => {
            respond(&mut conn, &fixture("sidecarpolicies-list.json")).await
        }
        ("/apis/sidewall.io/v1alpha1/sidecarpolicies", true) => {
            let first = !std::mem::replace(&mut *watched.lock().await, true);
            let events: &[&str] = if first {
                &["sidecarpolicies-watch-monitor.json", "sidecarpolicies-watch-deleted.json"]
            } else {
                &[]
            };
            hold_watch(&mut conn, events).await
        }
        (_, true) => hold_watch(&mut conn, &[]).await,
        _ => {
            let body =
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
            let head = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
        }
    }
}

async fn respond(conn: &mut TcpStream, body: &str) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let _ = conn.write_all(body.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// A watch response with `events`, then held open (the apiserver's would end after its
/// timeoutSeconds).
async fn hold_watch(conn: &mut TcpStream, events: &[&str]) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if conn.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for name in events {
        let event: serde_json::Value = serde_json::from_str(&fixture(name)).expect("fixture JSON");
        let line = format!("{event}\n");
        if conn.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).await.is_err() {
            return;
        }
        // One event at a time, as the apiserver sends them.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = conn.read(&mut [0u8; 1]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecarpolicy_objects_are_audited_by_object_and_resource_version() {
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("write kubeconfig");
    let d = Daemon::with_config(&format!("kubernetes = \"on\"\nkubeconfig = \"{}\"\n", kubeconfig.display()))
        .await;

    let exported = exported_until(&d, "shop/ctl-guard", 3).await;
    let seen = api.seen.lock().await.clone();
    assert_eq!(exported.len(), 3, "{exported:#?}\nrequests: {seen:#?}\n{}", d.log());
    let field = |i: usize, path: &[&str]| {
        let mut v = &exported[i]["policy_change"];
        for p in path {
            v = &v[*p];
        }
        v.as_str().unwrap_or_default().to_string()
    };
    let got: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            (
                field(i, &["change"]),
                field(i, &["source"]),
                field(i, &["actor", "kubernetes", "resource_version"]),
            )
        })
        .collect();
    let want = [("added", "crd", "1990"), ("mode_changed", "crd", "2001"), ("deleted", "crd", "2002")];
    assert_eq!(got, want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())));
    for i in 0..3 {
        assert_eq!(field(i, &["actor", "kubernetes", "namespace"]), "shop");
        assert_eq!(field(i, &["actor", "kubernetes", "name"]), "ctl-guard");
        assert_eq!(field(i, &["actor", "kubernetes", "uid"]), "0b6e3c1a-7f2d-4e58-9c41-5d2a8b7e6f30");
    }
    assert_eq!(field(1, &["before", "mode"]), "enforce");
    assert_eq!(field(1, &["after", "mode"]), "monitor");
    let status = d.client().await.get_status(GetStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.lost_by_stage.get("policy_audit"), Some(&0));
}
