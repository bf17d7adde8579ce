//! Observability end to end: sidewalld's /metrics scraped by a real Prometheus that runs the
//! repository's rules (`dashboards/prometheus/sidewall-rules.yaml`) while a real pod is
//! attacked. Every PromQL expression of the Grafana dashboards (`dashboards/grafana/*.json`:
//! panel targets and template variables) and of the rules must parse and return data, and every
//! alert rule must fire.
//!
//! The scenario produces what each expression needs: loopback flows between two containers, a
//! violation of every policy rule (by an enforce and by a monitor policy), events lost by a
//! stalled gRPC subscriber, a policy switched from enforce to monitor and deleted over the
//! API, and a failed sensor: the daemon runs in a mount namespace where the
//! `sys_enter_connect` tracepoint is hidden, as on a node whose tracefs lacks it.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use harness::{
    Daemon,
    pod::{Options, Pod, Spec},
};
use serde_json::Value;
use sidewall_proto::v1::{
    AddPolicyRequest, DeletePolicyRequest, GetEventsRequest, ListPoliciesRequest, SetPolicyModeRequest,
};

/// How long the expressions and alerts may take to show after the scenario ran.
const SETTLE: Duration = Duration::from_secs(40);
/// The tracepoint hidden from the daemon, so that its `unix_connect` sensor fails to attach.
const HIDDEN_TRACEPOINT: &str = "/sys/kernel/tracing/events/syscalls/sys_enter_connect";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

fn rules_file() -> PathBuf {
    repo().join("dashboards/prometheus/sidewall-rules.yaml")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

// ---------------------------------------------------------------------------------------
// A real Prometheus, and its HTTP API.

struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("sidewall-prometheus-").tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: sidewall\n    static_configs:\n      - targets: ['{target}']\n",
                rules_file().display()
            ),
        )
        .expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn /usr/bin/prometheus (apt-get install prometheus)");
        let mut p = Self { child, addr, dir };
        let start = Instant::now();
        while !matches!(http_get(&p.addr, "/-/ready"), Ok((200, _))) {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", p.log());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "prometheus not ready:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `data` of an API response; Err with Prometheus' error for a refused request (such as an
    /// expression that does not parse).
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(&self.addr, path)?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {status}: {}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"].clone())
    }

    /// The result of an instant query: the series of a vector, or one scalar or string.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(expr)))?;
        match data["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            _ => Ok(vec![data["result"].clone()]),
        }
    }

    fn label_values(&self, selector: &str, label: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/label/{label}/values?match[]={}", urlencode(selector)))?;
        Ok(data.as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        harness::daemon::stop_child(&mut self.child);
    }
}

/// A plain HTTP/1.0 GET (no chunked encoding, the server closes the connection).
fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {text}"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The dashboards: structure, and every expression with its variables substituted.

/// One expression to evaluate, and where it comes from.
struct Expr {
    origin: String,
    kind: ExprKind,
}

enum ExprKind {
    /// An instant query.
    Query(String),
    /// A `label_values(selector, label)` template variable: Grafana asks for the label's values
    /// among the series matching the selector.
    LabelValues { selector: String, label: String },
}

impl Expr {
    fn text(&self) -> String {
        match &self.kind {
            ExprKind::Query(q) => q.clone(),
            ExprKind::LabelValues { selector, label } => format!("label_values({selector}, {label})"),
        }
    }

    fn evaluate(&self, prom: &Prometheus) -> Result<Vec<Value>, String> {
        match &self.kind {
            ExprKind::Query(q) => prom.query(q),
            ExprKind::LabelValues { selector, label } => prom
                .label_values(selector, label)
                .map(|v| v.into_iter().filter(|v| v.as_str().is_some_and(|s| !s.is_empty())).collect()),
        }
    }
}

struct Dashboard {
    file: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = repo().join("dashboards/grafana");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "the node, flows, alerts and pipeline dashboards: {files:?}");
    files
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).expect("read dashboard");
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            Dashboard { file: p.file_name().expect("name").to_string_lossy().into_owned(), json }
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// What Grafana needs to import and provision a dashboard, and what keeps it self-consistent.
fn check_structure(d: &Dashboard, uids: &mut HashSet<String>) {
    let (f, j) = (&d.file, &d.json);
    let schema = j["schemaVersion"].as_u64().unwrap_or(0);
    assert!((36..=41).contains(&schema), "{f}: schemaVersion {schema}");
    let uid = j["uid"].as_str().unwrap_or_default();
    assert!(!uid.is_empty() && uid.len() <= 40, "{f}: uid {uid:?}");
    assert!(uids.insert(uid.to_string()), "{f}: uid {uid} used twice");
    assert!(j["title"].as_str().is_some_and(|t| !t.is_empty()), "{f}: title");
    assert!(j["id"].is_null(), "{f}: id must be null to import into any Grafana");
    // No ${DS_...} import inputs: a "datasource" variable, which provisioning resolves too.
    assert!(!j.to_string().contains("${DS_"), "{f}: uses ${{DS_...}} inputs");
    let vars = j["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "{f}: no datasource variable"
    );
    let ds = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = HashSet::new();
    for p in panels(j) {
        let title = p["title"].as_str().unwrap_or_default();
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{f}: panel {title:?} has no id"));
        assert!(ids.insert(id), "{f}: panel id {id} used twice");
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        assert!(
            matches!((x, w, h), (Some(x), Some(w), Some(h)) if x + w <= 24 && h > 0) && g["y"].is_u64(),
            "{f}: panel {title:?}: gridPos {g}"
        );
        let kind = p["type"].as_str().unwrap_or_default();
        assert!(
            ["row", "timeseries", "stat", "table", "piechart", "bargauge", "nodeGraph"].contains(&kind),
            "{f}: panel {title:?}: type {kind:?}"
        );
        if kind == "row" {
            continue;
        }
        assert_eq!(p["datasource"], ds, "{f}: panel {title:?}: datasource");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{f}: panel {title:?} has no query"));
        let mut refs = HashSet::new();
        for t in targets {
            assert_eq!(t["datasource"], ds, "{f}: panel {title:?}: target datasource");
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{f}: {title:?}: expr");
            assert!(refs.insert(t["refId"].as_str().unwrap_or_default()), "{f}: {title:?}: refIds");
        }
        if kind == "nodeGraph" {
            // The panel tells its frames apart by these refIds (and the edges by a source field).
            assert!(refs.contains("nodes") && refs.contains("edges"), "{f}: {title:?}: refIds {refs:?}");
        }
    }
}

/// Grafana's built-in interval variables, as they come out at the test's 1 s scrape interval.
const BUILTINS: &[(&str, &str)] = &[("__rate_interval", "1m"), ("__interval", "15s"), ("__range", "5m")];

/// `text` with the dashboard's variables replaced by `values` (a variable the test has no
/// value for is an error, as is any `$name` left over; `$1` in label_replace stays).
fn substitute(text: &str, values: &BTreeMap<&str, String>, origin: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = BUILTINS.to_vec();
    pairs.extend(values.iter().map(|(k, v)| (*k, v.as_str())));
    // Longest first: $__range before $__rate..., $pods before $pod.
    pairs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let mut out = text.to_string();
    for (name, value) in pairs {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    let leftover = regex::Regex::new(r"\$\{?[A-Za-z_]\w*").expect("regex");
    assert!(!leftover.is_match(&out), "{origin}: unknown variable in {out}");
    out
}

/// Every expression of a dashboard: template variable queries, then panel targets.
fn dashboard_exprs(d: &Dashboard, scenario: &BTreeMap<&str, String>) -> Vec<Expr> {
    let vars = d.json["templating"]["list"].as_array().expect("templating.list");
    let values = dashboard_vars(d, scenario);
    let mut out = Vec::new();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let origin = format!("{}: variable {}", d.file, v["name"]);
        let q = v["query"].get("query").unwrap_or(&v["query"]).as_str().expect("variable query");
        let q = substitute(q.trim(), &values, &origin);
        let kind = if let Some(inner) = q.strip_prefix("query_result(").and_then(|s| s.strip_suffix(')')) {
            ExprKind::Query(inner.to_string())
        } else if let Some(args) = q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')) {
            let (selector, label) = args.rsplit_once(',').unwrap_or_else(|| panic!("{origin}: {q}"));
            ExprKind::LabelValues { selector: selector.trim().into(), label: label.trim().into() }
        } else {
            panic!("{origin}: only label_values(selector, label) and query_result(expr) are checked: {q}");
        };
        out.push(Expr { origin, kind });
    }
    for p in panels(&d.json) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let origin =
                format!("{}: panel {:?} query {}", d.file, p["title"].as_str().unwrap_or(""), t["refId"]);
            let expr = substitute(t["expr"].as_str().unwrap_or_default(), &values, &origin);
            out.push(Expr { origin, kind: ExprKind::Query(expr) });
        }
    }
    // Nothing missed: every "expr" anywhere in the JSON is one of the targets above.
    fn count_exprs(v: &Value) -> usize {
        match v {
            Value::Object(m) => m.iter().map(|(k, v)| usize::from(k == "expr") + count_exprs(v)).sum(),
            Value::Array(a) => a.iter().map(count_exprs).sum(),
            _ => 0,
        }
    }
    let targets = out.iter().filter(|e| e.origin.contains(": panel ")).count();
    assert_eq!(count_exprs(&d.json), targets, "{}: an expr outside panels[].targets[]", d.file);
    out
}

// ---------------------------------------------------------------------------------------
// The daemon and the pod.

/// web-ish app: serves 127.0.0.1:8080 and :9090. The proxy may reach 8080 only.
const SERVE_BOTH: &[&str] =
    &["/bin/sh", "-c", "/bin/swtool serve-tcp 127.0.0.1 8080 & exec /bin/swtool serve-tcp 127.0.0.1 9090"];

/// Enforced for the proxy: one allowed loopback port, its own bind port, egress to 10/8:443,
/// and no runtime sockets.
const GUARD: &str = "apiVersion: sidewall.io/v1alpha1
kind: SidecarPolicy
metadata:
  name: obs-guard
spec:
  mode: enforce
  containers:
    - name: obsproxy
      loopback:
        connect:
          - container: obsapp
            ports: [8080]
        bind: [15001]
      egress:
        - cidr: 10.0.0.0/8
          ports: [443]
      runtimeSockets: deny
      action: block
";

/// Monitored for the app: no egress at all (what enforce mode would block is reported).
const AUDIT: &str = "apiVersion: sidewall.io/v1alpha1
kind: SidecarPolicy
metadata:
  name: obs-audit
spec:
  mode: monitor
  containers:
    - name: obsapp
      egress: []
      action: block
";

/// Enforced for the intruder: no namespace changes, no access to other containers' processes.
/// Loaded once the pod runs, and nobody execs into that container: with the strict set, the
/// runtime's own setns/unshare and /proc opens while it creates a container or execs into it
/// count as the container's (and with `action: kill` the daemon kills runc init).
const INTRUDER: &str = "apiVersion: sidewall.io/v1alpha1
kind: SidecarPolicy
metadata:
  name: obs-intruder
spec:
  mode: enforce
  containers:
    - name: obsintruder
      namespaceChanges: deny
      processAccess: deny
      action: kill
";

/// Enforced, then switched to monitor and deleted over the API: a weakened policy.
const SWITCHED: &str = "apiVersion: sidewall.io/v1alpha1
kind: SidecarPolicy
metadata:
  name: obs-switch
spec:
  mode: enforce
  containers:
    - name: obsnobody
      namespaceChanges: deny
      action: kill
";

/// The intruder attacks on SIGUSR1, from its own shell (no exec from outside): it unshares a
/// user namespace, then reads the environment of the pod's pid 1 (the infra container's pause,
/// in the shared pid namespace). Each in a child, so that the kills hit only those. (unshare is
/// seen at the syscall by the strict set; a clone into a new namespace is not used: with the
/// strict set the daemon may learn the container's namespaces from runc init's, and then
/// does not see the container's processes as at home.)
const INTRUDER_CMD: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap '(exec /bin/unshare -U /bin/true); (exec /bin/cat /proc/1/environ >/dev/null)' USR1; \
     while :; do sleep 1 & wait $!; done",
];

async fn wait_policies(d: &Daemon, names: &[&str]) {
    for _ in 0..50 {
        let list = d.client().await.list_policies(ListPoliciesRequest {}).await.expect("list").into_inner();
        let loaded: HashSet<_> = list.policies.iter().map(|p| p.name.as_str()).collect();
        if names.iter().all(|n| loaded.contains(n)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("policies {names:?} not loaded:\n{}", d.log());
}

/// Starts the daemon in a mount namespace of its own where `HIDDEN_TRACEPOINT` is covered by an
/// empty tmpfs: its `unix_connect` sensor fails (its tracepoint is neither described nor
/// attachable there), the others work. Only the thread
/// that starts the daemon changes namespace (and the namespace goes with the daemon).
fn daemon_missing_a_tracepoint(config: String) -> Daemon {
    assert!(Path::new(HIDDEN_TRACEPOINT).exists(), "{HIDDEN_TRACEPOINT}: tracefs is not mounted");
    let thread = std::thread::spawn(move || {
        let c = |s: &str| std::ffi::CString::new(s).expect("C string");
        let (root, target, tmpfs, opts) = (c("/"), c(HIDDEN_TRACEPOINT), c("tmpfs"), c("size=4k"));
        // SAFETY: unshare and mount with valid C strings. CLONE_NEWNS unshares only this
        // thread's filesystem context; the child it spawns inherits the new namespace.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare: {}", std::io::Error::last_os_error());
            let slave = libc::MS_REC | libc::MS_SLAVE;
            assert_eq!(
                libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), slave, std::ptr::null()),
                0,
                "make / a slave mount: {}",
                std::io::Error::last_os_error()
            );
            let ro = libc::MS_RDONLY;
            assert_eq!(
                libc::mount(tmpfs.as_ptr(), target.as_ptr(), tmpfs.as_ptr(), ro, opts.as_ptr().cast()),
                0,
                "hide {HIDDEN_TRACEPOINT}: {}",
                std::io::Error::last_os_error()
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(Daemon::with_config(&config))
    });
    thread.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn out(pod: &Pod, container: &str, args: &[&str]) -> String {
    let o = pod.exec(container, args);
    let text = format!(
        "{} {}",
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    eprintln!("{container}$ {} -> {:?}: {}", args.join(" "), o.status.code(), text.trim());
    text
}

/// The value of one sample line of the daemon's /metrics, by its exact name and labels.
fn scraped(metrics_addr: &str, series: &str) -> f64 {
    let (_, body) = http_get(metrics_addr, "/metrics").expect("scrape sidewalld");
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboards_and_alert_rules_work_on_a_real_prometheus() {
    harness::require_root();
    let started = Instant::now();

    // The rules file, and the example configuration that loads it, must pass promtool before
    // anything runs.
    let example = repo().join("dashboards/prometheus/prometheus-example.yaml");
    for (what, file) in [("rules", rules_file()), ("config", example)] {
        let check = Command::new("promtool").arg("check").arg(what).arg(&file).output().expect("promtool");
        assert!(
            check.status.success(),
            "promtool check {what} {}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let dashboards = dashboards();
    let mut uids = HashSet::new();
    for d in &dashboards {
        check_structure(d, &mut uids);
    }

    // The daemon: metrics on a free port, the two policies, the strict set (process access),
    // and small subscriber queues so that a stalled client loses events quickly.
    let policies = tempfile::Builder::new().prefix("sidewall-obs-policies-").tempdir().expect("tempdir");
    fs::write(policies.path().join("guard.yaml"), GUARD).expect("write policy");
    fs::write(policies.path().join("audit.yaml"), AUDIT).expect("write policy");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let d = daemon_missing_a_tracepoint(format!(
        "metrics_address = \"{metrics_addr}\"\npolicy_dir = \"{}\"\nsensor_set = \"strict\"\nsubscriber_queue = 16\n",
        policies.path().display()
    ));
    wait_policies(&d, &["default/obs-guard", "default/obs-audit"]).await;
    // A client that never reads its stream: once HTTP/2 and its queue are full, it loses events.
    let mut stalled_client = d.client().await;
    let stalled =
        stalled_client.get_events(GetEventsRequest::default()).await.expect("GetEvents").into_inner();

    let prom = Prometheus::start(&metrics_addr);
    let start = Instant::now();
    while !prom.query("up{job=\"sidewall\"} == 1").is_ok_and(|r| !r.is_empty()) {
        assert!(start.elapsed() < Duration::from_secs(20), "sidewalld never scraped:\n{}", prom.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // The pod: the app, a proxy that reaches it on loopback and then breaks its policy, and an
    // intruder.
    let pod = Pod::play_with(
        "obs",
        &[
            Spec { name: "obsapp", command: SERVE_BOTH, ..Default::default() },
            Spec { name: "obsproxy", command: &["/bin/sleep", "3600"], ..Default::default() },
            Spec { name: "obsintruder", command: INTRUDER_CMD, ..Default::default() },
        ],
        &Options { share_process_namespace: true, ..Default::default() },
    );
    let scenario: BTreeMap<&str, String> =
        [("instance", ".*".to_string()), ("namespace", "default".into()), ("pod", pod.name.clone())].into();

    // Every expression, parsed by Prometheus before the scenario runs: a syntax error fails here.
    let mut exprs: Vec<Expr> = dashboards.iter().flat_map(|d| dashboard_exprs(d, &scenario)).collect();
    for e in &exprs {
        if let Err(err) = e.evaluate(&prom) {
            panic!("{}: Prometheus refuses {}:\n{err}", e.origin, e.text());
        }
    }

    // Allowed traffic: the proxy -> app:8080 edge of the flow graph.
    let mut serving = false;
    for _ in 0..50 {
        if out(&pod, "obsproxy", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8080", "GET /"])
            .starts_with("ok")
        {
            serving = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(serving, "the app never served 8080");
    for _ in 0..3 {
        out(&pod, "obsproxy", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8080", "GET /health"]);
    }

    // The attacks, one per rule, by the enforced proxy.
    let loopback = out(&pod, "obsproxy", &["/bin/swtool", "connect-tcp", "127.0.0.1", "9090", "x"]);
    assert!(loopback.starts_with("error EPERM"), "loopback-egress is enforced: {loopback}\n{}", d.log());
    out(&pod, "obsproxy", &["/bin/swtool", "bind-tcp", "0.0.0.0", "8081"]); // port-squatting
    out(&pod, "obsproxy", &["/bin/swtool", "connect-tcp", "192.0.2.10", "443"]); // egress
    out(&pod, "obsproxy", &["/bin/swtool", "connect-tcp", "127.0.0.1", "10250"]); // runtime-socket (kubelet)
    // The intruder's policy, now that its container runs; then its attack.
    fs::write(policies.path().join("intruder.yaml"), INTRUDER).expect("write policy");
    wait_policies(&d, &["default/obs-intruder"]).await;
    // SAFETY: kill(2) of the intruder container's shell, started by this test's pod.
    assert_eq!(unsafe { libc::kill(pod.host_pid("obsintruder") as i32, libc::SIGUSR1) }, 0);
    // The monitored app: egress that enforce mode would block.
    out(&pod, "obsapp", &["/bin/swtool", "connect-tcp", "192.0.2.20", "80"]);

    // Event loss: bursts of execs until the stalled subscriber has lost some.
    let lost = "sidewall_events_lost_total{stage=\"subscriber_queue\"}";
    for burst in 0..8 {
        if scraped(&metrics_addr, lost) > 0.0 {
            break;
        }
        eprintln!("exec burst {burst}");
        let loop_ = "i=0; while [ $i -lt 1500 ]; do /bin/true; i=$((i+1)); done";
        let _ = pod.exec("obsapp", &["/bin/sh", "-c", loop_]);
    }
    assert!(scraped(&metrics_addr, lost) > 0.0, "the stalled subscriber lost nothing");

    // A policy weakened over the API (by root on the socket): enforce to monitor, then gone.
    let mut admin = d.client().await;
    admin.add_policy(AddPolicyRequest { document: SWITCHED.into() }).await.expect("AddPolicy");
    let switch = SetPolicyModeRequest { name: "obs-switch".into(), mode: "monitor".into() };
    admin.set_policy_mode(switch).await.expect("SetPolicyMode");
    admin.delete_policy(DeletePolicyRequest { name: "obs-switch".into() }).await.expect("DeletePolicy");
    eprintln!("scenario done after {:?}", started.elapsed());

    // The rules as Prometheus loaded them: all of the file's, and their expressions too.
    let groups = prom.api("/api/v1/rules").expect("rules")["groups"].clone();
    let rules: Vec<Value> = groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    let in_file = fs::read_to_string(rules_file())
        .expect("rules file")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:"))
        .count();
    assert_eq!(rules.len(), in_file, "Prometheus loaded {} of the file's {in_file} rules", rules.len());
    let alert_names: BTreeSet<String> = rules
        .iter()
        .filter(|r| r["type"] == "alerting")
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect();
    for r in &rules {
        let origin = format!("sidewall-rules.yaml: {} {}", r["type"], r["name"]);
        exprs.push(Expr {
            origin,
            kind: ExprKind::Query(r["query"].as_str().expect("rule query").to_string()),
        });
    }

    // The alerts the scenario must fire, by the labels they must carry: the security ones name
    // the attacked pod and the attacker, the health ones what broke. Every alert of the rules
    // file is among them.
    let p = pod.name.as_str();
    let expected: &[(&str, &[(&str, &str)])] = &[
        ("SidewallNamespaceEscape", &[("pod", p), ("container", "obsintruder"), ("severity", "critical")]),
        ("SidewallProcessAccess", &[("pod", p), ("container", "obsintruder"), ("action", "killed")]),
        ("SidewallRuntimeSocket", &[("pod", p), ("container", "obsproxy"), ("severity", "critical")]),
        ("SidewallLoopbackPolicyViolation", &[("pod", p), ("container", "obsproxy"), ("action", "blocked")]),
        ("SidewallPortSquatting", &[("pod", p), ("container", "obsproxy"), ("action", "blocked")]),
        ("SidewallEgressViolation", &[("pod", p), ("container", "obsproxy"), ("action", "blocked")]),
        // The monitor policy's alert says what enforce mode would do.
        ("SidewallEgressViolation", &[("pod", p), ("container", "obsapp"), ("action", "would_block")]),
        ("SidewallSensorFailed", &[("sensor", "unix_connect")]),
        (
            "SidewallPolicyWeakened",
            &[
                ("policy", "default/obs-switch"),
                ("kind", "mode_changed"),
                ("source", "api"),
                ("severity", "high"),
            ],
        ),
        (
            "SidewallPolicyWeakened",
            &[("policy", "default/obs-switch"), ("kind", "deleted"), ("mode_before", "monitor")],
        ),
        ("SidewallEventsLost", &[("stage", "subscriber_queue")]),
    ];
    let untested: Vec<_> = alert_names.iter().filter(|n| !expected.iter().any(|(e, _)| e == n)).collect();
    assert!(untested.is_empty(), "alert rules the scenario does not fire: {untested:?}");

    // Every expression returns data, every expected alert fires.
    let deadline = Instant::now() + SETTLE;
    let mut pending: Vec<&Expr> = exprs.iter().collect();
    for round in 0.. {
        pending.retain(|e| match e.evaluate(&prom) {
            Ok(r) => r.is_empty(),
            Err(err) => panic!("{}: {}:\n{err}", e.origin, e.text()),
        });
        let alerts = prom.api("/api/v1/alerts").expect("alerts")["alerts"].clone();
        let firing: Vec<&Value> = alerts
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| &a["labels"])
            .collect();
        let silent: Vec<_> = expected
            .iter()
            .filter(|(name, want)| {
                !firing.iter().any(|l| l["alertname"] == *name && want.iter().all(|(k, v)| l[*k] == *v))
            })
            .collect();
        if pending.is_empty() && silent.is_empty() {
            break;
        }
        if round % 5 == 4 {
            eprintln!("{} expressions without data, alerts not firing: {silent:?}", pending.len());
        }
        if Instant::now() > deadline {
            let missing: Vec<String> =
                pending.iter().map(|e| format!("  {}:\n    {}", e.origin, e.text())).collect();
            let (_, metrics) = http_get(&metrics_addr, "/metrics").unwrap_or_default();
            panic!(
                "after {SETTLE:?}: {} expressions returned nothing:\n{}\nalerts not firing: {silent:?}\n\
                 firing: {firing:?}\n/metrics:\n{metrics}\nunhealthy rules: {}\ndaemon log tail:\n{}",
                missing.len(),
                missing.join("\n"),
                rules_health(&prom),
                d.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("{} expressions returned data, alerts fired, after {:?}", exprs.len(), started.elapsed());
    assert_eq!(rules_health(&prom), "", "every rule evaluates");

    // The node graph gets what its panel needs: nodes with id and title, edges with id, source
    // and target naming nodes, and the proxy -> app:8080 edge.
    for d in &dashboards {
        for p in panels(&d.json).into_iter().filter(|p| p["type"] == "nodeGraph") {
            let vars = dashboard_vars(d, &scenario);
            let query = |ref_id: &str| {
                let t = p["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["refId"] == ref_id)
                    .expect("target");
                let expr = substitute(t["expr"].as_str().unwrap_or(""), &vars, &d.file);
                prom.query(&expr).expect("node graph query")
            };
            let label = |s: &Value, k: &str| s["metric"][k].as_str().unwrap_or_default().to_string();
            let nodes = query("nodes");
            let ids: HashSet<String> = nodes.iter().map(|n| label(n, "id")).collect();
            assert!(
                nodes.iter().all(|n| !label(n, "id").is_empty() && label(n, "title") == label(n, "id")),
                "{nodes:?}"
            );
            assert!(ids.contains("obsproxy") && ids.contains("obsapp"), "nodes: {ids:?}");
            let edges = query("edges");
            assert!(
                edges.iter().all(|e| !label(e, "id").is_empty()
                    && ids.contains(&label(e, "source"))
                    && ids.contains(&label(e, "target"))),
                "edges {edges:?} between nodes {ids:?}"
            );
            assert!(
                edges.iter().any(|e| label(e, "source") == "obsproxy"
                    && label(e, "target") == "obsapp"
                    && label(e, "port") == "8080"),
                "no obsproxy -> obsapp:8080 edge: {edges:?}"
            );
        }
    }
    drop(stalled);
    eprintln!("done after {:?}", started.elapsed());
}

/// The variables of a dashboard with the scenario's values.
fn dashboard_vars<'a>(d: &'a Dashboard, scenario: &BTreeMap<&str, String>) -> BTreeMap<&'a str, String> {
    d.json["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] != "datasource")
        .map(|v| v["name"].as_str().expect("variable name"))
        .map(|n| {
            let value = scenario.get(n).unwrap_or_else(|| panic!("{}: no test value for ${n}", d.file));
            (n, value.clone())
        })
        .collect()
}

/// The rules that are not healthy, with their errors ("" when all are).
fn rules_health(prom: &Prometheus) -> String {
    let groups = prom.api("/api/v1/rules").map(|d| d["groups"].clone()).unwrap_or_default();
    groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: {} {}; ", r["name"], r["health"], r["lastError"]))
        .collect()
}
