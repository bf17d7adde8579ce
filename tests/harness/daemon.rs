//! A sidewalld process for one test, with its own socket, export file and config.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
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
        let mut d = Self { child, dir, socket, export, pins, config, launch };
        d.wait_ready().await;
        d
    }

    /// Kills the daemon with SIGKILL (no chance to clean up), as a crash would.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the daemon again with the same configuration, after a crash.
    pub async fn restart(&mut self) {
        self.crash();
        self.child = spawn(&self.config, &self.dir.path().join("daemon.log"), &self.launch);
        self.wait_ready().await;
    }

    /// `sidewalld --cleanup` with this daemon's configuration.
    pub fn cleanup(&self) -> std::process::Output {
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
                return;
            }
            assert!(start.elapsed() < START_TIMEOUT, "sidewalld did not start in time:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
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
        stop_child(&mut self.child);
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
