//! OTLP export received by an independent receiver (Python grpcio with the official
//! opentelemetry-proto definitions, tests/tools/otlp_receiver.py): alerts arrive as log
//! records carrying the alert's fields, and the metrics as OTLP metrics; the receiver refuses
//! exports without the header the configuration gives (a collector's token).

use std::{
    fs,
    process::{Child, Command},
    time::{Duration, Instant},
};

use harness::{
    Daemon,
    pod::{Options, Pod, Spec},
};

struct Receiver {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The header the receiver requires, as a collector requiring a token does.
const TOKEN: &str = "x-sidewall-token=s3cret";

impl Receiver {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let (port_file, out) = (dir.path().join("port"), dir.path().join("records.jsonl"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/otlp_receiver.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(&port_file)
            .arg(&out)
            .arg(TOKEN)
            .spawn()
            .expect("python3");
        let start = Instant::now();
        let port = loop {
            if let Some(p) = fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse().ok()) {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the OTLP receiver did not start (pip install grpcio opentelemetry-proto; `make setup` does)"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        Self { child, port, out, _dir: dir }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attr<'a>(record: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    record["record"]["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_reach_an_otlp_receiver_with_their_fields() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().expect("policy dir");
    let policy = "apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: otlp\nspec:\n  mode: monitor\n  containers:\n    - name: probero\n      loopback:\n        connect: []\n      action: block\n";
    fs::write(dir.path().join("p.yaml"), policy).expect("policy");
    let d = Daemon::with_config(&format!(
        "otlp_endpoint = \"http://127.0.0.1:{}\"\notlp_headers = [\"{TOKEN}\"]\notlp_metrics_interval_seconds = 1\npolicy_dir = \"{}\"",
        receiver.port,
        dir.path().display()
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod = Pod::play_with(
        "otlp",
        &[
            Spec {
                name: "appo",
                command: &["/bin/swtool", "serve-tcp", "127.0.0.1", "8080"],
                ..Default::default()
            },
            Spec { name: "probero", command: &["/bin/sleep", "3600"], ..Default::default() },
        ],
        &Options::default(),
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let alert = loop {
        // Monitor mode: the probe goes through, and is reported.
        let _ = pod.exec("probero", &["/bin/swtool", "connect-tcp", "127.0.0.1", "8080"]);
        let found = receiver.records().into_iter().find(|r| {
            attr(r, "sidewall.rule_id") == Some("loopback-egress")
                && attr(r, "k8s.pod.name") == Some(pod.name.as_str())
        });
        if let Some(r) = found {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no alert received; got {} records\n{}",
            receiver.records().len(),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(attr(&alert, "sidewall.action"), Some("would_block"));
    assert_eq!(attr(&alert, "sidewall.mitre_technique"), Some("T1021"));
    assert_eq!(attr(&alert, "k8s.container.name"), Some("probero"));
    assert_eq!(attr(&alert, "sidewall.peer.container.name"), Some("appo"));
    assert_eq!(alert["record"]["severityText"], "WARN");
    let body: serde_json::Value =
        serde_json::from_str(alert["record"]["body"]["stringValue"].as_str().expect("body"))
            .expect("JSON body");
    assert_eq!(body["policy_alert"]["policy"], "default/otlp");
    let service = &alert["resource"]["attributes"][0];
    assert_eq!(
        (service["key"].as_str(), service["value"]["stringValue"].as_str()),
        (Some("service.name"), Some("sidewalld"))
    );
    let node = alert["resource"]["attributes"].as_array().and_then(|a| {
        a.iter().find(|kv| kv["key"] == "k8s.node.name").and_then(|kv| kv["value"]["stringValue"].as_str())
    });
    assert_eq!(node, Some("test-node"));

    // The alert counted in the metrics, pushed as a cumulative monotonic sum.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sum = loop {
        let found = receiver.records().into_iter().rev().find_map(|r| {
            let m = &r["metric"];
            (m["name"] == "sidewall_alerts").then(|| m["sum"].clone())
        });
        match found {
            Some(sum) if data_point(&sum, &[("rule", "loopback-egress"), ("pod", &pod.name)]).is_some() => {
                break sum;
            }
            _ => assert!(Instant::now() < deadline, "no sidewall_alerts metric for the pod\n{}", d.log()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        (sum["isMonotonic"].as_bool(), sum["aggregationTemporality"].as_str()),
        (Some(true), Some("AGGREGATION_TEMPORALITY_CUMULATIVE"))
    );
    let point = data_point(&sum, &[("rule", "loopback-egress"), ("pod", &pod.name)]).expect("point");
    assert!(point["asDouble"].as_f64().is_some_and(|v| v >= 1.0), "{point}");
    assert_eq!(point_attr(&point, "action"), Some("would_block"));
    assert_eq!(point_attr(&point, "container"), Some("probero"));

    // Policy changes are log records too: the file's policy loaded at start (INFO), and its
    // deletion over the API (WARN: protection dropped).
    let change = |r: &serde_json::Value, kind: &str| {
        attr(r, "event.name") == Some("policy_change")
            && attr(r, "sidewall.policy") == Some("default/otlp")
            && attr(r, "sidewall.change") == Some(kind)
    };
    let added = receiver.records().into_iter().find(|r| change(r, "added")).expect("the policy's load");
    assert_eq!(
        (attr(&added, "sidewall.source"), added["record"]["severityText"].as_str()),
        (Some("file"), Some("INFO"))
    );
    let body: serde_json::Value =
        serde_json::from_str(added["record"]["body"]["stringValue"].as_str().expect("body"))
            .expect("JSON body");
    assert_eq!(body["policy_change"]["actor"]["file"], dir.path().join("p.yaml").display().to_string());
    let delete = sidewall_proto::v1::DeletePolicyRequest { name: "otlp".into() };
    d.client().await.delete_policy(delete).await.expect("DeletePolicy");
    let deadline = Instant::now() + Duration::from_secs(20);
    let deleted = loop {
        if let Some(r) = receiver.records().into_iter().find(|r| change(r, "deleted")) {
            break r;
        }
        assert!(Instant::now() < deadline, "no policy_change record of the deletion\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        (attr(&deleted, "sidewall.source"), deleted["record"]["severityText"].as_str()),
        (Some("api"), Some("WARN"))
    );

    let status = d.status().await;
    for name in ["otlp", "otlp_metrics"] {
        let e = status.exporters.iter().find(|e| e.name == name).expect("exporter in status");
        assert_eq!(e.state, "ok", "{e:?}");
        assert!(e.events > 0, "{e:?}");
    }
}

fn point_attr<'a>(point: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    point["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
}

/// The data point of an OTLP sum whose attributes include `attrs`.
fn data_point(sum: &serde_json::Value, attrs: &[(&str, &str)]) -> Option<serde_json::Value> {
    sum["dataPoints"]
        .as_array()?
        .iter()
        .find(|p| attrs.iter().all(|(k, v)| point_attr(p, k) == Some(v)))
        .cloned()
}
