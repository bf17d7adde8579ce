//! Names of podman containers and pods, read from podman's own on-disk state (the storage
//! `containers.json` and each container's OCI `config.json`), which podman writes before the
//! container starts. No podman process is spawned and no API service is needed.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::roles;

/// What podman knows of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanContainer {
    /// The container's name inside its pod ("app" for "web-app" in pod "web").
    pub name: String,
    pub image: String,
    /// The pod's name, when the container belongs to a pod.
    pub pod_name: Option<String>,
    pub role: &'static str,
    pub annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct StorageContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    metadata: String,
}

#[derive(Deserialize, Default)]
struct StorageMetadata {
    #[serde(rename = "image-name", default)]
    image_name: String,
}

#[derive(Deserialize, Default)]
struct OciConfig {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The infra (pause) container's id, which podman records on the pod's other containers.
const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri-o.SandboxID";
/// Set by `podman kube play` on init containers ("always" or "once").
const INIT_ANNOTATION: &str = "io.podman.annotations.init.container.type";

pub struct PodmanStore {
    root: PathBuf,
}

impl PodmanStore {
    /// `root` is podman's graph root, normally /var/lib/containers/storage.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn lookup(&self, id: &str) -> Option<PodmanContainer> {
        let all = self.storage_containers()?;
        let me = all.iter().find(|c| c.id == id)?;
        let full_name = me.names.first().cloned().unwrap_or_default();
        let meta: StorageMetadata = serde_json::from_str(&me.metadata).unwrap_or_default();
        let config = self.oci_config(id).unwrap_or_default();
        let infra = full_name.ends_with("-infra") && !config.annotations.contains_key(SANDBOX_ANNOTATION);
        let pod_name = if infra {
            config.hostname.clone()
        } else {
            let sandbox = config.annotations.get(SANDBOX_ANNOTATION);
            sandbox.and_then(|s| self.oci_config(s)).and_then(|c| c.hostname)
        };
        let name = match &pod_name {
            Some(pod) => full_name.strip_prefix(&format!("{pod}-")).unwrap_or(&full_name).to_string(),
            None => full_name,
        };
        let role = if infra {
            "infra"
        } else if config.annotations.contains_key(INIT_ANNOTATION) {
            "init"
        } else {
            let listed = config.annotations.get(roles::SIDECARS_ANNOTATION).map(String::as_str);
            roles::app_or_sidecar(listed, &name, &meta.image_name)
        };
        Some(PodmanContainer {
            name,
            image: meta.image_name,
            pod_name,
            role,
            annotations: config.annotations,
        })
    }

    fn storage_containers(&self) -> Option<Vec<StorageContainer>> {
        let path = self.root.join("overlay-containers/containers.json");
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    fn oci_config(&self, id: &str) -> Option<OciConfig> {
        let path: PathBuf = [Path::new(&self.root), Path::new("overlay-containers"), Path::new(id)]
            .iter()
            .collect::<PathBuf>()
            .join("userdata/config.json");
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFRA: &str = "3a7b05795ccda52ab13b7a47400c4d00ec72f2e32cce4c44adcc4e7731b7126e";
    const APP: &str = "b9354398db21882ac22e50751331b56f955fcc9f29420cd140085a6bbb551ed0";
    const PROXY: &str = "6b1bdbdf07b4b68755fb47f5b4ebf95000031bac79ce4d35a58356885923bf4e";

    /// The layout podman 4.3 writes for `podman kube play` of a pod "web" with containers
    /// "app" and "proxy" and the annotation `sidewall.io/sidecars: proxy` (trimmed copies).
    fn store() -> (tempfile::TempDir, PodmanStore) {
        let dir = tempfile::tempdir().expect("tmp");
        let oc = dir.path().join("overlay-containers");
        let meta = |name: &str, image: &str| {
            serde_json::json!({"image-name": image, "name": name, "created-at": 1795773005}).to_string()
        };
        let containers = serde_json::json!([
            {"id": INFRA, "names": ["ba7892e865a2-infra"], "metadata": meta("ba7892e865a2-infra", "localhost/podman-pause:4.3.1-0")},
            {"id": APP, "names": ["web-app"], "metadata": meta("web-app", "localhost/busybox:local")},
            {"id": PROXY, "names": ["web-proxy"], "metadata": meta("web-proxy", "localhost/busybox:local")},
        ]);
        fs::create_dir_all(&oc).expect("mkdir");
        fs::write(oc.join("containers.json"), containers.to_string()).expect("write");
        let annotations = serde_json::json!({
            "io.container.manager": "libpod",
            "io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.cri-o.SandboxID": INFRA,
            "sidewall.io/sidecars": "proxy",
        });
        let write_config = |id: &str, cfg: serde_json::Value| {
            let d = oc.join(id).join("userdata");
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("config.json"), cfg.to_string()).expect("write");
        };
        write_config(
            INFRA,
            serde_json::json!({"hostname": "web", "annotations": {"io.container.manager": "libpod"}}),
        );
        write_config(APP, serde_json::json!({"annotations": annotations}));
        write_config(PROXY, serde_json::json!({"annotations": annotations}));
        let store = PodmanStore::new(dir.path());
        (dir, store)
    }

    #[test]
    fn kube_play_pod_names_and_roles() {
        let (_dir, s) = store();
        let app = s.lookup(APP).expect("app");
        assert_eq!((app.name.as_str(), app.pod_name.as_deref(), app.role), ("app", Some("web"), "app"));
        assert_eq!(app.image, "localhost/busybox:local");
        let proxy = s.lookup(PROXY).expect("proxy");
        assert_eq!((proxy.name.as_str(), proxy.role), ("proxy", "sidecar"));
        let infra = s.lookup(INFRA).expect("infra");
        assert_eq!((infra.pod_name.as_deref(), infra.role), (Some("web"), "infra"));
        assert_eq!(s.lookup(&"0".repeat(64)), None);
    }
}
