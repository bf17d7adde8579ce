//! Real pods on podman (runc, cgroupfs, `--network none`): containers that share a network
//! namespace, each in its own cgroup, like a Kubernetes pod. Dropping a `Pod` removes it and
//! the cgroup directories podman leaves behind for it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

static NEXT: AtomicU32 = AtomicU32::new(0);
static SHARED: OnceLock<Arc<Podman>> = OnceLock::new();

/// The source of `swtool`, the static multi-tool the test image carries beside busybox.
const SWTOOL_SRC: &str = include_str!("../tools/swtool.c");

/// The podman every test pod is played with, unless a test brings its own: the machine's
/// storage, and a containers.conf of the tests' own.
pub fn shared() -> &'static Arc<Podman> {
    SHARED.get_or_init(|| Arc::new(Podman::new(None)))
}

/// The image every test pod runs: busybox plus swtool, imported from a local rootfs (no
/// registry here). Its tag follows swtool's source, so a changed tool means a new image.
pub fn image() -> &'static str {
    shared().image()
}

/// podman as the tests run it: runc, cgroupfs, ulimits this shell may set, and either the
/// machine's container storage or a private one.
pub struct Podman {
    conf: PathBuf,
    private: Option<Private>,
    image: OnceLock<String>,
}

/// A podman of one test's own: storage, run and lock directories in a temporary directory.
struct Private {
    dir: tempfile::TempDir,
    storage_conf: PathBuf,
}

impl Podman {
    /// A podman with a storage of its own that does not exist yet: podman creates it on first
    /// use, as on a machine where podman never ran. Everything it holds is removed on drop.
    pub fn private() -> Arc<Self> {
        let dir = tempfile::Builder::new().prefix("sidewall-podman-").tempdir().expect("tempdir");
        let storage_conf = dir.path().join("storage.conf");
        fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.path().join("storage").display(),
                dir.path().join("run").display()
            ),
        )
        .expect("write storage.conf");
        Arc::new(Self::new(Some(Private { dir, storage_conf })))
    }

    /// The machine's storage with a containers.conf of a test's own (`conf_with_hooks`).
    pub fn with_conf(conf: &Path) -> Arc<Self> {
        Arc::new(Self { conf: conf.to_path_buf(), private: None, image: OnceLock::new() })
    }

    fn new(private: Option<Private>) -> Self {
        let (nofile, nproc) = (hard_limit(libc::RLIMIT_NOFILE), hard_limit(libc::RLIMIT_NPROC).min(32768));
        let mut text = conf_text();
        let conf = match &private {
            // Per-boot state and locks of its own too: the machine's podman keeps its own.
            Some(p) => {
                text.push_str(&format!(
                    "tmp_dir = \"{}\"\nlock_type = \"file\"\n",
                    p.dir.path().join("tmp").display()
                ));
                let conf = p.dir.path().join("containers.conf");
                fs::write(&conf, &text).expect("write containers.conf");
                conf
            }
            // Shared by every test process (same content, written atomically).
            None => {
                let dir = std::env::temp_dir().join("sidewall-podman");
                fs::create_dir_all(&dir).expect("podman config dir");
                let conf = dir.join(format!("containers-{nofile}-{nproc}.conf"));
                if fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str()) {
                    let fresh = dir.join(format!("containers.conf.{}", std::process::id()));
                    fs::write(&fresh, &text).expect("write containers.conf");
                    fs::rename(&fresh, &conf).expect("install containers.conf");
                }
                conf
            }
        };
        Self { conf, private, image: OnceLock::new() }
    }

    /// A podman command with this configuration.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        if let Some(p) = &self.private {
            c.env("CONTAINERS_STORAGE_CONF", &p.storage_conf);
        }
        c
    }

    /// The storage root of a private podman (sidewalld's `podman_storage`); None for the
    /// machine's.
    pub fn storage_root(&self) -> Option<PathBuf> {
        self.private.as_ref().map(|p| p.dir.path().join("storage"))
    }

    /// The test image, imported into this podman's storage on first use.
    pub fn image(&self) -> &str {
        self.image.get_or_init(|| {
            let build = tempfile::tempdir().expect("image build dir");
            ensure_image(self, build.path())
        })
    }
}

impl Drop for Podman {
    /// A private podman's pods are gone by now (each holds it); anything its storage left
    /// mounted is unmounted, so that its directory can be removed.
    fn drop(&mut self) {
        let Some(p) = &self.private else { return };
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = mountinfo
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
            .filter(|m| m.starts_with(p.dir.path()))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: umount2 of a mount under this test's own temporary directory.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// The tests' containers.conf: runc, cgroupfs, ulimits this shell may set. Its `[engine]`
/// table comes last, so keys appended to it belong there.
fn conf_text() -> String {
    let (nofile, nproc) = (hard_limit(libc::RLIMIT_NOFILE), hard_limit(libc::RLIMIT_NPROC).min(32768));
    format!(
        "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n"
    )
}

/// A containers.conf of a test's own in `dir`: the shared one, with OCI hooks from
/// `hooks_dir` (the shared one, used by every other test, stays as it is).
pub fn conf_with_hooks(dir: &Path, hooks_dir: &Path) -> PathBuf {
    let conf = dir.join("containers.conf");
    let text = format!("{}hooks_dir = [{:?}]\n", conf_text(), hooks_dir.display().to_string());
    fs::write(&conf, text).expect("write containers.conf with hooks");
    conf
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid pointer.
    unsafe { libc::getrlimit(resource, &mut r) };
    if r.rlim_max == libc::RLIM_INFINITY { 1 << 20 } else { r.rlim_max }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Imports the image once: /bin/busybox with relative applet links, and swtool.
fn ensure_image(podman: &Podman, dir: &Path) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    SWTOOL_SRC.hash(&mut h);
    let image = format!("localhost/sidewall-test:{:012x}", h.finish() & 0xffff_ffff_ffff);
    if podman.command().args(["image", "exists", &image]).status().is_ok_and(|s| s.success()) {
        return image;
    }
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("rootfs");
    fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox (apt-get install busybox-static)");
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    let src = dir.join("swtool.c");
    fs::write(&src, SWTOOL_SRC).expect("write swtool.c");
    run(Command::new("cc").args(["-static", "-O2", "-o"]).arg(bin.join("swtool")).arg(&src));
    let tar = dir.join("rootfs.tar");
    run(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."));
    run(podman.command().args(["import", "--change", "ENV PATH=/bin"]).arg(&tar).arg(&image));
    image
}

/// The podman a pod is played with: the shared one, or one with the test's own containers.conf.
fn podman_for(opts: &Options<'_>) -> Arc<Podman> {
    opts.containers_conf.map_or_else(|| shared().clone(), Podman::with_conf)
}

/// A container of a pod manifest.
#[derive(Clone, Copy, Default)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub command: &'a [&'a str],
    /// `securityContext.privileged`: the attacker's power in breakout scenarios.
    pub privileged: bool,
}

/// Pod-level settings of a manifest.
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    pub annotations: &'a [(&'a str, &'a str)],
    /// `shareProcessNamespace`: the containers see each other's processes.
    pub share_process_namespace: bool,
    /// `restartPolicy: Never`: a container that ends stays ended (see `Pod::wait`).
    pub run_once: bool,
    /// A containers.conf of the test's own (`conf_with_hooks`); None: the shared one.
    pub containers_conf: Option<&'a Path>,
}

pub struct Pod {
    pub name: String,
    podman: Arc<Podman>,
    dir: tempfile::TempDir,
}

impl Pod {
    /// Plays a pod named `<prefix>-<pid>-<n>` with `containers`, and `annotations` on the pod.
    pub fn play(prefix: &str, containers: &[Spec<'_>], annotations: &[(&str, &str)]) -> Self {
        Self::play_with(prefix, containers, &Options { annotations, ..Default::default() })
    }

    pub fn play_with(prefix: &str, containers: &[Spec<'_>], opts: &Options<'_>) -> Self {
        Self::play_in(&podman_for(opts), prefix, containers, opts)
    }

    /// Plays the pod and returns podman's output whether it succeeded or not (a runtime hook
    /// may refuse the containers); the pod is removed on drop either way.
    pub fn try_play(prefix: &str, containers: &[Spec<'_>], opts: &Options<'_>) -> (Self, Output) {
        Self::try_play_in(&podman_for(opts), prefix, containers, opts)
    }

    /// Plays the pod with `podman` (a private one, for instance).
    pub fn play_in(podman: &Arc<Podman>, prefix: &str, containers: &[Spec<'_>], opts: &Options<'_>) -> Self {
        let (pod, out) = Self::try_play_in(podman, prefix, containers, opts);
        assert!(
            out.status.success(),
            "podman kube play {} failed: {}",
            pod.name,
            String::from_utf8_lossy(&out.stderr)
        );
        pod
    }

    fn try_play_in(
        podman: &Arc<Podman>,
        prefix: &str,
        containers: &[Spec<'_>],
        opts: &Options<'_>,
    ) -> (Self, Output) {
        let name = format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::tempdir().expect("tmp");
        let yaml = dir.path().join("pod.yaml");
        fs::write(&yaml, manifest(&name, podman.image(), containers, opts)).expect("write manifest");
        let mut cmd = podman.command();
        cmd.args(["kube", "play", "--network", "none"]).arg(&yaml);
        let pod = Self { name, podman: podman.clone(), dir };
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        (pod, out)
    }

    /// The podman name of a container of this pod.
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.name)
    }

    pub fn container_id(&self, name: &str) -> String {
        let out = run(self.podman.command().args(["inspect", "--format", "{{.Id}}", &self.container(name)]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `podman exec` in a container; returns its output whatever the exit status.
    pub fn exec(&self, container: &str, args: &[&str]) -> Output {
        let mut c = self.podman.command();
        c.arg("exec").arg(self.container(container)).args(args);
        c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"))
    }

    /// `podman exec` in a container without waiting, its stdout piped (stop it by its PID).
    pub fn spawn(&self, container: &str, args: &[&str]) -> std::process::Child {
        let mut c = self.podman.command();
        c.arg("exec").arg(self.container(container)).args(args).stdout(std::process::Stdio::piped());
        c.spawn().unwrap_or_else(|e| panic!("{c:?}: {e}"))
    }

    /// What a container printed so far (all its runs, restarts included).
    pub fn logs(&self, container: &str) -> String {
        let out = run(self.podman.command().args(["logs", &self.container(container)]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What a container printed, or nothing when it does not exist (never created).
    pub fn try_logs(&self, container: &str) -> String {
        let out = self.podman.command().args(["logs", &self.container(container)]).output();
        out.ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The host pid of a container's first process.
    pub fn host_pid(&self, container: &str) -> u32 {
        let out = run(self.podman.command().args([
            "inspect",
            "--format",
            "{{.State.Pid}}",
            &self.container(container),
        ]));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a pid")
    }

    /// The same process's pid inside the pod's pid namespace (NSpid's last field).
    pub fn pod_pid(&self, container: &str) -> u32 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.host_pid(container))).expect("status");
        let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).expect("NSpid");
        nspid.split_whitespace().last().and_then(|p| p.parse().ok()).expect("a pid")
    }

    /// Waits for a container to end; its exit status (137: killed by SIGKILL).
    pub fn wait(&self, container: &str) -> i32 {
        let out = run(self.podman.command().args(["wait", &self.container(container)]));
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().unwrap_or_else(|_| panic!("podman wait {container}: {text:?}"))
    }

    pub fn pod_id(&self) -> String {
        let out = run(self.podman.command().args(["pod", "inspect", "--format", "{{.Id}}", &self.name]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("pod.yaml")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // A pod the runtime refused may not exist: nothing of it to remove then.
        let inspect =
            self.podman.command().args(["pod", "inspect", "--format", "{{.Id}}", &self.name]).output();
        let Some(pod_id) = inspect
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        else {
            return;
        };
        let _ = self.podman.command().args(["pod", "rm", "-f", "-t", "0", &self.name]).output();
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

fn manifest(name: &str, image: &str, containers: &[Spec<'_>], opts: &Options<'_>) -> String {
    let annotations = opts.annotations;
    let mut y = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {name}\n");
    if !annotations.is_empty() {
        y.push_str("  annotations:\n");
        for (k, v) in annotations {
            y.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    y.push_str("spec:\n");
    if opts.share_process_namespace {
        y.push_str("  shareProcessNamespace: true\n");
    }
    if opts.run_once {
        y.push_str("  restartPolicy: Never\n");
    }
    y.push_str("  containers:\n");
    for c in containers {
        let cmd: Vec<String> = c.command.iter().map(|a| format!("{a:?}")).collect();
        y.push_str(&format!(
            "  - name: {}\n    image: {}\n    imagePullPolicy: Never\n    command: [{}]\n",
            c.name,
            image,
            cmd.join(", ")
        ));
        if c.privileged {
            y.push_str("    securityContext:\n      privileged: true\n");
        }
    }
    y
}
