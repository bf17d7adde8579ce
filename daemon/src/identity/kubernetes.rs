//! Workload identity from the Kubernetes API: pod names, labels and annotations, and each
//! container's name, image and role, for the pods of this node.
//!
//! The cgroup path gives a pod UID and a container id; [`KubeIndex`] maps those to what the API
//! knows. [`watch`] keeps the index current with a list+watch of the node's pods. The index is
//! read from the event pipeline, so lookups take a read lock only and callers can cache by
//! [`KubeIndex::generation`].

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    pin::pin,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use sidewall_proto::v1 as pb;
use tokio_stream::StreamExt as _;
use tracing::{error, info, warn};

pub const ROLE_APP: &str = "app";
pub const ROLE_SIDECAR: &str = "sidecar";
pub const ROLE_INIT: &str = "init";

/// Pod annotation listing the pod's sidecar containers by name, comma-separated.
pub use super::roles::{SIDECARS_ANNOTATION, is_sidecar_image};

/// A full copy of the object as last applied by kubectl: large, and no identity in it, so it is
/// not copied into every event.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the API says about the pods of this node. Cheap to query from the event pipeline.
#[derive(Default)]
pub struct KubeIndex {
    inner: RwLock<Inner>,
    generation: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// By pod UID.
    pods: HashMap<String, PodEntry>,
    /// Container id -> pod UID.
    containers: HashMap<String, String>,
}

/// One pod as the event pipeline wants it.
#[derive(Debug, Clone, PartialEq)]
struct PodEntry {
    pod: pb::Pod,
    /// Containers that have (or had) a runtime id.
    containers: Vec<pb::Container>,
}

impl KubeIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bumped on every change, so callers can cache lookups and re-resolve when it moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn pod_by_uid(&self, uid: &str) -> Option<pb::Pod> {
        self.read().pods.get(uid).map(|e| e.pod.clone())
    }

    /// Pod and container (name, image, role, id) of a container id (64 hex, no runtime prefix).
    pub fn container_by_id(&self, id: &str) -> Option<(pb::Pod, pb::Container)> {
        let inner = self.read();
        let entry = inner.pods.get(inner.containers.get(id)?)?;
        let container = entry.containers.iter().find(|c| c.id == id)?;
        Some((entry.pod.clone(), container.clone()))
    }

    /// Number of pods known (for status).
    pub fn pod_count(&self) -> usize {
        self.read().pods.len()
    }

    /// Apply one pod (add/modify) or delete it. Public for tests.
    pub fn apply(&self, pod: &Pod) {
        let Some(uid) = uid_of(pod) else {
            warn!(pod = ?pod.metadata.name, "pod without metadata.uid ignored");
            return;
        };
        let entry = entry_of(pod, uid);
        let mut inner = self.write();
        // Resyncs and status-only updates often change nothing we keep: leave callers' caches valid.
        if inner.pods.get(uid) == Some(&entry) {
            return;
        }
        inner.remove(uid);
        for c in &entry.containers {
            inner.containers.insert(c.id.clone(), uid.to_owned());
        }
        inner.pods.insert(uid.to_owned(), entry);
        self.bump();
    }

    pub fn delete(&self, pod: &Pod) {
        let Some(uid) = uid_of(pod) else { return };
        if self.write().remove(uid) {
            self.bump();
        }
    }

    /// Drops every pod whose UID is not in `keep` (the pods of a complete relist).
    fn retain(&self, keep: &HashSet<String>) {
        let mut inner = self.write();
        let gone: Vec<String> = inner.pods.keys().filter(|uid| !keep.contains(*uid)).cloned().collect();
        for uid in &gone {
            inner.remove(uid);
        }
        drop(inner);
        if !gone.is_empty() {
            self.bump();
        }
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    // A panic elsewhere while holding the lock leaves consistent maps (every update is a few
    // inserts and removes), so a poisoned lock is still usable.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Removes a pod and its container ids; true if it was known.
    fn remove(&mut self, uid: &str) -> bool {
        let Some(old) = self.pods.remove(uid) else {
            return false;
        };
        for c in &old.containers {
            if self.containers.get(&c.id).is_some_and(|owner| owner == uid) {
                self.containers.remove(&c.id);
            }
        }
        true
    }
}

fn uid_of(pod: &Pod) -> Option<&str> {
    pod.metadata.uid.as_deref().filter(|u| !u.is_empty())
}

fn entry_of(pod: &Pod, uid: &str) -> PodEntry {
    let meta = &pod.metadata;
    let annotations = meta.annotations.iter().flatten();
    let pb_pod = pb::Pod {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: uid.to_owned(),
        labels: meta.labels.clone().unwrap_or_default().into_iter().collect(),
        annotations: annotations
            .filter(|(k, _)| *k != LAST_APPLIED)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    PodEntry { pod: pb_pod, containers: containers_of(pod) }
}

/// Every container of the pod with a runtime id: regular, init and ephemeral, current and
/// previous instance (so a restarted container's last processes still resolve).
fn containers_of(pod: &Pod) -> Vec<pb::Container> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let qos_class = status.qos_class.as_deref().unwrap_or_default().to_ascii_lowercase();
    let statuses =
        [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses];
    let mut out = Vec::new();
    for s in statuses.into_iter().flatten().flatten() {
        for raw_id in container_ids(s) {
            let Some((runtime, id)) = split_container_id(raw_id) else {
                continue;
            };
            if out.iter().any(|c: &pb::Container| c.id == id) {
                continue;
            }
            out.push(pb::Container {
                id: id.to_owned(),
                name: s.name.clone(),
                image: spec_image(pod, &s.name).unwrap_or(&s.image).to_owned(),
                role: role_of(pod, &s.name).into(),
                runtime: runtime.into(),
                qos_class: qos_class.clone(),
                cgroup_path: String::new(),
            });
        }
    }
    out
}

/// The current and the last terminated container id of a status, as the API writes them.
fn container_ids(s: &ContainerStatus) -> impl Iterator<Item = &str> {
    let last =
        s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).and_then(|t| t.container_id.as_deref());
    s.container_id.as_deref().into_iter().chain(last)
}

/// `containerd://<id>` -> ("containerd", "<id>"). The runtime is one of the names the cgroup
/// path parser uses, or "" for a scheme it does not know. None when there is no id yet.
pub fn split_container_id(raw: &str) -> Option<(&'static str, &str)> {
    let (scheme, id) = raw.split_once("://").unwrap_or(("", raw));
    if id.is_empty() {
        return None;
    }
    let runtime = match scheme {
        "containerd" => "containerd",
        "cri-o" => "cri-o",
        "docker" => "docker",
        "podman" => "podman",
        _ => "",
    };
    Some((runtime, id))
}

/// The image the pod spec gives a container (regular, init or ephemeral).
fn spec_image<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
    let spec = pod.spec.as_ref()?;
    let regular = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    let image = match regular.into_iter().find(|c| c.name == name) {
        Some(c) => c.image.as_deref(),
        None => spec.ephemeral_containers.iter().flatten().find(|c| c.name == name)?.image.as_deref(),
    };
    image.filter(|i| !i.is_empty())
}

/// The role of a container: "init" (initContainers without restartPolicy: Always), "sidecar"
/// (native sidecar = initContainer with restartPolicy: Always; or named in the pod annotation
/// `sidewall.io/sidecars: a,b`; or a well-known sidecar image next to an app container), else "app".
pub fn role_of(pod: &Pod, container_name: &str) -> &'static str {
    let Some(spec) = &pod.spec else { return ROLE_APP };
    if let Some(init) = spec.init_containers.iter().flatten().find(|c| c.name == container_name) {
        return if init.restart_policy.as_deref() == Some("Always") { ROLE_SIDECAR } else { ROLE_INIT };
    }
    if annotated_sidecars(pod).any(|n| n == container_name) {
        return ROLE_SIDECAR;
    }
    let Some(container) = spec.containers.iter().find(|c| c.name == container_name) else {
        return ROLE_APP; // ephemeral (debug) containers
    };
    // A well-known image alone is not enough: a pod whose only container is Envoy or Fluent Bit
    // (a gateway, a log DaemonSet) runs it as its app.
    let beside_app = spec.containers.iter().any(|c| c.name != container_name && !has_sidecar_image(c));
    if has_sidecar_image(container) && beside_app { ROLE_SIDECAR } else { ROLE_APP }
}

fn annotated_sidecars(pod: &Pod) -> impl Iterator<Item = &str> {
    let list = pod.metadata.annotations.as_ref().and_then(|a| a.get(SIDECARS_ANNOTATION));
    list.into_iter().flat_map(|l| l.split(',')).map(str::trim).filter(|n| !n.is_empty())
}

fn has_sidecar_image(c: &Container) -> bool {
    c.image.as_deref().is_some_and(is_sidecar_image)
}

/// Watches the pods of `node_name` (field selector spec.nodeName=<node>) forever, keeping
/// `index` current. Reconnects and resyncs after API errors without dropping what it knows:
/// on a relist, old state stays until the new list is complete, then pods absent from it are
/// removed.
pub async fn watch(client: Client, node_name: String, index: Arc<KubeIndex>) {
    // `spec.nodeName=` would select the cluster's unscheduled pods instead.
    if node_name.is_empty() {
        error!("no node name: not watching Kubernetes pods");
        return;
    }
    let api: Api<Pod> = Api::all(client);
    let mut config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node_name}"))
        // Every node daemon relists after an apiserver restart: serve it from the apiserver's
        // watch cache (resourceVersion=0), like the kubelet does, not from etcd. One node's pods
        // fit in one response, and kube only sends resourceVersion=0 for an unpaged list.
        .any_semantic();
    config.page_size = None;
    let mut events = pin!(watcher(api, config));
    let mut relist = Relist::default();
    let mut backoff = Backoff::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if matches!(
                    event,
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)
                ) {
                    backoff = Backoff::default();
                }
                relist.handle(&index, event);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(node = %node_name, error = %e, ?delay, "Kubernetes pod watch failed, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
    // The watcher retries forever; it only ends if kube changes that.
    warn!(node = %node_name, "Kubernetes pod watch ended");
}

/// Delays between failed attempts, so that a missing CRD or a forbidding RBAC does not turn
/// into a request loop against the apiserver: 0.8 s doubling up to 30 s, plus up to as much
/// again at random (daemons started together do not call in step); from the start again once
/// a list completes (or an object arrives). Not the watcher's own backoff: the `Init` event it yields before every
/// attempt resets that one.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Duration::from_millis(800) }
    }
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(30);

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        // The clock's nanoseconds are random enough to spread daemons apart.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        base + base.mul_f64(f64::from(nanos.subsec_nanos() % 1000) / 1000.0)
    }
}

/// The pods seen since the current (re)list began.
#[derive(Default)]
struct Relist {
    seen: Option<HashSet<String>>,
}

impl Relist {
    fn handle(&mut self, index: &KubeIndex, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.seen = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                // Applied at once: fresher data, and nothing known is dropped before InitDone.
                index.apply(&pod);
                if let (Some(seen), Some(uid)) = (&mut self.seen, uid_of(&pod)) {
                    seen.insert(uid.to_owned());
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.seen.take() {
                    index.retain(&seen);
                }
                info!(pods = index.pod_count(), "Kubernetes pods listed");
            }
            watcher::Event::Apply(pod) => index.apply(&pod),
            watcher::Event::Delete(pod) => index.delete(&pod),
        }
    }
}

/// Client from a kubeconfig file path, or in-cluster config when None.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    // kube's rustls config uses the process default provider; name it rather than rely on
    // exactly one provider being compiled in. Err means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => Config::incluster().context("loading the in-cluster Kubernetes config")?,
    };
    Client::try_from(config).context("creating the Kubernetes client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_jitters_upwards() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = (Duration::from_millis(800) * 2u32.pow(i as u32)).min(Backoff::MAX);
            assert!(*d >= base && *d < base * 2, "attempt {i}: {d:?} not in [{base:?}, {:?})", base * 2);
        }
    }

    /// A pod from the API's JSON, as the watcher would deliver it.
    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("valid pod JSON")
    }

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn web_pod() -> Pod {
        pod(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-6d4cf56db6-x7k2p",
                "namespace": "shop",
                "uid": "0b5e4c1a-4f1e-4d36-9f41-1c2a3b4c5d6e",
                "resourceVersion": "1001",
                "labels": {"app": "web"},
                "annotations": {
                    "sidewall.io/sidecars": "log-shipper, metrics",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\":true}"
                }
            },
            "spec": {
                "initContainers": [
                    {"name": "migrate", "image": "registry.example.com/shop/migrate:1.2"},
                    {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0", "restartPolicy": "Always"}
                ],
                "containers": [
                    {"name": "web", "image": "registry.example.com/shop/web:2.0"},
                    {"name": "log-shipper", "image": "busybox:1.36"},
                    {"name": "envoy", "image": "envoyproxy/envoy:v1.31.0"}
                ],
                "ephemeralContainers": [{"name": "debugger", "image": "busybox:1.36"}]
            },
            "status": {
                "phase": "Running",
                "qosClass": "Burstable",
                "initContainerStatuses": [
                    {"name": "migrate", "image": "registry.example.com/shop/migrate:1.2", "imageID": "",
                     "containerID": format!("containerd://{}", id('1')), "ready": false, "restartCount": 0},
                    {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0", "imageID": "",
                     "containerID": format!("containerd://{}", id('2')), "ready": true, "restartCount": 0}
                ],
                "containerStatuses": [
                    {"name": "web", "image": "registry.example.com/shop/web:2.0", "imageID": "",
                     "containerID": format!("containerd://{}", id('3')), "ready": true, "restartCount": 1,
                     "lastState": {"terminated": {"exitCode": 137, "containerID": format!("containerd://{}", id('4'))}}},
                    {"name": "log-shipper", "image": "docker.io/library/busybox:1.36", "imageID": "",
                     "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}},
                    {"name": "envoy", "image": "docker.io/envoyproxy/envoy:v1.31.0", "imageID": "",
                     "containerID": format!("containerd://{}", id('5')), "ready": true, "restartCount": 0}
                ],
                "ephemeralContainerStatuses": [
                    {"name": "debugger", "image": "docker.io/library/busybox:1.36", "imageID": "",
                     "containerID": format!("cri-o://{}", id('6')), "ready": false, "restartCount": 0}
                ]
            }
        }))
    }

    #[test]
    fn roles() {
        let p = web_pod();
        assert_eq!(role_of(&p, "migrate"), "init");
        assert_eq!(role_of(&p, "istio-proxy"), "sidecar", "native sidecar");
        assert_eq!(role_of(&p, "log-shipper"), "sidecar", "annotation");
        assert_eq!(role_of(&p, "envoy"), "sidecar", "well-known image beside an app");
        assert_eq!(role_of(&p, "web"), "app");
        assert_eq!(role_of(&p, "debugger"), "app", "ephemeral");
        assert_eq!(role_of(&p, "no-such-container"), "app");
        assert_eq!(role_of(&Pod::default(), "web"), "app", "no spec");
    }

    #[test]
    fn init_container_with_sidecar_image_is_init() {
        // istio-init runs the proxyv2 image but is a plain init container.
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {
                "initContainers": [{"name": "istio-init", "image": "istio/proxyv2:1.24.0"}],
                "containers": [{"name": "app", "image": "nginx"}]
            }
        }));
        assert_eq!(role_of(&p, "istio-init"), "init");
    }

    #[test]
    fn lone_well_known_image_is_the_app() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "fluent-bit-8x2kq", "uid": "u"},
            "spec": {"containers": [{"name": "fluent-bit", "image": "cr.fluentbit.io/fluent/fluent-bit:3.1"}]}
        }));
        assert_eq!(role_of(&p, "fluent-bit"), "app");
        let p = pod(serde_json::json!({
            "metadata": {"name": "datadog-abcde", "uid": "u"},
            "spec": {"containers": [
                {"name": "agent", "image": "gcr.io/datadoghq/agent:7"},
                {"name": "trace-agent", "image": "gcr.io/datadoghq/agent:7"}
            ]}
        }));
        assert_eq!(role_of(&p, "agent"), "app", "every container is a well-known image");
    }

    #[test]
    fn sidecar_images() {
        for image in [
            "istio/proxyv2:1.24.0",
            "docker.io/istio/proxyv2@sha256:0123abcd",
            "gcr.io/istio-release/proxyv2:1.24.0-distroless@sha256:0123abcd",
            "my-registry:5000/mirror/istio-proxy",
            "cr.l5d.io/linkerd/proxy:edge-24.11.1",
            "ghcr.io/linkerd/proxy:stable-2.14.10",
            "buoyantio/linkerd2-proxy:v2",
            "hashicorp/vault:1.18",
            "envoyproxy/envoy:v1.31.0",
            "public.ecr.aws/appmesh/aws-appmesh-envoy:v1.29",
            "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.14.0",
            "gcr.io/cloudsql-docker/gce-proxy:1.33",
            "cr.fluentbit.io/fluent/fluent-bit:3.1",
            "fluent/fluentd:v1.17",
            "otel/opentelemetry-collector-contrib:0.110.0",
            "gcr.io/datadoghq/agent:7",
            "datadog/agent:latest",
            "hashicorp/consul-dataplane:1.6",
            "localhost:5000/fluentd",
        ] {
            assert!(is_sidecar_image(image), "{image}");
        }
        for image in [
            "nginx:1.27",
            "registry.example.com/proxy:1",
            "example.com/agent:1",
            "example.com/notdatadog/agent:1",
            "example.com/vault-ui:1",
            "envoy-registry:5000/app:1",
        ] {
            assert!(!is_sidecar_image(image), "{image}");
        }
    }

    #[test]
    fn container_id_schemes() {
        let hex = id('a');
        assert_eq!(split_container_id(&format!("containerd://{hex}")), Some(("containerd", hex.as_str())));
        assert_eq!(split_container_id(&format!("cri-o://{hex}")), Some(("cri-o", hex.as_str())));
        assert_eq!(split_container_id(&format!("docker://{hex}")), Some(("docker", hex.as_str())));
        assert_eq!(split_container_id(&format!("other://{hex}")), Some(("", hex.as_str())));
        assert_eq!(split_container_id(&hex), Some(("", hex.as_str())));
        assert_eq!(split_container_id("containerd://"), None);
        assert_eq!(split_container_id(""), None);
    }

    #[test]
    fn apply_indexes_pods_and_containers() {
        let index = KubeIndex::new();
        let g0 = index.generation();
        index.apply(&web_pod());
        assert_eq!(index.pod_count(), 1);
        assert!(index.generation() > g0);

        let p = index.pod_by_uid("0b5e4c1a-4f1e-4d36-9f41-1c2a3b4c5d6e").expect("pod");
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("shop", "web-6d4cf56db6-x7k2p"));
        assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
        assert!(p.annotations.contains_key(SIDECARS_ANNOTATION));
        assert!(!p.annotations.contains_key(LAST_APPLIED));

        let role_image = |c: char| {
            let (_, c) = index.container_by_id(&id(c)).expect("container");
            (c.name, c.role, c.image, c.runtime, c.qos_class)
        };
        let (name, role, image, runtime, qos) = role_image('3');
        assert_eq!((name.as_str(), role.as_str()), ("web", "app"));
        assert_eq!(image, "registry.example.com/shop/web:2.0", "image from the spec");
        assert_eq!((runtime.as_str(), qos.as_str()), ("containerd", "burstable"));
        assert_eq!(role_image('4').0, "web", "previous instance of a restarted container");
        assert_eq!(role_image('1').1, "init");
        assert_eq!(role_image('2').1, "sidecar");
        assert_eq!(role_image('5').1, "sidecar");
        let (name, role, _, runtime, _) = role_image('6');
        assert_eq!((name.as_str(), role.as_str(), runtime.as_str()), ("debugger", "app", "cri-o"));
        assert!(index.container_by_id(&id('7')).is_none());
        assert!(index.container_by_id(&format!("containerd://{}", id('3'))).is_none());
    }

    #[test]
    fn generation_moves_only_on_change() {
        let index = KubeIndex::new();
        let mut p = web_pod();
        index.apply(&p);
        let g1 = index.generation();
        index.apply(&p);
        assert_eq!(index.generation(), g1, "same pod again");

        // A container restarts: the new id replaces the current one.
        let status = p.status.as_mut().and_then(|s| s.container_statuses.as_mut()).expect("statuses");
        status[0].container_id = Some(format!("containerd://{}", id('8')));
        status[0].last_state = None;
        index.apply(&p);
        assert!(index.generation() > g1);
        assert!(index.container_by_id(&id('3')).is_none());
        assert!(index.container_by_id(&id('4')).is_none());
        assert_eq!(index.container_by_id(&id('8')).expect("new id").1.name, "web");

        let g2 = index.generation();
        index.delete(&p);
        assert!(index.generation() > g2);
        assert_eq!(index.pod_count(), 0);
        assert!(index.container_by_id(&id('8')).is_none());
        let g3 = index.generation();
        index.delete(&p);
        assert_eq!(index.generation(), g3, "unknown pod deleted");
    }

    #[test]
    fn pod_without_uid_is_ignored() {
        let index = KubeIndex::new();
        index.apply(&pod(serde_json::json!({"metadata": {"name": "x"}})));
        assert_eq!((index.pod_count(), index.generation()), (0, 0));
    }

    #[test]
    fn relist_keeps_pods_until_done() {
        let index = KubeIndex::new();
        let other = pod(serde_json::json!({"metadata": {"name": "old", "uid": "old-uid"}}));
        index.apply(&other);
        let mut relist = Relist::default();
        relist.handle(&index, watcher::Event::Init);
        relist.handle(&index, watcher::Event::InitApply(web_pod()));
        assert_eq!(index.pod_count(), 2, "old pod kept while the list is incomplete");
        relist.handle(&index, watcher::Event::InitDone);
        assert_eq!(index.pod_count(), 1);
        assert!(index.pod_by_uid("old-uid").is_none());
        // An apply outside a relist removes nothing.
        relist.handle(&index, watcher::Event::Apply(other));
        relist.handle(&index, watcher::Event::InitDone);
        assert_eq!(index.pod_count(), 2);
    }
}
