//! deploy/: the Kubernetes manifests, the Helm chart and the kind runner, checked without a
//! cluster. deploy/validate.py renders the chart with helm (scripts/setup.sh installs it) for
//! its default values and each values file of its ci/, and validates every object with the PyPI
//! package `kubernetes-validate` (bundled Kubernetes JSON schemas, offline). The daemon's image
//! and the chart's pod spec run for real in the image test of tests/scenarios.rs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// What scripts/setup.sh installs for these checks.
const SETUP_HINT: &str = "scripts/setup.sh installs it: `python3-venv` and `shellcheck` (apt), \
     `/opt/sidewall-venv/bin/pip install kubernetes-validate==1.37.0` (PyPI) into /opt/sidewall-venv, \
     and helm into /opt/sidewall-tools";

/// A Python that has `kubernetes_validate`: $SIDEWALL_PYTHON, the venv scripts/setup.sh makes,
/// or python3 on the PATH.
fn python() -> PathBuf {
    let mut candidates: Vec<PathBuf> =
        std::env::var_os("SIDEWALL_PYTHON").map(PathBuf::from).into_iter().collect();
    candidates.push("/opt/sidewall-venv/bin/python".into());
    candidates.push("python3".into());
    for py in &candidates {
        let ok = Command::new(py)
            .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return py.clone();
        }
    }
    panic!(
        "the Python package `kubernetes-validate` (PyPI) is missing: none of {candidates:?} can import it. \
         {SETUP_HINT}"
    );
}

#[test]
fn manifests_chart_crd_and_catalog_validate_against_the_kubernetes_schemas() {
    let out = Command::new(python())
        .arg(root().join("deploy/validate.py"))
        .output()
        .expect("run deploy/validate.py");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "deploy/validate.py failed:\n{stdout}{stderr}");
    assert!(stdout.starts_with("ok:"), "{stdout}{stderr}");
    println!("{}", stdout.trim());
}

#[test]
fn the_chart_renders_with_other_values() {
    let out = Command::new(python())
        .arg(root().join("deploy/validate.py"))
        .args(["--render-only", "--set", "sensorSet=strict", "--set", "image.tag=v9"])
        .args(["--set", "ociHook.enabled=true", "--set", "ociHook.failMode=closed"])
        .output()
        .expect("run deploy/validate.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("sensor_set = \"strict\""), "{text}");
    assert!(text.contains("image: localhost/sidewall:v9"), "{text}");
    assert!(text.contains("--fail=closed") && text.contains("--host-bin-dir=/opt/sidewall/bin"), "{text}");
}

#[test]
fn the_charts_crd_is_the_generated_one() {
    let generated = root().join("deploy/crds/sidecarpolicies.sidewall.io.yaml");
    let out =
        std::process::Command::new(harness::bin("sidewalld")).arg("--print-crd").output().expect("sidewalld");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        std::fs::read(&generated).expect("generated CRD") == out.stdout,
        "{} is not what `sidewalld --print-crd` prints: generate it again",
        generated.display()
    );
    // The chart installs copies of every CRD of deploy/crds/.
    for entry in std::fs::read_dir(root().join("deploy/crds")).expect("deploy/crds") {
        let crd = entry.expect("entry").path();
        let copy = root().join("deploy/helm/sidewall/files/crds").join(crd.file_name().expect("name"));
        let (a, b) = (std::fs::read(&crd).expect("CRD"), std::fs::read(&copy).unwrap_or_default());
        assert!(
            a == b,
            "{} differs from {}: copy it again (`cp {} {}`)",
            copy.display(),
            crd.display(),
            crd.display(),
            copy.display()
        );
    }
}

/// The daemon's config.toml of the chart rendered with `sets`.
fn rendered_config(sets: &[&str]) -> String {
    let script = "import json, sys; sys.path.insert(0, sys.argv[1]); import validate; \
                  docs = validate.render_chart(sys.argv[2:]); \
                  print(next(d for _, d in docs if d['kind'] == 'ConfigMap')['data']['config.toml'], end='')";
    let out = Command::new(python())
        .args(["-c", script])
        .arg(root().join("deploy"))
        .args(sets)
        .output()
        .expect("render the chart");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn load_config(text: &str) -> sidewalld::config::Config {
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), text).expect("write");
    sidewalld::config::Config::load(Some(file.path()), &Default::default())
        .unwrap_or_else(|e| panic!("the chart's config.toml does not load: {e}\n{text}"))
}

#[test]
fn the_chart_serves_the_socket_by_default_and_mutual_tls_when_asked() {
    use sidewalld::config::{Listener, api::Role};
    let default = load_config(&rendered_config(&[]));
    assert!(matches!(default.listeners()[..], [Listener::Unix { .. }]), "{:?}", default.listeners());
    assert_eq!(default.access().unix_role(0, 0), Some(Role::Admin));

    let sets = [
        "api.tls.enabled=true",
        "api.tls.certManager.enabled=true",
        "api.readOnlyNames=[\"spiffe://cluster.local/ns/siem/sa/collector\"]",
    ];
    let tls = load_config(&rendered_config(&sets));
    let listeners = tls.listeners();
    assert!(matches!(listeners[0], Listener::Unix { .. }), "the socket stays: {listeners:?}");
    let Listener::Tls { addr, files } = &listeners[1] else { panic!("a mutual TLS listener: {listeners:?}") };
    assert_eq!(addr.port(), 50051);
    assert_eq!(files.client_ca, Path::new("/etc/sidewall-tls/ca.crt"));
    let names = vec!["spiffe://cluster.local/ns/siem/sa/collector".to_string()];
    assert_eq!(tls.access().tls_role(&names).map(|(r, _)| r), Some(Role::ReadOnly));

    // Everything it renders validates, the cert-manager Certificate included.
    let out = Command::new(python())
        .arg(root().join("deploy/validate.py"))
        .args(sets.iter().flat_map(|s| ["--set", s]))
        .output()
        .expect("run deploy/validate.py");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.starts_with("ok:"), "{stdout}{stderr}");
    let out = Command::new(python())
        .arg(root().join("deploy/validate.py"))
        .args(["--render-only"])
        .args(sets.iter().flat_map(|s| ["--set", s]))
        .output()
        .expect("render");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["kind: Certificate", "kind: Service", "clusterIP: None", "secretName: sidewall-api-tls"] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
}

/// Helm renders the chart's values into the pod spec an operator expects.
#[test]
fn the_chart_takes_the_values_operators_set() {
    let out = Command::new(python())
        .arg(root().join("deploy/validate.py"))
        .args(["--render-only", "-f"])
        .arg(root().join("deploy/helm/sidewall/ci/operator-values.yaml"))
        .output()
        .expect("render");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "priorityClassName: system-node-critical",
        "sidewall.io/enabled: 'true'",
        "example.com/owner: security",
        "team: security",
        "maxUnavailable: 10%",
        "- name: registry-credentials",
        "- --metrics-address=127.0.0.1:9090",
        "name: RUST_BACKTRACE",
        "mountPath: /etc/sidewall-policies",
        "policy_dir = \"/etc/sidewall-policies\"",
        "alert_rate = 50",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    // enforcement.keepOnUninstall: the daemons never remove their pins; crds.install false.
    for absent in ["uninstall_daemonset", "kind: Role\n", "kind: CustomResourceDefinition"] {
        assert!(!text.contains(absent), "{absent}:\n{text}");
    }

    // The defaults: no priority class (GKE's quota refuses system-node-critical outside
    // kube-system), the node's confinement lifted as Cilium and Tetragon do, probes that fail
    // on a missing sensor, a config checksum that rolls the pods, enforcement that leaves with
    // an uninstall (the daemon may read its DaemonSet), the CRDs kept.
    let out = Command::new(python())
        .arg(root().join("deploy/validate.py"))
        .arg("--render-only")
        .output()
        .expect("render");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("priorityClassName"), "{text}");
    for want in [
        "type: Unconfined",
        "type: spc_t",
        "- --healthy",
        "checksum/config:",
        "uninstall_daemonset = \"sidewall-system/sidewall\"",
        "resources:\n  - daemonsets\n  resourceNames:\n  - sidewall",
        "helm.sh/resource-policy: keep",
        "name: clustersidecarpolicies.sidewall.io",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
}

/// A changed configuration changes the pods' checksum annotation, so the DaemonSet rolls.
#[test]
fn a_config_change_rolls_the_pods() {
    let checksum = |sets: &[&str]| {
        let docs = harness_render(sets);
        let ds = docs.iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).expect("DaemonSet");
        ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum")
            .to_string()
    };
    assert_eq!(checksum(&[]), checksum(&[]));
    assert_ne!(checksum(&[]), checksum(&["logLevel: debug"]));
    assert_ne!(checksum(&[]), checksum(&["config: {alert_rate: 10}"]));
}

/// Values that cannot work are refused by name: the export file on the read-only root.
#[test]
fn the_chart_refuses_an_export_file_outside_run_sidewall() {
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), "export: {file: /var/log/sidewall/events.json}\n").expect("write");
    let e = harness::chart::render(&[file.path()]).expect_err("refused");
    assert!(e.contains("export.file: \"/var/log/sidewall/events.json\" is not under /run/sidewall/"), "{e}");
}

/// The chart rendered by helm with values given as YAML lines.
fn harness_render(lines: &[&str]) -> Vec<serde_yaml_ng::Value> {
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), lines.join("\n") + "\n").expect("write");
    harness::chart::render(&[file.path()]).unwrap_or_else(|e| panic!("{e}"))
}

/// The Containerfile takes the binaries `make release` built, on the base scripts/image.sh
/// makes (the image test of tests/scenarios.rs runs the image itself).
#[test]
fn the_containerfile_copies_the_three_binaries() {
    let file = std::fs::read_to_string(root().join("deploy/Containerfile")).expect("Containerfile");
    let copy = file.lines().find(|l| l.starts_with("COPY ")).expect("a COPY");
    for bin in ["sidewalld", "sidewall", "sidewall-oci-hook"] {
        assert!(copy.contains(&format!("bin/{bin} ")), "{bin} is copied: {copy}");
    }
    assert!(!file.lines().any(|l| l.starts_with("RUN ")), "no build step inside the image");
    let script = std::fs::read_to_string(root().join("scripts/image.sh")).expect("image.sh");
    assert!(script.contains("mmdebstrap") && script.contains("podman import"), "the base");
    let test_image =
        std::fs::read_to_string(root().join("deploy/kind/test-image.Dockerfile")).expect("test image");
    assert!(test_image.contains("COPY tests/tools/swtool.c") && root().join("tests/tools/swtool.c").exists());
}
