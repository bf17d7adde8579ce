//! Alerts delivered where a SOC works, checked with the real components from Debian: a real
//! Alertmanager (prometheus-alertmanager, with the repository's example routing) receives the
//! alerts of a real attack on a pod with the labels a SOC routes on, groups them, and a
//! silence suppresses them; while it is down, enforcement and the other consumers (the export
//! file, syslog) go on and
//! its losses are counted; when it is back, delivery resumes. rsyslog receives the same
//! alerts as RFC 5424 messages with structured data, over TCP and over TLS.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use harness::{
    Daemon,
    daemon::stop_child,
    pod::{Options, Pod, Spec},
    tls::{self, Ca},
};
use serde_json::Value;
use sidewall_proto::v1::ExporterStatus;

/// A guard against a test that would hang; never a measure of speed.
const WAIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A plain HTTP/1.0 GET (the server closes the connection).
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

/// Waits until `found` returns something, or panics with `what` and `context()`.
async fn wait_for<T>(what: &str, context: impl Fn() -> String, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = found() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", context());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A real Alertmanager with the repository's example routing, on a private port.

struct Alertmanager {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start(port: u16) -> Self {
        let dir = tempfile::Builder::new().prefix("sidewall-alertmanager-").tempdir().expect("tempdir");
        let addr = format!("127.0.0.1:{port}");
        let log = fs::File::create(dir.path().join("alertmanager.log")).expect("log file");
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", example_config().display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // No cluster: no gossip port shared with anyone.
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus-alertmanager (apt-get install prometheus-alertmanager)");
        let mut am = Self { child, addr, dir };
        let start = Instant::now();
        while !matches!(http_get(&am.addr, "/-/ready"), Ok((200, _))) {
            if let Ok(Some(status)) = am.child.try_wait() {
                panic!("alertmanager exited with {status}:\n{}", am.log());
            }
            assert!(start.elapsed() < WAIT, "alertmanager not ready:\n{}", am.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        am
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// `amtool alert query` with `matchers`, as JSON; `silenced` also lists silenced alerts.
    fn query(&self, matchers: &[String], silenced: bool) -> Vec<Value> {
        let mut cmd = Command::new("amtool");
        cmd.args(["-o", "json", "alert", "query", "--alertmanager.url"]).arg(self.url());
        if silenced {
            cmd.arg("--silenced");
        }
        let out = cmd.args(matchers).output().expect("amtool");
        assert!(out.status.success(), "amtool: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default()
    }

    fn silence(&self, matchers: &[String]) -> String {
        let out = Command::new("amtool")
            .args(["silence", "add", "--alertmanager.url"])
            .arg(self.url())
            .args(["--author", "sidewall-tests", "--comment", "known test attack", "--duration", "1h"])
            .args(matchers)
            .output()
            .expect("amtool");
        assert!(out.status.success(), "amtool silence: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn groups(&self) -> Vec<Value> {
        let (status, body) = http_get(&self.addr, "/api/v2/alerts/groups").expect("groups");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON groups")
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn example_config() -> PathBuf {
    repo().join("dashboards/alertmanager/sidewall-alertmanager.yml")
}

// ---------------------------------------------------------------------------------------
// The attack: a sidecar probes the app's loopback port, which its policy forbids.

const APP: &str = "appsoc";
const PROBE: &str = "probesoc";

fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("policy dir");
    let policy = format!(
        "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: soc\nspec:\n  mode: enforce\n  containers:\n    - name: {PROBE}\n      loopback:\n        connect: []\n      action: block\n"
    );
    fs::write(dir.path().join("soc.yaml"), policy).expect("policy");
    dir
}

fn pod() -> Pod {
    Pod::play_with(
        "soc",
        &[
            Spec {
                name: APP,
                command: &["/bin/swtool", "serve-tcp", "127.0.0.1", "8080"],
                ..Default::default()
            },
            Spec { name: PROBE, command: &["/bin/sleep", "3600"], ..Default::default() },
        ],
        &Options::default(),
    )
}

/// One probe of the app's port; what the kernel answered ("error EPERM" once the rule is in).
fn attack(pod: &Pod) -> String {
    let o = pod.exec(PROBE, &["/bin/swtool", "connect-tcp", "127.0.0.1", "8080"]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

async fn exporter(d: &Daemon, name: &str) -> ExporterStatus {
    d.status().await.exporters.into_iter().find(|e| e.name == name).expect("exporter in status")
}

/// Policy alerts of `pod` in the daemon's export file (the JSON-lines consumer).
fn exported_alerts(d: &Daemon, pod: &Pod) -> usize {
    fs::read_to_string(&d.export)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"policy_alert\"") && l.contains(&pod.name))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_reach_a_real_alertmanager_grouped_silenced_and_after_an_outage() {
    let port = free_port();
    let am = Alertmanager::start(port);
    // Another output beside it, which its outage must not touch.
    let syslog = Rsyslog::start(None);
    let policies = policy_dir();
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::with_config(&format!(
        "alertmanager_url = \"{}\"\noutput_retries = 1\npolicy_dir = \"{}\"\nmetrics_address = \"{metrics}\"\n\
         syslog_address = \"tcp://127.0.0.1:{}\"",
        am.url(),
        policies.path().display(),
        syslog.port
    ))
    .await;
    let pod = pod();
    let mine = [format!("pod={}", pod.name), "alertname=loopback-egress".to_string()];

    // The attack, until Alertmanager has its alert.
    let alert = wait_for(
        "the alert in Alertmanager",
        || d.log(),
        || {
            attack(&pod);
            am.query(&mine, false).into_iter().next()
        },
    )
    .await;
    let labels = &alert["labels"];
    for (k, v) in [
        ("alertname", "loopback-egress"),
        ("severity", "medium"),
        ("namespace", "default"),
        ("pod", pod.name.as_str()),
        ("container", PROBE),
        ("peer_container", APP),
        ("mitre_technique", "T1021"),
        ("policy", "default/soc"),
        ("action", "blocked"),
        ("node", "test-node"),
        ("source", "sidewall"),
    ] {
        assert_eq!(labels[k], v, "label {k}: {alert}");
    }
    assert!(labels["role"].as_str().is_some_and(|r| !r.is_empty()), "{alert}");
    assert!(alert["annotations"]["process"].as_str().is_some_and(|p| p.contains("swtool")), "{alert}");
    assert!(alert["annotations"]["exec_id"].as_str().is_some_and(|e| !e.is_empty()), "{alert}");
    assert!(!alert["annotations"]["message"].as_str().unwrap_or_default().is_empty(), "{alert}");

    // Grouped by the example route: rule, namespace and pod, for the enforced receiver.
    let groups = am.groups();
    let group = groups
        .iter()
        .find(|g| g["labels"]["pod"] == pod.name.as_str())
        .unwrap_or_else(|| panic!("no group for the pod: {groups:?}"));
    assert_eq!(group["labels"]["alertname"], "loopback-egress", "{group}");
    assert_eq!(group["labels"]["namespace"], "default", "{group}");
    assert_eq!(group["receiver"]["name"], "soc-enforced", "{group}");
    // Repeated attacks are one alert: Alertmanager merges alerts with equal labels (each
    // attack is a new process: its exec_id is the latest one's).
    let first_exec = alert["annotations"]["exec_id"].clone();
    wait_for(
        "a second attack merged",
        || am.log(),
        || {
            attack(&pod);
            let groups = am.groups();
            let group = groups.into_iter().find(|g| g["labels"]["pod"] == pod.name.as_str())?;
            let alerts = group["alerts"].as_array()?.clone();
            (alerts.iter().any(|a| a["annotations"]["exec_id"] != first_exec)).then(|| {
                assert_eq!(alerts.len(), 1, "{group}");
            })
        },
    )
    .await;

    // A silence suppresses them: no longer active, listed as silenced by it.
    let silence = am.silence(&mine);
    let suppressed = wait_for(
        "the alert silenced",
        || am.log(),
        || {
            attack(&pod);
            let active = am.query(&mine, false);
            let all = am.query(&mine, true);
            (active.is_empty() && !all.is_empty()).then(|| all[0].clone())
        },
    )
    .await;
    assert_eq!(suppressed["status"]["state"], "suppressed", "{suppressed}");
    assert_eq!(suppressed["status"]["silencedBy"][0], silence.as_str(), "{suppressed}");
    assert_eq!(exporter(&d, "alertmanager").await.state, "ok");

    // Alertmanager down: enforcement and the export file go on, its losses are counted.
    drop(am);
    let lost_before = exporter(&d, "alertmanager").await.lost;
    let exported_before = exported_alerts(&d, &pod);
    let syslog_alerts =
        || syslog.received().iter().filter(|l| l.contains("|policy_alert|") && l.contains(&pod.name)).count();
    let syslog_before = syslog_alerts();
    let answer = attack(&pod);
    assert!(answer.starts_with("error EPERM"), "enforcement while Alertmanager is down: {answer}");
    wait_for(
        "the alert in the export file and in syslog",
        || d.log(),
        || (exported_alerts(&d, &pod) > exported_before && syslog_alerts() > syslog_before).then_some(()),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let down = loop {
        let e = exporter(&d, "alertmanager").await;
        if e.lost > lost_before {
            break e;
        }
        assert!(Instant::now() < deadline, "no loss counted: {e:?}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(down.state, "failing", "{down:?}");
    let status = d.status().await;
    assert!(status.lost_by_stage.get("alertmanager").is_some_and(|n| *n >= down.lost), "{status:?}");
    // The same on /metrics: the output down, and what it lost.
    let (_, text) = http_get(&metrics, "/metrics").expect("/metrics");
    let value = |series: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series}:\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    assert_eq!(value("sidewall_exporter_up{exporter=\"alertmanager\"}"), 0.0);
    assert!(value("sidewall_exporter_lost_total{exporter=\"alertmanager\"}") >= 1.0);
    assert!(value("sidewall_exporter_sent_total{exporter=\"alertmanager\"}") >= 1.0);

    // Back on the same address: delivery resumes.
    let am = Alertmanager::start(port);
    let back = wait_for(
        "the alert after the outage",
        || d.log(),
        || {
            attack(&pod);
            am.query(&mine, false).into_iter().next()
        },
    )
    .await;
    assert_eq!(back["labels"]["container"], PROBE);
    let up = exporter(&d, "alertmanager").await;
    assert_eq!(up.state, "ok", "{up:?}");
    assert!(up.events >= 2, "{up:?}");
    let other = exporter(&d, "syslog").await;
    assert_eq!((other.state.as_str(), other.lost), ("ok", 0), "{other:?}");
}

// ---------------------------------------------------------------------------------------
// A real rsyslog on a private port: imtcp (octet-counted framing), plain or with gtls.

struct Rsyslog {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Rsyslog {
    /// `tls`: (CA, server certificate, server key) files for the gtls driver.
    fn start(tls: Option<(&Path, &Path, &Path)>) -> Self {
        let dir = tempfile::Builder::new().prefix("sidewall-rsyslog-").tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let (global, module) = match tls {
            None => (String::new(), "module(load=\"imtcp\")".to_string()),
            Some((ca, cert, key)) => (
                format!(
                    " DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\"",
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
                "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")".to_string(),
            ),
        };
        // What rsyslog parsed, field by field.
        let conf = format!(
            "global(workDirectory=\"{d}\" maxMessageSize=\"64k\"{global})\n{module}\n\
             template(name=\"fields\" type=\"string\" string=\"%hostname%|%app-name%|%msgid%|%syslogseverity-text%|%structured-data%|%msg%\\n\")\n\
             ruleset(name=\"sidewall\") {{ action(type=\"omfile\" file=\"{d}/received.log\" template=\"fields\") }}\n\
             input(type=\"imtcp\" port=\"{port}\" ruleset=\"sidewall\")\n"
        );
        let conf_path = tls::write(dir.path(), "rsyslog.conf", &conf);
        let check = Command::new("rsyslogd").arg("-N1").arg("-f").arg(&conf_path).output().expect("rsyslogd");
        assert!(check.status.success(), "rsyslog.conf: {}", String::from_utf8_lossy(&check.stderr));
        let log = fs::File::create(dir.path().join("rsyslogd.log")).expect("log file");
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn rsyslogd (apt-get install rsyslog rsyslog-gnutls)");
        let mut r = Self { child, port, dir };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("rsyslogd exited with {status}:\n{}", r.log());
            }
            assert!(start.elapsed() < WAIT, "rsyslogd not listening:\n{}", r.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("rsyslogd.log")).unwrap_or_default()
    }

    fn received(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("received.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Runs the attack until rsyslog wrote its alert; returns that line.
async fn syslog_alert(r: &Rsyslog, d: &Daemon, pod: &Pod) -> String {
    wait_for(
        "the alert in rsyslog's file",
        || format!("{}\n{}", d.log(), r.log()),
        || {
            attack(pod);
            r.received().into_iter().find(|l| l.contains("|policy_alert|") && l.contains(&pod.name))
        },
    )
    .await
}

fn check_alert_line(line: &str, pod: &Pod) {
    let fields: Vec<&str> = line.splitn(6, '|').collect();
    assert_eq!(fields[..4], ["test-node", "sidewalld", "policy_alert", "warning"], "{line}");
    let sd = fields[4];
    assert!(
        sd.starts_with("[sidewall@32473 rule_id=\"loopback-egress\" severity=\"medium\" action=\"blocked\""),
        "{line}"
    );
    for part in [
        format!("pod=\"{}\"", pod.name),
        format!("container=\"{PROBE}\""),
        format!("peer_container=\"{APP}\""),
        "namespace=\"default\"".to_string(),
        "policy=\"default/soc\"".to_string(),
        "mitre_technique=\"T1021\"".to_string(),
    ] {
        assert!(sd.contains(&part), "{part} in {line}");
    }
    assert!(!fields[5].trim().is_empty(), "a message: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_reach_rsyslog_over_tcp_with_structured_data() {
    let r = Rsyslog::start(None);
    let policies = policy_dir();
    let d = Daemon::with_config(&format!(
        "syslog_address = \"tcp://127.0.0.1:{}\"\npolicy_dir = \"{}\"",
        r.port,
        policies.path().display()
    ))
    .await;
    let pod = pod();
    let line = syslog_alert(&r, &d, &pod).await;
    check_alert_line(&line, &pod);
    // Only alerts by default.
    assert!(r.received().iter().all(|l| l.contains("|policy_alert|")), "{:?}", r.received());
    let e = exporter(&d, "syslog").await;
    assert_eq!(e.state, "ok", "{e:?}");
    assert!(e.events >= 1 && e.lost == 0, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_reaches_rsyslog_over_tls() {
    let certs = tempfile::tempdir().expect("certs");
    let ca = Ca::new("sidewall test syslog CA");
    let ca_file = tls::write(certs.path(), "ca.pem", &ca.pem());
    let (cert, key) = ca.server("localhost", &["localhost"]).write(certs.path(), "server");
    let r = Rsyslog::start(Some((&ca_file, &cert, &key)));
    let policies = policy_dir();
    let d = Daemon::with_config(&format!(
        "syslog_address = \"tls://localhost:{}\"\nsyslog_events = \"all\"\nsyslog_tls_ca = \"{}\"\npolicy_dir = \"{}\"",
        r.port,
        ca_file.display(),
        policies.path().display()
    ))
    .await;
    let pod = pod();
    let line = syslog_alert(&r, &d, &pod).await;
    check_alert_line(&line, &pod);
    // Every event: the probe's exec too, its canonical JSON as the message.
    let exec = r
        .received()
        .into_iter()
        .find(|l| l.contains("|process_exec|") && l.contains(&pod.name) && l.contains(PROBE))
        .unwrap_or_else(|| panic!("no process_exec of the probe: {} lines", r.received().len()));
    let json = exec.splitn(6, '|').nth(5).expect("message").trim();
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {exec}"));
    assert!(v["process_exec"]["process"]["binary"].is_string(), "{exec}");
    let e = exporter(&d, "syslog").await;
    assert_eq!(e.state, "ok", "{e:?}");
}
