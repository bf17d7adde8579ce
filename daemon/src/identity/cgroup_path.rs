//! Container identity from a cgroup v2 path (relative to the cgroup2 mount).
//!
//! The path is read one component at a time. Several names (a bare id,
//! `burstable`, `pod<uid>`) only mean something directly below a specific
//! parent, so the parser remembers what the previous component was. The
//! innermost container wins, which handles nested nodes (kind, docker-in-docker).

use std::sync::LazyLock;

use regex::Regex;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupIdentity {
    /// Full container id (64 lowercase hex), empty when the path is not a container's.
    pub container_id: String,
    /// "containerd", "cri-o", "docker", "podman", or "" when unknown.
    pub runtime: &'static str,
    /// Kubernetes pod UID in its canonical dashed form (8-4-4-4-12), empty when not a kubepods path.
    /// Static pods are the exception: their UID is a 32-hex config hash and is kept verbatim.
    pub pod_uid: String,
    /// "guaranteed", "burstable", "besteffort", or "" when not a kubepods path.
    pub qos_class: &'static str,
    /// podman pod id (64 hex) for podman's cgroupfs layout /libpod_parent/<pod-id>/libpod-<cid>, else empty.
    /// The systemd equivalent (`machine-libpod_pod_<pod-id>.slice`) is recognised too.
    pub podman_pod_id: String,
}

/// What the previous path component was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The top of the hierarchy.
    Root,
    /// A container; its own hierarchy may nest runtimes (kind, docker-in-docker).
    Container,
    /// A plausible containerd namespace (`/default`, `/k8s.io`).
    Namespace,
    /// `kubepods` / `kubepods.slice`.
    KubeRoot,
    /// A QoS level below the kubepods root.
    KubeQos,
    /// A pod cgroup.
    KubePod,
    /// docker's cgroupfs parent, `/docker`.
    DockerRoot,
    /// podman's cgroupfs parent, `/libpod_parent`.
    LibpodParent,
    Other,
}

/// Prefixed container cgroup names: (prefix, runtime, ".scope" required).
/// Conmon scopes (`crio-conmon-<id>`, `libpod-conmon-<id>`) deliberately fail
/// the 64-hex check here: conmon is a monitor process, not the container.
const PREFIXED: &[(&str, &str, bool)] = &[
    ("cri-containerd-", "containerd", true),
    ("nerdctl-", "containerd", true),
    ("crio-", "cri-o", false),
    ("docker-", "docker", true),
    ("libpod-payload-", "podman", false),
    ("libpod-", "podman", false),
];

/// systemd QoS slice, optionally below a custom cgroup root (kind uses `kubelet-`).
static QOS_SLICE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[A-Za-z0-9_:.-]+-)?kubepods-(burstable|besteffort)\.slice$")
        .expect("valid QoS slice regex")
});

/// systemd pod slice; no QoS segment means a guaranteed pod.
static POD_SLICE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[A-Za-z0-9_:.-]+-)?kubepods(?:-(burstable|besteffort))?-pod([0-9a-f_]+)\.slice$")
        .expect("valid pod slice regex")
});

/// podman pod slice under systemd (`machine-` rootful, `user-` rootless).
static PODMAN_POD_SLICE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[A-Za-z0-9_:.-]+-)?libpod_pod_([0-9a-f]{64})\.slice$")
        .expect("valid podman pod slice regex")
});

/// containerd's namespace naming rule.
static NAMESPACE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$").expect("valid namespace regex"));

/// Parses a cgroup v2 path; unknown layouts give the default (all empty).
pub fn parse(path: &str) -> CgroupIdentity {
    let mut id = CgroupIdentity::default();
    let mut parent = Level::Root;
    for name in path.split('/').filter(|c| !c.is_empty()) {
        parent = step(&mut id, parent, name);
    }
    id
}

/// Applies one path component and returns what it was.
fn step(id: &mut CgroupIdentity, parent: Level, name: &str) -> Level {
    if is_kube_root(name) {
        // A kubepods tree starts afresh: in a kind node the outer node
        // container is not the workload.
        *id = CgroupIdentity::default();
        return Level::KubeRoot;
    }
    if let Some(next) = kube_level(id, parent, name) {
        return next;
    }
    if podman_pod(id, parent, name) {
        return Level::Other;
    }
    if let Some((cid, runtime)) = container(parent, name) {
        id.container_id = cid;
        id.runtime = runtime;
        return Level::Container;
    }
    grouping(parent, name)
}

fn is_kube_root(name: &str) -> bool {
    name == "kubepods" || name == "kubepods.slice" || name.ends_with("-kubepods.slice")
}

/// QoS and pod levels, only valid in their place below the kubepods root.
fn kube_level(id: &mut CgroupIdentity, parent: Level, name: &str) -> Option<Level> {
    if parent == Level::KubeRoot
        && let Some(qos) = qos_dir(name)
    {
        id.qos_class = qos;
        return Some(Level::KubeQos);
    }
    if !matches!(parent, Level::KubeRoot | Level::KubeQos) {
        return None;
    }
    let (uid, qos) = pod_dir(name)?;
    id.pod_uid = uid;
    id.qos_class = match (qos, parent) {
        (Some(qos), _) => qos,
        (None, Level::KubeQos) => id.qos_class,
        // cgroupfs guaranteed pods sit directly below the root.
        (None, _) => "guaranteed",
    };
    Some(Level::KubePod)
}

fn qos_dir(name: &str) -> Option<&'static str> {
    match name {
        "burstable" | "besteffort" => Some(qos_name(name)),
        _ => QOS_SLICE.captures(name)?.get(1).map(|m| qos_name(m.as_str())),
    }
}

/// Pod UID plus the QoS the name itself states (systemd names always do).
fn pod_dir(name: &str) -> Option<(String, Option<&'static str>)> {
    if let Some(raw) = name.strip_prefix("pod") {
        return canonical_uid(raw, '-').map(|uid| (uid, None));
    }
    let caps = POD_SLICE.captures(name)?;
    let qos = caps.get(1).map_or("guaranteed", |m| qos_name(m.as_str()));
    // systemd reserves '-' for slice nesting, so the UID uses '_'.
    let uid = canonical_uid(caps.get(2)?.as_str(), '_')?;
    Some((uid, Some(qos)))
}

fn qos_name(name: &str) -> &'static str {
    match name {
        "burstable" => "burstable",
        "besteffort" => "besteffort",
        _ => "",
    }
}

/// Dashed 8-4-4-4-12 UID from `sep`-separated groups.
fn canonical_uid(raw: &str, sep: char) -> Option<String> {
    // Static pods use a 32-hex config hash as UID; it has no dashed form.
    if raw.len() == 32 && is_lower_hex(raw) {
        return Some(raw.to_owned());
    }
    let groups: Vec<&str> = raw.split(sep).collect();
    let valid = groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, len)| g.len() == len && is_lower_hex(g));
    valid.then(|| groups.join("-"))
}

/// Records a podman pod id; returns whether `name` was one.
fn podman_pod(id: &mut CgroupIdentity, parent: Level, name: &str) -> bool {
    let pod = if parent == Level::LibpodParent && is_id(name) {
        Some(name)
    } else {
        PODMAN_POD_SLICE.captures(name).and_then(|caps| caps.get(1)).map(|m| m.as_str())
    };
    match pod {
        Some(pod) => {
            id.podman_pod_id = pod.to_owned();
            true
        }
        None => false,
    }
}

/// Container id and runtime when `name` is a container's cgroup.
fn container(parent: Level, name: &str) -> Option<(String, &'static str)> {
    if is_id(name) {
        return bare_runtime(parent).map(|runtime| (name.to_owned(), runtime));
    }
    PREFIXED.iter().find_map(|&(prefix, runtime, scope_required)| {
        let rest = name.strip_prefix(prefix)?;
        let cid = match rest.strip_suffix(".scope") {
            Some(cid) => cid,
            None if !scope_required => rest,
            None => return None,
        };
        is_id(cid).then(|| (cid.to_owned(), runtime))
    })
}

/// A bare id is only a container below a parent that names its runtime.
fn bare_runtime(parent: Level) -> Option<&'static str> {
    match parent {
        // cgroupfs CRI layout; containerd is by far the common case there.
        Level::KubePod | Level::Namespace => Some("containerd"),
        Level::DockerRoot => Some("docker"),
        _ => None,
    }
}

/// Runtime parents and containerd namespaces only count at the top of a
/// (possibly nested) hierarchy, so deep random directories stay `Other`.
fn grouping(parent: Level, name: &str) -> Level {
    if !matches!(parent, Level::Root | Level::Container) {
        return Level::Other;
    }
    match name {
        "docker" => Level::DockerRoot,
        "libpod_parent" => Level::LibpodParent,
        _ if is_namespace(name) => Level::Namespace,
        _ => Level::Other,
    }
}

fn is_namespace(name: &str) -> bool {
    const UNIT_SUFFIXES: &[&str] = &[".slice", ".scope", ".service", ".mount", ".socket"];
    name.len() <= 76
        && !is_id(name)
        && !UNIT_SUFFIXES.iter().any(|s| name.ends_with(s))
        && NAMESPACE.is_match(name)
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "4f2b9c0e1d7a3b5c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f";
    const N: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a";
    const P: &str = "06e2a4dcd0f30690a9289f4a514ada49b38bcd3e59940009075a3fdfcd1dae02";
    const U: &str = "0d3f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7";
    const U_: &str = "0d3f5a6b_7c8d_4e9f_a0b1_c2d3e4f5a6b7";
    const STATIC_UID: &str = "6a8f0a1e4b1c5d2f9e3a7b6c8d0e1f2a";

    fn ident(
        container_id: &str,
        runtime: &'static str,
        pod_uid: &str,
        qos_class: &'static str,
        podman_pod_id: &str,
    ) -> CgroupIdentity {
        CgroupIdentity {
            container_id: container_id.to_owned(),
            runtime,
            pod_uid: pod_uid.to_owned(),
            qos_class,
            podman_pod_id: podman_pod_id.to_owned(),
        }
    }

    fn cases() -> Vec<(String, CgroupIdentity)> {
        let none = CgroupIdentity::default();
        let sd_burst = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice");
        let sd_best = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice");
        let kind_sd = format!(
            "/system.slice/docker-{N}.scope/kubelet.slice/kubelet-kubepods.slice/\
             kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{U_}.slice"
        );
        vec![
            // Host paths.
            ("/".into(), none.clone()),
            ("".into(), none.clone()),
            ("/init.scope".into(), none.clone()),
            ("/system.slice/sshd.service".into(), none.clone()),
            ("/user.slice/user-0.slice/session-3.scope".into(), none.clone()),
            ("/system.slice/containerd.service".into(), none.clone()),
            // containerd, systemd driver, every QoS class.
            (format!("{sd_burst}/cri-containerd-{C}.scope"), ident(C, "containerd", U, "burstable", "")),
            (format!("{sd_best}/cri-containerd-{C}.scope"), ident(C, "containerd", U, "besteffort", "")),
            (
                format!("/kubepods.slice/kubepods-pod{U_}.slice/cri-containerd-{C}.scope"),
                ident(C, "containerd", U, "guaranteed", ""),
            ),
            // containerd, cgroupfs driver.
            (format!("/kubepods/burstable/pod{U}/{C}"), ident(C, "containerd", U, "burstable", "")),
            (format!("/kubepods/besteffort/pod{U}/{C}"), ident(C, "containerd", U, "besteffort", "")),
            (format!("/kubepods/pod{U}/{C}"), ident(C, "containerd", U, "guaranteed", "")),
            // Custom cgroup root (kubelet --cgroup-root=/kubelet).
            (format!("/kubelet/kubepods/besteffort/pod{U}/{C}"), ident(C, "containerd", U, "besteffort", "")),
            // Pod- and QoS-level cgroups.
            (sd_burst.clone(), ident("", "", U, "burstable", "")),
            (format!("/kubepods.slice/kubepods-pod{U_}.slice"), ident("", "", U, "guaranteed", "")),
            (format!("/kubepods/pod{U}"), ident("", "", U, "guaranteed", "")),
            ("/kubepods/besteffort".into(), ident("", "", "", "besteffort", "")),
            ("/kubepods.slice".into(), none.clone()),
            // Static pod: the UID is a 32-hex hash.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/\
                     kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{C}.scope"
                ),
                ident(C, "containerd", STATIC_UID, "burstable", ""),
            ),
            // CRI-O, both drivers; conmon is not the container.
            (format!("{sd_best}/crio-{C}.scope"), ident(C, "cri-o", U, "besteffort", "")),
            (format!("{sd_best}/crio-{C}.scope/container"), ident(C, "cri-o", U, "besteffort", "")),
            (format!("/kubepods/burstable/pod{U}/crio-{C}"), ident(C, "cri-o", U, "burstable", "")),
            (format!("{sd_burst}/crio-conmon-{C}.scope"), ident("", "", U, "burstable", "")),
            (format!("/kubepods/pod{U}/crio-conmon-{C}"), ident("", "", U, "guaranteed", "")),
            // Docker, both drivers, and cri-dockerd under kubepods.
            (format!("/docker/{C}"), ident(C, "docker", "", "", "")),
            (format!("/system.slice/docker-{C}.scope"), ident(C, "docker", "", "", "")),
            (format!("{sd_burst}/docker-{C}.scope"), ident(C, "docker", U, "burstable", "")),
            (format!("/docker/{N}/docker/{C}"), ident(C, "docker", "", "", "")),
            // podman, cgroupfs.
            (format!("/libpod_parent/{P}/libpod-{C}"), ident(C, "podman", "", "", P)),
            (format!("/libpod_parent/{P}"), ident("", "", "", "", P)),
            (format!("/libpod_parent/libpod-{C}"), ident(C, "podman", "", "", "")),
            // podman, systemd, rootful and rootless.
            (format!("/machine.slice/libpod-{C}.scope"), ident(C, "podman", "", "", "")),
            (format!("/machine.slice/libpod-{C}.scope/container"), ident(C, "podman", "", "", "")),
            (
                format!("/machine.slice/machine-libpod_pod_{P}.slice/libpod-{C}.scope"),
                ident(C, "podman", "", "", P),
            ),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{C}.scope"),
                ident(C, "podman", "", "", ""),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/\
                     user-libpod_pod_{P}.slice/libpod-{C}.scope/container"
                ),
                ident(C, "podman", "", "", P),
            ),
            (format!("/system.slice/app.service/libpod-payload-{C}"), ident(C, "podman", "", "", "")),
            (format!("/machine.slice/libpod-conmon-{C}.scope"), none.clone()),
            (
                format!("/machine.slice/machine-libpod_pod_{P}.slice/libpod-conmon-{C}.scope"),
                ident("", "", "", "", P),
            ),
            // Plain containerd (ctr / nerdctl).
            (format!("/default/{C}"), ident(C, "containerd", "", "", "")),
            (format!("/k8s.io/{C}"), ident(C, "containerd", "", "", "")),
            (format!("/system.slice/nerdctl-{C}.scope"), ident(C, "containerd", "", "", "")),
            // kind / nested nodes: the innermost container wins.
            (
                format!("/system.slice/docker-{N}.scope/kubepods/burstable/pod{U}/{C}"),
                ident(C, "containerd", U, "burstable", ""),
            ),
            (format!("{kind_sd}/cri-containerd-{C}.scope"), ident(C, "containerd", U, "besteffort", "")),
            (kind_sd.clone(), ident("", "", U, "besteffort", "")),
            (format!("/docker/{N}/kubepods/pod{U}/{C}"), ident(C, "containerd", U, "guaranteed", "")),
            (format!("/system.slice/docker-{N}.scope"), ident(N, "docker", "", "", "")),
            (
                format!("/system.slice/docker-{N}.scope/system.slice/containerd.service"),
                ident(N, "docker", "", "", ""),
            ),
            // Tolerates doubled and trailing slashes.
            (format!("//docker//{C}/"), ident(C, "docker", "", "", "")),
        ]
    }

    fn negative_cases() -> Vec<(String, CgroupIdentity)> {
        let none = CgroupIdentity::default();
        let short = &C[..63];
        let long = format!("{C}a");
        let non_hex = format!("{}g", &C[..63]);
        let upper = C.to_uppercase();
        vec![
            (format!("/docker/{short}"), none.clone()),
            (format!("/system.slice/docker-{short}.scope"), none.clone()),
            (format!("/default/{long}"), none.clone()),
            (format!("/system.slice/docker-{non_hex}.scope"), none.clone()),
            (format!("/docker/{upper}"), none.clone()),
            (format!("/machine.slice/libpod-{short}.scope"), none.clone()),
            // Bad id under a valid pod keeps only the pod fields.
            (format!("/kubepods/burstable/pod{U}/{short}"), ident("", "", U, "burstable", "")),
            (format!("/kubepods/burstable/pod{U}/{non_hex}"), ident("", "", U, "burstable", "")),
            // Bare ids only count below a parent that names a runtime.
            (format!("/{C}"), none.clone()),
            (format!("/system.slice/foo.service/{C}"), none.clone()),
            (format!("/opt/data/{C}"), none.clone()),
            // Prefixes that require ".scope" do not match without it.
            (format!("/system.slice/cri-containerd-{C}"), none.clone()),
            (format!("/system.slice/docker-{C}"), none.clone()),
            // Malformed pod UIDs.
            (format!("/kubepods/burstable/pod{}/{C}", &U[..35]), ident("", "", "", "burstable", "")),
            (
                format!("/kubepods.slice/kubepods-pod{U}.slice/cri-containerd-{C}.scope"),
                ident(C, "containerd", "", "", ""),
            ),
            // QoS and pod names outside a kubepods tree are ignored.
            (format!("/burstable/pod{U}/{C}"), none.clone()),
            // Conmon scopes are not containers.
            (format!("/system.slice/crio-conmon-{C}.scope"), none.clone()),
            (format!("/machine.slice/libpod-conmon-{C}.scope"), none),
        ]
    }

    fn check(table: Vec<(String, CgroupIdentity)>) {
        for (path, want) in table {
            assert_eq!(parse(&path), want, "path: {path}");
        }
    }

    #[test]
    fn real_layouts() {
        assert!([C, N, P].iter().all(|id| is_id(id)), "test ids must be 64 hex");
        let table = cases();
        assert!(table.len() >= 25);
        check(table);
    }

    #[test]
    fn negatives() {
        check(negative_cases());
    }

    #[test]
    fn systemd_uid_is_dashed() {
        let id = parse(&format!("/kubepods.slice/kubepods-pod{U_}.slice"));
        assert_eq!(id.pod_uid, U);
    }
}
