//! The Helm chart as a node runs it: `helm template` renders the DaemonSet, and its pod spec
//! becomes a `podman run` of the daemon's image (`make image`) with the same security context
//! (capabilities, no privilege, read-only root filesystem, AppArmor and SELinux options), the
//! host's PID namespace, a private cgroup namespace, and the chart's mounts. Anything of the
//! pod spec this translation does not know fails the test: it never runs something else than
//! what the chart says.
//!
//! Host paths the test must not share with the machine (the node's /run/sidewall) are mapped
//! to directories of the test's own; the path inside the container stays the chart's.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_yaml_ng::Value;

/// The image `make image` builds (scripts/image.sh).
pub const IMAGE: &str = "localhost/sidewall:dev";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    root().join("deploy/helm/sidewall")
}

/// helm: $HELM, the one scripts/setup.sh installs, or the PATH's.
pub fn helm() -> PathBuf {
    let candidates = [std::env::var_os("HELM").map(PathBuf::from), Some("/opt/sidewall-tools/helm".into())];
    candidates.into_iter().flatten().find(|p| p.exists()).unwrap_or_else(|| "helm".into())
}

/// The chart rendered by `helm template` with `values` files, as objects.
pub fn render(values: &[&Path]) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "sidewall"]).arg(chart_dir()).args(["--namespace", "sidewall-system"]);
    for v in values {
        cmd.arg("--values").arg(v);
    }
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e} (scripts/setup.sh installs helm)"))?;
    if !out.status.success() {
        return Err(format!("helm template: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut docs = Vec::new();
    for part in text.split("\n---\n") {
        let v: Value = serde_yaml_ng::from_str(part).map_err(|e| format!("helm's output: {e}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The object of `kind` in the rendered chart.
pub fn object<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind)).unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|q| q.iter().map(|x| s(x).to_string()).collect()).unwrap_or_default()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_mapping().map(|m| m.keys().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Fails on a key of `v` this translation does not implement.
fn only(v: &Value, known: &[&str], what: &str) {
    for k in keys(v) {
        assert!(known.contains(&k), "{what}.{k}: the test does not know how to run it under podman");
    }
}

/// The daemon's container of the rendered DaemonSet as a `podman run`.
#[derive(Debug)]
pub struct DaemonPod {
    /// `podman run` options (no name, no image).
    pub options: Vec<String>,
    /// The container's arguments (after the image's entrypoint).
    pub args: Vec<String>,
    /// The readiness and liveness probes' command.
    pub probe: Vec<String>,
    /// The container's config.toml as the ConfigMap holds it.
    pub config: String,
}

/// Translates the rendered chart's DaemonSet. `node` is the node name the downward API gives;
/// `host_paths` maps a hostPath of the chart to a directory of the test's own; `config_dir`
/// receives the ConfigMap's files.
pub fn daemon_pod(
    docs: &[Value],
    node: &str,
    host_paths: &BTreeMap<&str, PathBuf>,
    config_dir: &Path,
) -> DaemonPod {
    let ds = object(docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = pod["containers"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some("sidewalld")))
        .expect("the sidewalld container");
    let mut o: Vec<String> = Vec::new();
    let mut push = |a: &str, b: String| {
        o.push(a.to_string());
        o.push(b);
    };

    // The pod: host PID namespace, its own network namespace (podman: none, loopback only),
    // and the private cgroup namespace every non-privileged container gets on cgroup v2.
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "the chart asks for the host's PID namespace");
    assert!(pod["hostNetwork"].is_null() && pod["hostIPC"].is_null(), "no host network or IPC");
    push("--pid", "host".into());
    push("--network", "none".into());
    push("--cgroupns", "private".into());

    // The container's security context.
    let sc = &c["securityContext"];
    only(
        sc,
        &[
            "privileged",
            "runAsUser",
            "readOnlyRootFilesystem",
            "seccompProfile",
            "appArmorProfile",
            "seLinuxOptions",
            "capabilities",
        ],
        "securityContext",
    );
    assert_eq!(sc["privileged"].as_bool(), Some(false), "not privileged");
    push("--user", sc["runAsUser"].as_u64().expect("runAsUser").to_string());
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        // Kubernetes mounts no tmpfs of its own on a read-only root; podman would.
        push("--read-only", "--read-only-tmpfs=false".into());
    }
    // RuntimeDefault: the runtime's default seccomp profile, podman's own default too.
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    match sc["appArmorProfile"]["type"].as_str() {
        Some("Unconfined") => push("--security-opt", "apparmor=unconfined".into()),
        None => {}
        Some(other) => panic!("appArmorProfile {other}: not translated"),
    }
    if let Some(t) = sc["seLinuxOptions"]["type"].as_str() {
        push("--security-opt", format!("label=type:{t}"));
    }
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "every capability dropped first");
    push("--cap-drop", "all".into());
    let add = strings(&sc["capabilities"]["add"]);
    assert!(!add.is_empty(), "the capabilities eBPF needs");
    push("--cap-add", add.iter().map(|c| format!("CAP_{c}")).collect::<Vec<_>>().join(","));
    if let Some(mem) = c["resources"]["limits"]["memory"].as_str() {
        push("--memory", mem.trim_end_matches('i').to_lowercase());
    }

    // Environment: plain values, and the node name from the downward API.
    let mut env = BTreeMap::new();
    for e in c["env"].as_sequence().into_iter().flatten() {
        let name = s(&e["name"]).to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("spec.nodeName"), "env {name}");
            node.to_string()
        };
        push("--env", format!("{name}={value}"));
        env.insert(name, value);
    }
    // Kubernetes expands $(VAR) in the arguments.
    let args = strings(&c["args"])
        .into_iter()
        .map(|a| env.iter().fold(a, |a, (k, v)| a.replace(&format!("$({k})"), v)))
        .collect();

    // Volumes: hostPath (mapped when asked), configMap (its files written to config_dir).
    let volumes: BTreeMap<&str, &Value> =
        pod["volumes"].as_sequence().into_iter().flatten().map(|v| (s(&v["name"]), v)).collect();
    let config_map = object(docs, "ConfigMap");
    for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
        only(m, &["name", "mountPath", "readOnly"], "volumeMounts[]");
        let v = volumes.get(s(&m["name"])).unwrap_or_else(|| panic!("no volume {:?}", m["name"]));
        let source = if let Some(path) = v["hostPath"]["path"].as_str() {
            let host = host_paths.get(path).cloned().unwrap_or_else(|| PathBuf::from(path));
            if v["hostPath"]["type"].as_str() == Some("DirectoryOrCreate") {
                fs::create_dir_all(&host).unwrap_or_else(|e| panic!("mkdir {}: {e}", host.display()));
            }
            host
        } else if v["configMap"]["name"].as_str() == config_map["metadata"]["name"].as_str() {
            fs::create_dir_all(config_dir).expect("config dir");
            for (name, text) in config_map["data"].as_mapping().expect("ConfigMap data") {
                fs::write(config_dir.join(s(name)), s(text)).expect("write ConfigMap file");
            }
            config_dir.to_path_buf()
        } else {
            panic!("volume {:?}: only hostPath and the chart's ConfigMap are translated", v["name"]);
        };
        let ro = if m["readOnly"].as_bool() == Some(true) { ":ro" } else { "" };
        push("--volume", format!("{}:{}{ro}", source.display(), s(&m["mountPath"])));
    }

    let probe = strings(&c["readinessProbe"]["exec"]["command"]);
    assert_eq!(probe, strings(&c["livenessProbe"]["exec"]["command"]), "one health check");
    assert!(c["lifecycle"].is_null(), "lifecycle hooks: the test does not know how to run them under podman");
    let config = s(&config_map["data"]["config.toml"]).to_string();
    DaemonPod { options: o, args, probe, config }
}
