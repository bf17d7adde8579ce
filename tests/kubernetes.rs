//! The Kubernetes pod watch (`sidewalld::identity::kubernetes`) against a scripted API server.
//!
//! The real kube client (built by `kubernetes::client` from a kubeconfig pointing at
//! http://127.0.0.1:<port>, no auth) talks HTTP/1.1 to a small server in this file, which hands
//! each request to the test; the test checks its query and answers it: a list, a chunked watch
//! stream, a dropped connection, a 410 Expired watch event, a 500. Needs no root.
//!
//! The fixtures under fixtures/k8s/ follow the real kube-apiserver's JSON (field names, shapes,
//! list items without kind/apiVersion, watch events as `{"type","object"}`, bookmark and Status
//! objects as the apiserver writes them). They were written by hand, not captured from a live
//! cluster, since none runs here.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use sidewalld::identity::kubernetes::{self, KubeIndex};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{Instant, sleep, timeout},
};

const NODE: &str = "worker-1";
const WEB_UID: &str = "6f1c2b1e-0d3b-4f6a-9a53-3b1f0c2e7d41";
const REPORT_UID: &str = "b7d1e2f3-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
const CURL_UID: &str = "d4c3b2a1-1f2e-4d3c-8b9a-7f6e5d4c3b2a";
const API_UID: &str = "3a9f8e7d-6c5b-4a39-8877-665544332211";

const WEB_ISTIO_INIT: &str = "67692ce3cc74103d75aa2456b353caa801ca61d663c07d637710c7e1067a2831";
const WEB_ISTIO_PROXY: &str = "1e51f49ecac53a5d78e226128492034f7f901671c94be2ebb6dad42efc4e959d";
const WEB_WEB: &str = "7140beb53b37117f9fbfde864812e8a3f55de94caa098f7261b8dea0e78c6b68";
const REPORT_REPORT: &str = "89ce2c16d73fdbd74d888a62ef25ee358565e992b7d004ff53d540bde61799a2";
const CURL_CURL: &str = "ae792465b4e8ff0342b48c6ad7c45d66eaf58f43e07c21cacc0c32c1152cbe2c";
const API_LINKERD_INIT: &str = "8c5efd352ff31d5d4a3572bf40643fd2af3e6f3cb62786826e0f67cf0c2448c0";
const API_LINKERD_PROXY: &str = "3cb65beff47c0480785ca0b772a1e205ef959761e3f6f3e95e3d0f0b75e240b1";
const API_API: &str = "708704b8536ce3481f5e6fc17893bbab07ace6f15fb58346c1f99dd6a766ed42";
const API_LOG_TAILER: &str = "a13861d76b8e28d215675eef1002529333c5a69a0cbed116c8dfb1312bc3eed0";
const API_API_RESTARTED: &str = "c65308849d8006ca070dc648ae0a7e44178d17c890a57216de2ead3f43442e04";

/// Long enough for the watcher's backoff after errors (0.8-1.6 s, then 1.6-3.2 s).
const STEP: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_list_watch_errors_and_relist() {
    timeout(Duration::from_secs(25), scenario()).await.expect("scenario finished in time");
}

async fn scenario() {
    let mut server = ApiServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).expect("write kubeconfig");
    let client = kubernetes::client(Some(&kubeconfig)).await.expect("kube client");
    let index = Arc::new(KubeIndex::new());
    let watch = tokio::spawn(kubernetes::watch(client, NODE.into(), index.clone()));
    let monitor = Monitor::start(index.clone());

    // Initial list: only this node's pods, from the apiserver's watch cache, unpaged.
    let req = server.next().await;
    req.expect_list();
    req.respond(200, "OK", &fixture("list-initial.json")).await;
    wait_for(&index, "initial list", |i| i.pod_count() == 3).await;
    monitor.require(&[WEB_UID, REPORT_UID, CURL_UID]);
    assert_container(&index, WEB_ISTIO_INIT, "web-6d4cf56db6-x7k2p", "istio-init", "init");
    assert_container(&index, WEB_ISTIO_PROXY, "web-6d4cf56db6-x7k2p", "istio-proxy", "sidecar");
    assert_container(&index, WEB_WEB, "web-6d4cf56db6-x7k2p", "web", "app");
    assert_container(&index, REPORT_REPORT, "report-29403600-q8z4m", "report", "app");
    let (pod, web) = index.container_by_id(WEB_WEB).expect("web container");
    assert_eq!((pod.namespace.as_str(), pod.uid.as_str()), ("shop", WEB_UID));
    assert_eq!(pod.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(pod.annotations.get("istio.io/rev").map(String::as_str), Some("default"));
    assert_eq!(web.image, "registry.example.com/shop/web:2.3.1");
    assert_eq!((web.runtime.as_str(), web.qos_class.as_str()), ("containerd", "burstable"));

    // Watch from the list's resourceVersion: a pod is scheduled, then its containers start.
    let req = server.next().await;
    req.expect_watch("1000");
    let mut stream = req.start_watch().await;
    stream.send("watch-api-added.json").await;
    wait_for(&index, "api pod added", |i| i.pod_by_uid(API_UID).is_some()).await;
    monitor.require(&[API_UID]);
    assert!(index.container_by_id(API_LINKERD_INIT).is_none(), "no container has started yet");
    stream.send("watch-api-initializing.json").await;
    wait_for(&index, "init container id", |i| i.container_by_id(API_LINKERD_INIT).is_some()).await;
    assert_container(&index, API_LINKERD_INIT, "api-7b9c8d5f4-2mnpl", "linkerd-init", "init");
    stream.send("watch-api-running.json").await;
    wait_for(&index, "app container ids", |i| i.container_by_id(API_API).is_some()).await;
    assert_container(&index, API_LINKERD_PROXY, "api-7b9c8d5f4-2mnpl", "linkerd-proxy", "sidecar");
    assert_container(&index, API_API, "api-7b9c8d5f4-2mnpl", "api", "app");
    assert_container(&index, API_LOG_TAILER, "api-7b9c8d5f4-2mnpl", "log-tailer", "sidecar");
    assert_container(&index, API_LINKERD_INIT, "api-7b9c8d5f4-2mnpl", "linkerd-init", "init");
    stream.send("watch-bookmark.json").await;

    // The connection drops mid-stream: the client watches again from the bookmark.
    drop(stream);
    let req = server.next().await;
    req.expect_watch("1004");
    let mut stream = req.start_watch().await;
    monitor.release(CURL_UID);
    stream.send("watch-curl-deleted.json").await;
    wait_for(&index, "curl pod deleted", |i| i.pod_by_uid(CURL_UID).is_none()).await;
    assert!(index.container_by_id(CURL_CURL).is_none());

    // The apiserver's watch window moved on (410 Expired): relist, which fails once with a 500.
    stream.send("watch-expired.json").await;
    let req = server.next().await;
    req.expect_list();
    drop(stream);
    req.respond(500, "Internal Server Error", &fixture("status-500.json")).await;

    // The retried list is held back: what the index knew stays, although the report pod is
    // gone on the API side by now.
    let req = server.next().await;
    req.expect_list();
    let generation = index.generation();
    sleep(Duration::from_millis(200)).await;
    assert_eq!(index.pod_count(), 3, "pods kept while the relist is pending");
    assert_eq!(index.generation(), generation);
    assert_container(&index, REPORT_REPORT, "report-29403600-q8z4m", "report", "app");

    // The list completes: the report pod (deleted while we were not watching) goes, the api
    // pod's restarted container is picked up, the previous instance still resolves.
    monitor.release(REPORT_UID);
    req.respond(200, "OK", &fixture("list-relist.json")).await;
    wait_for(&index, "relist", |i| i.pod_by_uid(REPORT_UID).is_none()).await;
    assert_eq!(index.pod_count(), 2);
    assert!(index.container_by_id(REPORT_REPORT).is_none());
    assert_container(&index, API_API_RESTARTED, "api-7b9c8d5f4-2mnpl", "api", "app");
    assert_container(&index, API_API, "api-7b9c8d5f4-2mnpl", "api", "app");

    // Watching resumes from the new list; later changes still arrive.
    let req = server.next().await;
    req.expect_watch("1010");
    let mut stream = req.start_watch().await;
    stream.send("watch-web-labelled.json").await;
    wait_for(&index, "web pod relabelled", |i| {
        i.pod_by_uid(WEB_UID).is_some_and(|p| p.labels.contains_key("quarantine.example.com/state"))
    })
    .await;

    monitor.finish();
    watch.abort();
    let seen = server.seen.lock().expect("requests").clone();
    assert_eq!(seen.len(), 6, "requests: {seen:#?}");
}

fn assert_container(index: &KubeIndex, id: &str, pod: &str, name: &str, role: &str) {
    let (p, c) = index.container_by_id(id).unwrap_or_else(|| panic!("container {name} ({id}) known"));
    assert_eq!((p.name.as_str(), c.name.as_str(), c.role.as_str()), (pod, name, role));
    assert_eq!(c.id, id);
}

async fn wait_for(index: &KubeIndex, what: &str, done: impl Fn(&KubeIndex) -> bool) {
    let deadline = Instant::now() + STEP;
    while !done(index) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/k8s").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Watches the index from its own thread, so a pod that vanishes even briefly is caught.
struct Monitor {
    required: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<String>>,
}

impl Monitor {
    fn start(index: Arc<KubeIndex>) -> Self {
        let required = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (required.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut missing = Vec::new();
            while !s.load(Ordering::Relaxed) {
                for uid in r.lock().expect("required").iter() {
                    if index.pod_by_uid(uid).is_none() {
                        missing.push(uid.clone());
                    }
                }
                thread::sleep(Duration::from_micros(200));
            }
            missing
        });
        Self { required, stop, thread }
    }

    /// From now on these pods must always be in the index.
    fn require(&self, uids: &[&str]) {
        let mut r = self.required.lock().expect("required");
        r.extend(uids.iter().map(|u| u.to_string()));
    }

    /// This pod may go now. Called before the event that removes it.
    fn release(&self, uid: &str) {
        self.required.lock().expect("required").retain(|u| u != uid);
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let missing = self.thread.join().expect("monitor thread");
        assert!(missing.is_empty(), "known pods vanished from the index: {missing:?}");
    }
}

/// A scripted kube-apiserver: every request goes to the test, which answers it.
struct ApiServer {
    port: u16,
    requests: mpsc::Receiver<Request>,
    /// Every request's query, in order, for the failure message.
    seen: Arc<Mutex<Vec<String>>>,
}

impl ApiServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let (tx, requests) = mpsc::channel(16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (tx, log) = (tx.clone(), log.clone());
                tokio::spawn(async move {
                    if let Some(req) = Request::read(conn).await {
                        log.lock().expect("log").push(req.target.clone());
                        let _ = tx.send(req).await;
                    }
                });
            }
        });
        Self { port, requests, seen }
    }

    fn kubeconfig(&self) -> String {
        harness::kubeconfig(self.port)
    }

    async fn next(&mut self) -> Request {
        let req = timeout(STEP, self.requests.recv()).await.expect("a request in time");
        req.expect("server running")
    }
}

/// One HTTP/1.1 request, with the connection to answer it on.
struct Request {
    method: String,
    path: String,
    target: String,
    query: HashMap<String, String>,
    conn: TcpStream,
}

impl Request {
    async fn read(mut conn: TcpStream) -> Option<Self> {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.ok()?;
            if n == 0 || head.len() > 64 * 1024 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8(head).ok()?;
        let mut words = head.lines().next()?.split(' ');
        let (method, target) = (words.next()?.to_string(), words.next()?.to_string());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        Some(Self { method, path: path.to_string(), target: target.clone(), query, conn })
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    /// All pods (no namespace) of this node; what both lists and watches must ask for.
    fn expect_pods_of_node(&self) {
        assert_eq!((self.method.as_str(), self.path.as_str()), ("GET", "/api/v1/pods"), "{}", self.target);
        let selector = format!("spec.nodeName={NODE}");
        assert_eq!(self.param("fieldSelector"), Some(selector.as_str()), "{}", self.target);
        assert_eq!(self.param("labelSelector"), None, "{}", self.target);
    }

    fn expect_list(&self) {
        self.expect_pods_of_node();
        assert_eq!(self.param("watch"), None, "a list: {}", self.target);
        // Served from the watch cache; kube only sends resourceVersion=0 without a limit.
        assert_eq!(self.param("resourceVersion"), Some("0"), "{}", self.target);
        assert_eq!(self.param("resourceVersionMatch"), Some("NotOlderThan"), "{}", self.target);
        assert_eq!(self.param("limit"), None, "{}", self.target);
    }

    fn expect_watch(&self, resource_version: &str) {
        self.expect_pods_of_node();
        assert_eq!(self.param("watch"), Some("true"), "a watch: {}", self.target);
        assert_eq!(self.param("resourceVersion"), Some(resource_version), "{}", self.target);
        assert_eq!(self.param("allowWatchBookmarks"), Some("true"), "{}", self.target);
        assert_eq!(self.param("timeoutSeconds"), Some("290"), "{}", self.target);
        assert_eq!(self.param("sendInitialEvents"), None, "{}", self.target);
    }

    async fn respond(mut self, status: u16, reason: &str, body: &str) {
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nAudit-Id: 5f0b7d3e-2c1a-4e8b-9d6f-1a2b3c4d5e6f\r\n\
             Cache-Control: no-cache, private\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = self.conn.write_all(head.as_bytes()).await;
        let _ = self.conn.write_all(body.as_bytes()).await;
        let _ = self.conn.shutdown().await;
    }

    /// Starts a watch response; events follow as chunks, one JSON object per line.
    async fn start_watch(mut self) -> WatchStream {
        let head = "HTTP/1.1 200 OK\r\nAudit-Id: 8c9d0e1f-3a4b-4c5d-8e7f-9a0b1c2d3e4f\r\n\
                    Cache-Control: no-cache, private\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        self.conn.write_all(head.as_bytes()).await.expect("write watch head");
        WatchStream { conn: self.conn }
    }
}

/// An open watch response. Dropping it closes the connection without the final chunk, as a
/// broken connection or an apiserver restart does.
struct WatchStream {
    conn: TcpStream,
}

impl WatchStream {
    async fn send(&mut self, fixture_name: &str) {
        let event: serde_json::Value = serde_json::from_str(&fixture(fixture_name)).expect("fixture JSON");
        let line = format!("{event}\n");
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        self.conn.write_all(chunk.as_bytes()).await.expect("write watch event");
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
