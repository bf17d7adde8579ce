//! A sidewalld process for one test, with its own socket, export file and config.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use sidewall_proto::{
    client::{self, Address},
    v1::{GetEventsRequest, GetStatusRequest, GetStatusResponse, sensors_client::SensorsClient},
};
use tonic::transport::Channel;

use crate::EventStream;

pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub export: PathBuf,
    /// Where this daemon pins what outlives it; removed on drop.
    pub pins: PathBuf,
    config: PathBuf,
    launch: Launch,
    /// Run in the daemon's image as the chart's pod spec says, instead of on the host.
    container: Option<Container>,
}

/// A daemon container of the chart's image (`Daemon::in_image`).
struct Container {
    name: String,
    pod: crate::chart::DaemonPod,
    /// Every container started under `name` (one more per restart), for their cgroups.
    ids: Vec<String>,
}

/// How a daemon is started besides its config: a command it runs under (e.g. `unshare ...`,
/// which must exec it) and extra flags.
#[derive(Clone, Default)]
pub struct Launch {
    pub wrapper: Vec<String>,
    pub flags: Vec<String>,
}

/// Loading and verifying the programs takes a few seconds on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

impl Daemon {
    pub async fn start() -> Self {
        Self::with_config("").await
    }

    /// Starts sidewalld with the test defaults plus `extra` TOML lines.
    pub async fn with_config(extra: &str) -> Self {
        Self::with_listeners(&[], extra).await
    }

    /// Also listening on `addresses` (e.g. `tcp://127.0.0.1:port`), besides its socket.
    pub async fn with_listeners(addresses: &[String], extra: &str) -> Self {
        Self::launched(addresses, extra, Launch::default()).await
    }

    /// Started as `launch` says (under a wrapper command, with extra flags).
    pub async fn launched(addresses: &[String], extra: &str, launch: Launch) -> Self {
        crate::require_root();
        let dir = tempfile::Builder::new().prefix("sidewall-test-").tempdir().expect("tempdir");
        let socket = dir.path().join("sidewall.sock");
        let export = dir.path().join("events.json");
        let config = dir.path().join("config.toml");
        // Pins of its own: daemons of tests running side by side must not share them.
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/sidewall-test-{}",
            dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        let listeners: Vec<String> = std::iter::once(format!("unix://{}", socket.display()))
            .chain(addresses.iter().cloned())
            .collect();
        fs::write(
            &config,
            format!(
                "node_name = \"test-node\"\ngrpc_address = {listeners:?}\nexport_file = \"{}\"\nbpf_pin_dir = \"{}\"\nlog = \"info\"\n{extra}\n",
                export.display(),
                pins.display()
            ),
        )
        .expect("write config");
        let child = spawn(&config, &dir.path().join("daemon.log"), &launch);
        let mut d = Self { child, dir, socket, export, pins, config, launch, container: None };
        d.wait_ready().await;
        d
    }

    /// sidewalld in the image `make image` built, under podman as the DaemonSet of the chart
    /// rendered by helm says (`crate::chart`), with `values` (YAML) over the test's own: the
    /// local image, no Kubernetes API (podman names instead), pins and /run/sidewall of this
    /// test's own, the export file under /run/sidewall.
    pub async fn in_image(values: &str) -> Self {
        crate::require_root();
        let podman = crate::pod::shared();
        let exists = podman.command().args(["image", "exists", crate::chart::IMAGE]).status();
        assert!(
            exists.is_ok_and(|s| s.success()),
            "{} is missing: `make image` builds it (make test does)",
            crate::chart::IMAGE
        );
        let dir = tempfile::Builder::new().prefix("sidewall-test-").tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/sidewall-test-{}",
            dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        let (repo, tag) = crate::chart::IMAGE.rsplit_once(':').expect("image:tag");
        let storage = "/var/lib/containers/storage";
        // The policies a cluster would hold as objects: files of the test's own.
        let policies = dir.path().join("policies");
        fs::create_dir(&policies).expect("policy dir");
        let ours = dir.path().join("test-values.yaml");
        let values_text = [
            format!("image: {{repository: {repo}, tag: {tag}, pullPolicy: Never}}"),
            format!(
                "config: {{kubernetes: \"off\", podman_storage: {storage}, bpf_pin_dir: {:?}, \
                 policy_dir: /etc/sidewall-policies}}",
                pins.display().to_string()
            ),
            "export: {file: /run/sidewall/events.json}".to_string(),
            // No API server here to tell an uninstall from an update (tests/node.rs has one).
            "enforcement: {keepOnUninstall: true}".to_string(),
            format!(
                "extraVolumes: [{{name: podman-storage, hostPath: {{path: {storage}, type: Directory}}}}, \
                 {{name: policies, hostPath: {{path: {:?}, type: Directory}}}}]",
                policies.display().to_string()
            ),
            format!(
                "extraVolumeMounts: [{{name: podman-storage, mountPath: {storage}, readOnly: true}}, \
                 {{name: policies, mountPath: /etc/sidewall-policies, readOnly: true}}]"
            ),
        ];
        fs::write(&ours, values_text.join("\n") + "\n").expect("write values");
        let theirs = dir.path().join("values.yaml");
        fs::write(&theirs, values).expect("write values");
        let docs = crate::chart::render(&[&ours, &theirs]).unwrap_or_else(|e| panic!("{e}"));
        let host_paths = [("/run/sidewall", run.clone())].into_iter().collect();
        let etc = dir.path().join("etc");
        let pod = crate::chart::daemon_pod(&docs, "test-node", &host_paths, &etc);
        let name = format!("sidewalld-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let container = Container { name, pod, ids: Vec::new() };
        let child = spawn_container(&container, &dir.path().join("daemon.log"));
        let mut d = Self {
            child,
            socket: run.join("sidewall.sock"),
            export: run.join("events.json"),
            pins,
            config: etc.join("config.toml"),
            dir,
            launch: Launch::default(),
            container: Some(container),
        };
        d.wait_ready().await;
        d
    }

    /// The host directory the daemon in its image reads policies from (its `policy_dir`).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// The chart's readiness and liveness probe, run in the daemon's container.
    pub fn probe(&self) -> std::process::Output {
        let c = self.container.as_ref().expect("a daemon in its image");
        self.exec(&c.pod.probe)
    }

    /// The daemon container's podman options and config.toml, as the chart rendered them.
    pub fn pod_spec(&self) -> Option<(&[String], &str)> {
        self.container.as_ref().map(|c| (c.pod.options.as_slice(), c.pod.config.as_str()))
    }

    fn exec(&self, cmd: &[String]) -> std::process::Output {
        let c = self.container.as_ref().expect("a daemon in its image");
        let mut p = crate::pod::shared().command();
        p.arg("exec").arg(&c.name).args(cmd);
        p.output().unwrap_or_else(|e| panic!("{p:?}: {e}"))
    }

    /// Kills the daemon with SIGKILL (no chance to clean up), as a crash would.
    pub fn crash(&mut self) {
        if let Some(c) = &self.container {
            // The container's processes, as a node kills a container.
            let _ = crate::pod::shared().command().args(["kill", "--signal", "KILL", &c.name]).output();
            let _ = self.child.wait();
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the daemon again with the same configuration, after a crash.
    pub async fn restart(&mut self) {
        self.crash();
        let log = self.dir.path().join("daemon.log");
        self.child = match &self.container {
            Some(c) => spawn_container(c, &log),
            None => spawn(&self.config, &log, &self.launch),
        };
        self.wait_ready().await;
    }

    /// `sidewalld --cleanup` with this daemon's configuration.
    pub fn cleanup(&self) -> std::process::Output {
        assert!(self.container.is_none(), "a daemon in its image: run its pre_stop");
        Command::new(crate::bin("sidewalld"))
            .arg("--config")
            .arg(&self.config)
            .arg("--cleanup")
            .output()
            .expect("run")
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sidewalld exited with {status} during start:\n{}", self.log());
            }
            if self.socket.exists() && self.try_status().await.is_some() {
                self.note_container_id();
                return;
            }
            assert!(start.elapsed() < START_TIMEOUT, "sidewalld did not start in time:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn note_container_id(&mut self) {
        let Some(c) = &mut self.container else { return };
        let out = crate::pod::shared().command().args(["inspect", "--format", "{{.Id}}", &c.name]).output();
        if let Some(id) = out.ok().filter(|o| o.status.success()) {
            c.ids.push(String::from_utf8_lossy(&id.stdout).trim().to_string());
        }
    }

    async fn try_status(&self) -> Option<GetStatusResponse> {
        let mut c = SensorsClient::new(client::connect(&self.address()).await.ok()?);
        Some(c.get_status(GetStatusRequest {}).await.ok()?.into_inner())
    }

    pub fn address(&self) -> Address {
        Address::Unix(self.socket.clone())
    }

    pub fn server_arg(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub async fn client(&self) -> SensorsClient<Channel> {
        SensorsClient::new(client::connect(&self.address()).await.expect("connect to sidewalld"))
    }

    pub async fn status(&self) -> GetStatusResponse {
        self.client().await.get_status(GetStatusRequest {}).await.expect("GetStatus").into_inner()
    }

    /// Opens an event stream; returns once the daemon has registered it.
    pub async fn events(&self, req: GetEventsRequest) -> EventStream {
        let before = self.status().await.subscribers;
        let stream = self.client().await.get_events(req).await.expect("GetEvents").into_inner();
        let start = Instant::now();
        while self.status().await.subscribers <= before && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        EventStream::new(stream)
    }

    /// A copy of `binary` under this daemon's directory: a path no other test executes.
    pub fn private_copy(&self, binary: &str, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::copy(binary, &path).unwrap_or_else(|e| panic!("copy {binary}: {e}"));
        path
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `podman run` of the daemon's container in the foreground, its output in the log.
fn spawn_container(c: &Container, log: &std::path::Path) -> Child {
    let log = fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    let mut cmd = crate::pod::shared().command();
    cmd.args(["run", "--rm", "--name", &c.name])
        .args(&c.pod.options)
        .arg(crate::chart::IMAGE)
        .args(&c.pod.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log);
    cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn spawn(config: &std::path::Path, log: &std::path::Path, launch: &Launch) -> Child {
    let log = fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    let daemon = crate::bin("sidewalld");
    let mut cmd = match launch.wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&daemon);
            c
        }
        None => Command::new(&daemon),
    };
    cmd.arg("--config")
        .arg(config)
        .args(&launch.flags)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("spawn sidewalld")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // What outlives the daemon by design must not outlive the test.
        let _ = fs::remove_dir_all(&self.pins);
    }
}

impl Daemon {
    /// Stops the daemon with SIGTERM, as the kubelet does (SIGKILL after 5 s).
    pub fn stop(&mut self) {
        let Some(c) = &self.container else {
            stop_child(&mut self.child);
            return;
        };
        // SIGTERM to the container, then SIGKILL, as a node stops a pod.
        let podman = crate::pod::shared();
        let _ = podman.command().args(["stop", "--time", "5", &c.name]).output();
        let _ = self.child.wait();
        let _ = podman.command().args(["rm", "--force", "--time", "0", &c.name]).output();
        // podman leaves each container's empty cgroup directory behind.
        for id in &c.ids {
            let _ = fs::remove_dir(
                crate::cgroup::cgroup2_root().join("libpod_parent").join(format!("libpod-{id}")),
            );
        }
    }
}

/// Stops a process this harness started, by its PID: SIGTERM, then SIGKILL after 5 s.
pub fn stop_child(child: &mut Child) {
    // SAFETY: kill(2) of a child this harness started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
