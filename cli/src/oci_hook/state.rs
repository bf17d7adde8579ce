//! What the runtime hands an OCI hook: the container's state on stdin (id, pid of its init
//! process, bundle, annotations), and the bundle's `config.json`; and where the container's
//! cgroup is.

use std::{collections::HashMap, fs, path::Path};

use serde::Deserialize;

/// The OCI state, as the runtime-spec defines it (`state.md`); unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct State {
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub bundle: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct Config {
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    linux: Option<Linux>,
}

#[derive(Deserialize, Default)]
struct Linux {
    #[serde(default, rename = "cgroupsPath")]
    cgroups_path: String,
}

/// The largest state a runtime sends (it holds the annotations): far below this.
const MAX_STATE: usize = 1 << 20;

/// Parses the state read from stdin; errors name what is wrong.
pub fn parse(bytes: &[u8]) -> Result<State, String> {
    if bytes.len() > MAX_STATE {
        return Err(format!("the OCI state on stdin is {} bytes, more than {MAX_STATE}", bytes.len()));
    }
    let s: State = serde_json::from_slice(bytes).map_err(|e| format!("the OCI state on stdin: {e}"))?;
    if s.id.is_empty() {
        return Err("the OCI state on stdin: \"id\" is empty".into());
    }
    Ok(s)
}

/// The container's cgroup v2 path and its annotations. The path is read from the init
/// process's `/proc/PID/cgroup` (its "0::" line: what the kernel says, whatever the cgroup
/// manager); the bundle's `linux.cgroupsPath` is the fallback when it is a path (cgroupfs
/// manager). Annotations come from the state, else from the bundle's config.json.
pub fn container(state: &State, proc_root: &Path) -> Result<(String, HashMap<String, String>), String> {
    let config = read_config(&state.bundle);
    let from_proc = (state.pid != 0)
        .then(|| fs::read_to_string(proc_root.join(state.pid.to_string()).join("cgroup")).ok())
        .flatten()
        .and_then(|text| unified_path(&text));
    let from_config = config
        .as_ref()
        .ok()
        .and_then(|c| c.linux.as_ref())
        .map(|l| l.cgroups_path.clone())
        .filter(|p| p.starts_with('/'));
    let path = from_proc.or(from_config).ok_or_else(|| {
        let config_err = config.as_ref().err().map(|e| format!("; {e}")).unwrap_or_default();
        format!(
            "container {}: no cgroup v2 path: neither /proc/{}/cgroup has a \"0::\" line nor the bundle's linux.cgroupsPath is a path{config_err}",
            state.id, state.pid
        )
    })?;
    let annotations = if state.annotations.is_empty() {
        config.map(|c| c.annotations).unwrap_or_default()
    } else {
        state.annotations.clone()
    };
    Ok((path, annotations))
}

fn read_config(bundle: &str) -> Result<Config, String> {
    if bundle.is_empty() {
        return Err("the state names no bundle".into());
    }
    let path = Path::new(bundle).join("config.json");
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The cgroup v2 path in a `/proc/PID/cgroup` text (the "0::" line).
pub fn unified_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
        .filter(|p| p.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What podman 4.3 (`kube play`, runc) passed a createRuntime hook on this project's machines.
    const PODMAN_STATE: &str = r#"{"ociVersion":"1.0.2-dev","id":"5b99c114f6a424e275d87f823532cb0e0c5bc410a48050d57e045c4d861246c5","status":"creating","pid":1447,"bundle":"/var/lib/containers/storage/overlay-containers/5b99c114f6a424e275d87f823532cb0e0c5bc410a48050d57e045c4d861246c5/userdata","annotations":{"io.container.manager":"libpod","io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.cri-o.SandboxID":"fb9a95b4c79578ded8a2bd72637849fd67f45d91b8b268b0872ae7b1f6c15bfd","team":"x"}}"#;

    #[test]
    fn podman_state_parses() {
        let s = parse(PODMAN_STATE.as_bytes()).expect("valid");
        assert_eq!((s.status.as_str(), s.pid), ("creating", 1447));
        assert_eq!(s.annotations.get("team").map(String::as_str), Some("x"));
    }

    #[test]
    fn bad_states_say_what_is_wrong() {
        let e = parse(b"{\"pid\": 3}").expect_err("no id");
        assert!(e.contains("missing field `id`"), "{e}");
        let e = parse(b"{\"id\": \"\"}").expect_err("empty id");
        assert!(e.contains("\"id\" is empty"), "{e}");
        let e = parse(b"not json").expect_err("garbage");
        assert!(e.starts_with("the OCI state on stdin: "), "{e}");
    }

    #[test]
    fn the_cgroup_path_comes_from_proc_then_from_the_bundle() {
        let dir = tempfile::tempdir().expect("tmp");
        let proc_root = dir.path().join("proc");
        fs::create_dir_all(proc_root.join("1447")).expect("proc");
        fs::write(
            proc_root.join("1447/cgroup"),
            "9:name=systemd:/libpod_parent/p/libpod-c\n0::/libpod_parent/p/libpod-c\n",
        )
        .expect("cgroup");
        let bundle = dir.path().join("bundle");
        fs::create_dir_all(&bundle).expect("bundle");
        fs::write(
            bundle.join("config.json"),
            r#"{"annotations":{"io.kubernetes.pod.name":"web"},"linux":{"cgroupsPath":"/from/config"}}"#,
        )
        .expect("config");
        let mut state = State {
            id: "c".into(),
            status: "creating".into(),
            pid: 1447,
            bundle: bundle.display().to_string(),
            annotations: HashMap::new(),
        };
        let (path, annotations) = container(&state, &proc_root).expect("found");
        assert_eq!(path, "/libpod_parent/p/libpod-c");
        assert_eq!(annotations.get("io.kubernetes.pod.name").map(String::as_str), Some("web"));
        state.pid = 99;
        assert_eq!(container(&state, &proc_root).expect("found").0, "/from/config");
        fs::write(bundle.join("config.json"), r#"{"linux":{"cgroupsPath":"system.slice:crio:c"}}"#)
            .expect("config");
        let e = container(&state, &proc_root).expect_err("a systemd cgroupsPath is no path");
        assert!(e.contains("container c: no cgroup v2 path"), "{e}");
    }
}
