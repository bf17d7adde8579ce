//! The attack-scenario catalog (`tests/scenarios/<name>/`) and pods played from its real
//! manifests.
//!
//! Each scenario directory holds:
//! - `pod.yaml`: a Kubernetes Pod (app + sidecars), played here with `podman kube play
//!   --network none` and on a cluster with `kubectl apply` (deploy/kind/run-scenarios.sh);
//! - `policy.yaml`: the `SidecarPolicy` (in `mode: monitor`; the runner switches it to enforce);
//! - `scenario.json`: the attack steps and what each must produce in each mode.
//!
//! The manifest names the image `localhost/sidewall-test:scenarios` (busybox + swtool); here it
//! is replaced by the harness's test image, and the pod gets a unique name.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::Value;

use crate::pod;

/// The image name the catalog's manifests use (deploy/kind/run-scenarios.sh builds it).
pub const IMAGE_PLACEHOLDER: &str = "localhost/sidewall-test:scenarios";
/// In a step's command: the pid of a process in the host's namespaces, as seen from the
/// host's pid namespace (the tests use their own pid; on a cluster node it is 1).
pub const HOST_PID_PLACEHOLDER: &str = "{host_pid}";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The directory of the catalog.
pub fn catalog_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// One alert a step must raise.
#[derive(Debug, Clone)]
pub struct ExpectedAlert {
    pub rule: String,
    pub action: String,
    /// The container the alert names as its peer (loopback port owner, namespace owner, ...).
    pub peer: Option<String>,
}

/// What a step must produce in one mode.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    pub alerts: Vec<ExpectedAlert>,
    /// The exit status of the command (137: killed by SIGKILL).
    pub exit: Option<i32>,
    /// The command's trimmed stdout starts with this.
    pub stdout: Option<String>,
    /// The command's stdout contains this.
    pub stdout_contains: Option<String>,
    /// A known limit of the daemon this expectation records honestly.
    pub gap: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub container: String,
    pub command: Vec<String>,
    pub monitor: Expectation,
    pub enforce: Expectation,
}

impl Step {
    pub fn expect(&self, mode: &str) -> &Expectation {
        if mode == "enforce" { &self.enforce } else { &self.monitor }
    }

    /// The command with the host pid filled in.
    pub fn argv(&self, host_pid: u32) -> Vec<String> {
        self.command.iter().map(|a| a.replace(HOST_PID_PLACEHOLDER, &host_pid.to_string())).collect()
    }
}

/// A port a container must be listening on before the attack starts.
#[derive(Debug, Clone)]
pub struct Ready {
    pub container: String,
    pub port: u32,
}

#[derive(Debug, Clone)]
pub struct Startup {
    /// The runtime's own container setup raises alerts: they must appear (so that a fix shows
    /// up as a failure asking to update the catalog), and are counted, not failed.
    pub runtime_setup_alerts: bool,
    /// The pod starts with the policy in monitor mode; enforce mode is switched on once it is
    /// up (enforcing from the start would kill the runtime's setup).
    pub enforce_after_start: bool,
    pub gap: String,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub title: String,
    /// `default` or `strict`: the daemon's sensor set this scenario needs.
    pub sensor_set: String,
    /// The scenario must raise no alert at all (the benign baseline).
    pub benign: bool,
    pub ready: Vec<Ready>,
    pub steps: Vec<Step>,
    pub dir: PathBuf,
}

impl Scenario {
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("pod.yaml")
    }

    pub fn policy(&self) -> String {
        fs::read_to_string(self.dir.join("policy.yaml")).expect("policy.yaml")
    }

    /// The policy's key in the daemon: `default/<metadata.name>`.
    pub fn policy_key(&self) -> String {
        format!("default/{}", self.name)
    }
}

fn text(v: &Value, key: &str, origin: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("{origin}: `{key}` must be a string")).into()
}

fn opt_text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn expectation(v: Option<&Value>, origin: &str) -> Expectation {
    let Some(v) = v else { panic!("{origin}: missing") };
    let alerts = v
        .get("alerts")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{origin}: `alerts` must be a list (empty: none)"))
        .iter()
        .map(|a| ExpectedAlert {
            rule: text(a, "rule", origin),
            action: text(a, "action", origin),
            peer: opt_text(a, "peer"),
        })
        .collect();
    Expectation {
        alerts,
        exit: v.get("exit").and_then(Value::as_i64).map(|e| e as i32),
        stdout: opt_text(v, "stdout"),
        stdout_contains: opt_text(v, "stdout_contains"),
        gap: opt_text(v, "gap"),
    }
}

/// Reads one scenario directory.
pub fn load(dir: &Path) -> Scenario {
    let origin = dir.join("scenario.json").display().to_string();
    let raw = fs::read_to_string(dir.join("scenario.json")).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let v: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let name = text(&v, "name", &origin);
    assert_eq!(
        dir.file_name().and_then(|n| n.to_str()),
        Some(name.as_str()),
        "{origin}: the directory is named after the scenario"
    );
    let ready = v
        .get("ready")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .map(|x| Ready {
                    container: text(x, "container", &origin),
                    port: x.get("port").and_then(Value::as_u64).expect("ready.port") as u32,
                })
                .collect()
        })
        .unwrap_or_default();
    let steps = v
        .get("steps")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{origin}: `steps` must be a list"))
        .iter()
        .map(|s| {
            let sname = text(s, "name", &origin);
            let at = format!("{origin}: step {sname:?}");
            Step {
                container: text(s, "container", &at),
                command: s
                    .get("command")
                    .and_then(Value::as_array)
                    .unwrap_or_else(|| panic!("{at}: `command` must be a list"))
                    .iter()
                    .map(|a| {
                        a.as_str().unwrap_or_else(|| panic!("{at}: command arguments are strings")).into()
                    })
                    .collect(),
                monitor: expectation(s.pointer("/expect/monitor"), &format!("{at}: expect.monitor")),
                enforce: expectation(s.pointer("/expect/enforce"), &format!("{at}: expect.enforce")),
                name: sname,
            }
        })
        .collect();
    Scenario {
        title: text(&v, "title", &origin),
        sensor_set: opt_text(&v, "sensor_set").unwrap_or_else(|| "default".into()),
        benign: v.get("benign").and_then(Value::as_bool).unwrap_or(false),
        ready,
        steps,
        dir: dir.to_path_buf(),
        name,
    }
}

/// Every scenario of the catalog, by name.
pub fn catalog() -> Vec<Scenario> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(catalog_dir())
        .expect("tests/scenarios")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("scenario.json").exists())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| load(d)).collect()
}

/// A pod played from a scenario's manifest. Dropping it removes the pod and the cgroup
/// directories podman leaves behind.
pub struct ManifestPod {
    pub name: String,
    podman: &'static pod::Podman,
    _dir: tempfile::TempDir,
}

/// `manifest` with the test image and the pod named `name`.
pub fn rewrite_manifest(manifest: &str, name: &str, image: &str) -> String {
    let mut out = Vec::new();
    let (mut in_metadata, mut renamed) = (false, false);
    for line in manifest.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_metadata = line.trim_end() == "metadata:";
        }
        if in_metadata && !renamed && line.starts_with("  name:") {
            out.push(format!("  name: {name}"));
            renamed = true;
            continue;
        }
        out.push(line.replace(IMAGE_PLACEHOLDER, image));
    }
    assert!(renamed, "the manifest has no metadata.name");
    out.join("\n") + "\n"
}

impl ManifestPod {
    /// Plays `manifest` as a pod named `<prefix>-<pid>-<n>` with the test image, on
    /// `--network none` (loopback only: nothing a scenario sends can leave the machine).
    /// runc on a loaded 2-core machine sometimes fails to create a container ("error getting
    /// pipe fds"); such a pod is removed and played again, twice at most.
    pub fn play(prefix: &str, manifest: &Path) -> Result<Self, String> {
        let mut errors = Vec::new();
        for _ in 0..3 {
            match Self::try_play(prefix, manifest) {
                Ok(p) => return Ok(p),
                Err(e) => errors.push(e),
            }
        }
        Err(format!("podman kube play {}:\n{}", manifest.display(), errors.join("\n")))
    }

    fn try_play(prefix: &str, manifest: &Path) -> Result<Self, String> {
        let image = pod::image();
        let dir = tempfile::Builder::new().prefix("sidewall-scenario-").tempdir().expect("tmp");
        let podman = pod::shared();
        let name = format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let text = fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let yaml = dir.path().join("pod.yaml");
        fs::write(&yaml, rewrite_manifest(&text, &name, image)).expect("write manifest");
        // Dropped (and removed) on failure.
        let p = Self { name, podman, _dir: dir };
        let out = podman
            .command()
            .args(["kube", "play", "--network", "none"])
            .arg(&yaml)
            .output()
            .expect("podman kube play");
        if out.status.success() {
            Ok(p)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// The podman name of a container of this pod.
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.name)
    }

    /// The `podman exec` command for `args` in `container` (not started).
    pub fn exec_command(&self, container: &str, args: &[String]) -> Command {
        let mut c = self.podman.command();
        c.arg("exec").arg(self.container(container)).args(args);
        c
    }

    /// Runs `args` in `container`; returns its output whatever the exit status.
    pub fn exec(&self, container: &str, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut c = self.exec_command(container, &args);
        c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"))
    }

    pub fn pod_id(&self) -> String {
        let out = self
            .podman
            .command()
            .args(["pod", "inspect", "--format", "{{.Id}}", &self.name])
            .output()
            .expect("podman pod inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for ManifestPod {
    fn drop(&mut self) {
        let pod_id = self.pod_id();
        let _ = self.podman.command().args(["pod", "rm", "-f", "-t", "0", &self.name]).output();
        if pod_id.is_empty() {
            return;
        }
        // podman leaves the pod's empty cgroup directories behind; remove ours, deepest first.
        let parent = crate::cgroup::cgroup2_root().join("libpod_parent").join(&pod_id);
        if let Ok(entries) = fs::read_dir(&parent) {
            for e in entries.flatten() {
                let _ = fs::remove_dir(e.path());
            }
        }
        let _ = fs::remove_dir(&parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_gets_the_pod_name_and_the_image() {
        let m = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: demo\n  labels:\n    name: x\nspec:\n  containers:\n  - name: app\n    image: localhost/sidewall-test:scenarios\n";
        let r = rewrite_manifest(m, "demo-1-2", "localhost/sidewall-test:abc");
        assert!(r.contains("metadata:\n  name: demo-1-2\n  labels:\n    name: x\n"), "{r}");
        assert!(r.contains("  - name: app\n    image: localhost/sidewall-test:abc\n"), "{r}");
    }
}
