//! A release sidewalld started by the bench: its own temp dir, socket, config and bpffs pin
//! directory. Dropping it stops it by PID (SIGTERM, then SIGKILL) and removes what it pinned
//! (`sidewalld --cleanup`), so that no enforcement outlives its configuration.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sidewall_proto::{
    client::{self, Address},
    v1::{GetStatusRequest, GetStatusResponse, ListPoliciesRequest, sensors_client::SensorsClient},
};
use tonic::transport::Channel;

static NEXT: AtomicU32 = AtomicU32::new(0);
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The release daemon: `$SIDEWALLD`, else `sidewalld` beside this binary (target/release).
pub fn locate() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SIDEWALLD") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let path = exe.parent().context("no parent directory")?.join("sidewalld");
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release --workspace` first (make bench does)",
            path.display()
        );
    }
    Ok(path)
}

pub struct Sidewalld {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub export: Option<PathBuf>,
    pins: PathBuf,
    config: PathBuf,
    bin: PathBuf,
    /// GetStatus right after start: which sensors attached.
    pub first_status: GetStatusResponse,
}

impl Sidewalld {
    /// Starts the daemon with its built-in configuration, a socket, pin directory and log of
    /// its own, an export file when `export`, and `extra` TOML lines.
    pub async fn start(bin: &Path, extra: &str, export: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("sidewall-bench-").tempdir().context("tempdir")?;
        let socket = dir.path().join("sidewall.sock");
        let export = export.then(|| dir.path().join("events.json"));
        let config = dir.path().join("config.toml");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pins = PathBuf::from(format!("/sys/fs/bpf/sidewall-bench-{}-{n}", std::process::id()));
        let export_line = export.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        fs::write(
            &config,
            format!(
                "node_name = \"bench\"\ngrpc_address = \"unix://{}\"\nexport_file = \"{export_line}\"\nbpf_pin_dir = \"{}\"\n{extra}\n",
                socket.display(),
                pins.display()
            ),
        )
        .context("write config")?;
        let log = fs::File::create(dir.path().join("daemon.log")).context("log file")?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut d = Self {
            child,
            dir,
            socket,
            export,
            pins,
            config,
            bin: bin.to_path_buf(),
            first_status: GetStatusResponse::default(),
        };
        d.first_status = d.wait_ready().await?;
        Ok(d)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<GetStatusResponse> {
        let start = Instant::now();
        loop {
            crate::sys::check_interrupted()?;
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("sidewalld exited with {status} during start:\n{}", self.log_tail(30));
            }
            if self.socket.exists()
                && let Ok(s) = self.status().await
            {
                return Ok(s);
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("sidewalld did not start in time:\n{}", self.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn address(&self) -> Address {
        Address::Unix(self.socket.clone())
    }

    pub async fn client(&self) -> anyhow::Result<SensorsClient<Channel>> {
        let channel = client::connect(&self.address()).await.context("connect to sidewalld")?;
        Ok(SensorsClient::new(channel).max_decoding_message_size(64 << 20))
    }

    pub async fn status(&self) -> anyhow::Result<GetStatusResponse> {
        Ok(self.client().await?.get_status(GetStatusRequest {}).await?.into_inner())
    }

    /// Waits until the daemon lists policy `name` (e.g. "default/bench-10").
    pub async fn wait_policy(&self, name: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let list = self.client().await?.list_policies(ListPoliciesRequest {}).await?.into_inner();
            if list.policies.iter().any(|p| p.name == name) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("policy {name} was not loaded:\n{}", self.log_tail(20))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sensors that did not attach, as "name: reason".
    pub fn failed_sensors(&self) -> Vec<String> {
        self.first_status
            .sensors
            .iter()
            .filter(|s| s.state == "failed")
            .map(|s| format!("{}: {}", s.name, s.reason))
            .collect()
    }
}

impl Drop for Sidewalld {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) of the daemon this bench started, by its PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        let mut exited = false;
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Enforcement pinned under bpffs outlives the daemon by design: remove it.
        let _ = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .arg("--cleanup")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.pins.exists() {
            let _ = fs::remove_dir_all(&self.pins);
        }
    }
}
