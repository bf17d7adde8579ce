//! `sidewall-oci-hook`: the OCI runtime hook that puts a container's rule in the kernel before
//! the container runs (see docs/runtime-hook.md).
//!
//! The runtime (podman, CRI-O, or containerd through its NRI hook injection) runs it at the
//! `createRuntime` stage with the container's state on stdin, and starts the container only
//! when it returns. It asks sidewalld's `PrepareContainer`, which answers once the rule is
//! compiled into the kernel's maps. When the daemon does not answer in time:
//!
//! - `--fail open` (default): the container starts; a record is left in `--spool-dir`, which
//!   the daemon reports as an `unguarded_start` policy_alert when it is back;
//! - `--fail closed`: exit 1, and the runtime refuses to start the container.

mod state;

use std::{
    fs,
    io::Read as _,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use sidewall_proto::{
    Timestamp,
    client::{self, Address, DEFAULT_SERVER},
    v1::{PrepareContainerRequest, UnguardedStart, sensors_client::SensorsClient},
};

/// The hook's name in hooks.d and on disk.
const NAME: &str = "sidewall-oci-hook";

#[derive(Parser)]
#[command(name = NAME, version, about = "OCI createRuntime hook: a container starts only once its sidewall rule is in the kernel")]
struct Cli {
    #[command(flatten)]
    hook: HookArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Clone)]
struct HookArgs {
    /// sidewalld's address
    #[arg(long, global = true, value_name = "ADDR", default_value = DEFAULT_SERVER, value_parser = client::parse_address)]
    server: Address,
    /// How long to wait for the daemon's answer (e.g. 2s, 500ms), connecting included
    #[arg(long, global = true, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// What to do without an answer: start the container and leave an alert (open), or
    /// refuse to start it (closed)
    #[arg(long, global = true, value_enum, default_value_t = FailMode::Open)]
    fail: FailMode,
    /// Where fail-open records go, for the daemon to report (its hook_spool_dir)
    #[arg(long, global = true, value_name = "DIR", default_value = "/run/sidewall/unguarded")]
    spool_dir: PathBuf,
    /// Pods of this Kubernetes namespace start even when failing closed (recorded as
    /// unguarded): sidewall's own, or the daemon could never come back (repeatable)
    #[arg(long = "allow-namespace", global = true, value_name = "NS")]
    allow_namespaces: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FailMode {
    Open,
    Closed,
}

#[derive(Subcommand)]
enum Command {
    /// Copy this binary to BIN_DIR and register it in HOOKS_DIR (hooks.d JSON for podman and
    /// CRI-O) with the options given
    Install(Places),
    /// Remove what install wrote
    Uninstall(Places),
}

#[derive(Args)]
struct Places {
    #[arg(long, value_name = "HOOKS_DIR", default_value = "/usr/share/containers/oci/hooks.d")]
    hooks_dir: PathBuf,
    #[arg(long, value_name = "BIN_DIR", default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
    /// BIN_DIR as the runtime sees it, when installing from a container with the host's
    /// directory mounted elsewhere (default: BIN_DIR)
    #[arg(long, value_name = "DIR")]
    host_bin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Install(p)) => install(&cli.hook, &p.hooks_dir, &p.bin_dir, p.host_bin_dir.as_deref()),
        Some(Command::Uninstall(p)) => uninstall(&p.hooks_dir, &p.bin_dir),
        None => return run_hook(&cli.hook),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The hook proper: read the state, ask the daemon, apply the failure mode.
fn run_hook(args: &HookArgs) -> ExitCode {
    let deadline = Instant::now() + args.timeout;
    let mut input = Vec::new();
    let prepared = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading the OCI state on stdin: {e}"))
        .and_then(|_| state::parse(&input))
        .and_then(|s| {
            if !s.status.is_empty() && s.status != "creating" {
                // Registered for another stage by mistake: nothing to guard there.
                eprintln!("{NAME}: container {}: state {:?}, not \"creating\": nothing to do (register it for createRuntime)", s.id, s.status);
                return Ok(None);
            }
            let (cgroup_path, annotations) = state::container(&s, Path::new("/proc"))?;
            Ok(Some(PrepareContainerRequest {
                container_id: s.id,
                cgroup_path,
                pid: s.pid,
                annotations,
                timeout_ms: u32::try_from(args.timeout.as_millis()).unwrap_or(u32::MAX),
            }))
        });
    let req = match prepared {
        Ok(Some(req)) => req,
        Ok(None) => return ExitCode::SUCCESS,
        // Without a container to name there is no rule to wait for; the failure mode decides.
        Err(e) => return fail(args, None, &e),
    };
    match ask(args, &req, deadline) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(args, Some(req), &e),
    }
}

/// Asks the daemon, connecting again until the deadline (it may be restarting).
fn ask(args: &HookArgs, req: &PrepareContainerRequest, deadline: Instant) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    rt.block_on(async {
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, client::connect(&args.server)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                    continue;
                }
                Ok(Ok(channel)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let mut sensors = SensorsClient::new(channel);
                    return match tokio::time::timeout(left, sensors.prepare_container(req.clone())).await {
                        Err(_) => Err(format!(
                            "no answer from sidewalld on {} within {} ms",
                            args.server,
                            args.timeout.as_millis()
                        )),
                        Ok(Err(status)) => {
                            Err(format!("sidewalld on {} refused: {}", args.server, status.message()))
                        }
                        Ok(Ok(_)) => Ok(()),
                    };
                }
            }
        }
        Err(format!(
            "no answer from sidewalld on {} within {} ms ({last})",
            args.server,
            args.timeout.as_millis()
        ))
    })
}

/// Without the daemon's answer: refuse the container (closed), or let it start and leave the
/// record the daemon reports (open).
fn fail(args: &HookArgs, req: Option<PrepareContainerRequest>, reason: &str) -> ExitCode {
    let id = req.as_ref().map_or_else(|| "(unknown)".to_string(), |r| r.container_id.clone());
    let namespace = req.as_ref().and_then(|r| {
        ["io.kubernetes.pod.namespace", "io.kubernetes.cri.sandbox-namespace"]
            .iter()
            .find_map(|k| r.annotations.get(*k))
            .cloned()
    });
    let allowed = namespace.as_ref().is_some_and(|ns| args.allow_namespaces.contains(ns));
    if args.fail == FailMode::Closed && !allowed {
        eprintln!(
            "{NAME}: container {id}: refusing to start it: its sidewall rule is not in the kernel: {reason} (--fail closed)"
        );
        return ExitCode::FAILURE;
    }
    let why = if allowed { "--allow-namespace" } else { "--fail open" };
    eprintln!(
        "{NAME}: container {id}: starting it without its sidewall rule: {reason} ({why}; reported as unguarded_start)"
    );
    let rec = UnguardedStart { container: req, time: Some(now()), reason: reason.to_string() };
    if let Err(e) = spool(&args.spool_dir, &rec) {
        eprintln!("{NAME}: container {id}: the unguarded-start record was not written: {e}");
    }
    ExitCode::SUCCESS
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// Writes `rec` whole under `dir` (a temporary name, then a rename): the daemon reads only
/// finished `*.json` records.
fn spool(dir: &Path, rec: &UnguardedStart) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let id = rec.container.as_ref().map(|c| c.container_id.as_str()).unwrap_or("unknown");
    let short: String = id.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
    let stamp = rec.time.map(|t| format!("{}{:09}", t.seconds, t.nanos)).unwrap_or_default();
    let name = format!("{stamp}-{short}-{}", std::process::id());
    let text = serde_json::to_string(rec).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!("{name}.tmp"));
    fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let done = dir.join(format!("{name}.json"));
    fs::rename(&tmp, &done).map_err(|e| format!("{}: {e}", done.display()))
}

/// The hooks.d entry podman and CRI-O read: this hook, at createRuntime, for every container.
fn hook_json(bin: &Path, args: &HookArgs) -> serde_json::Value {
    let fail = match args.fail {
        FailMode::Open => "open",
        FailMode::Closed => "closed",
    };
    let mut argv = vec![
        NAME.to_string(),
        "--server".into(),
        args.server.to_string(),
        "--timeout".into(),
        format!("{}ms", args.timeout.as_millis()),
        "--fail".into(),
        fail.into(),
        "--spool-dir".into(),
        args.spool_dir.display().to_string(),
    ];
    for ns in &args.allow_namespaces {
        argv.extend(["--allow-namespace".into(), ns.clone()]);
    }
    serde_json::json!({
        "version": "1.0.0",
        "hook": {"path": bin, "args": argv},
        "when": {"always": true},
        "stages": ["createRuntime"],
    })
}

fn install(
    args: &HookArgs,
    hooks_dir: &Path,
    bin_dir: &Path,
    host_bin_dir: Option<&Path>,
) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let bin = bin_dir.join(NAME);
    fs::create_dir_all(bin_dir).map_err(|e| format!("{}: {e}", bin_dir.display()))?;
    if me != bin {
        let tmp = bin_dir.join(format!(".{NAME}.tmp"));
        fs::copy(&me, &tmp).map_err(|e| format!("copying {} to {}: {e}", me.display(), tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        fs::rename(&tmp, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    }
    fs::create_dir_all(hooks_dir).map_err(|e| format!("{}: {e}", hooks_dir.display()))?;
    let json = hooks_dir.join("sidewall.json");
    let tmp = hooks_dir.join(".sidewall.json.tmp");
    let registered = host_bin_dir.unwrap_or(bin_dir).join(NAME);
    let text = serde_json::to_string_pretty(&hook_json(&registered, args)).map_err(|e| e.to_string())?;
    fs::write(&tmp, text + "\n").map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, &json).map_err(|e| format!("{}: {e}", json.display()))?;
    println!("installed {} and {}", bin.display(), json.display());
    Ok(())
}

fn uninstall(hooks_dir: &Path, bin_dir: &Path) -> Result<(), String> {
    for path in [hooks_dir.join("sidewall.json"), bin_dir.join(NAME)] {
        match fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(())
}

/// "2s", "500ms", "1.5s", or a number of milliseconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 2s or 500ms");
    let (number, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = number.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v <= 0.0 || v * unit_ms > 3_600_000.0 {
        return Err(format!("{s:?}: a timeout must be above 0 and at most an hour"));
    }
    Ok(Duration::from_micros((v * unit_ms * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidewalls_own_namespace_starts_even_when_failing_closed() {
        let dir = tempfile::tempdir().expect("tmp");
        let args = HookArgs {
            server: Address::Unix("/nonexistent.sock".into()),
            timeout: Duration::from_millis(10),
            fail: FailMode::Closed,
            spool_dir: dir.path().join("spool"),
            allow_namespaces: vec!["sidewall-system".into()],
        };
        let req = |ns: &str| PrepareContainerRequest {
            container_id: "c".repeat(64),
            annotations: [("io.kubernetes.pod.namespace".to_string(), ns.to_string())].into(),
            ..Default::default()
        };
        assert_eq!(fail(&args, Some(req("shop")), "down"), ExitCode::FAILURE);
        assert!(!args.spool_dir.exists(), "a refused container leaves no record");
        assert_eq!(fail(&args, Some(req("sidewall-system")), "down"), ExitCode::SUCCESS);
        assert_eq!(fs::read_dir(&args.spool_dir).expect("spool").count(), 1, "started, and recorded");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("40"), Ok(Duration::from_millis(40)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").expect_err("words").contains("\"soon\""));
    }

    #[test]
    fn spool_records_are_whole_json_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let spool_dir = dir.path().join("spool");
        let rec = UnguardedStart {
            container: Some(PrepareContainerRequest {
                container_id: "ab/cd".repeat(20),
                ..Default::default()
            }),
            time: Some(Timestamp { seconds: 5, nanos: 7 }),
            reason: "no answer".into(),
        };
        spool(&spool_dir, &rec).expect("written");
        let files: Vec<PathBuf> =
            fs::read_dir(&spool_dir).expect("dir").flatten().map(|e| e.path()).collect();
        assert_eq!(files.len(), 1);
        let name = files[0].file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        assert!(name.starts_with("5000000007-abcdabcdabcd-") && name.ends_with(".json"), "{name}");
        let back: UnguardedStart =
            serde_json::from_str(&fs::read_to_string(&files[0]).expect("read")).expect("parse");
        assert_eq!(back, rec);
        let mode = fs::metadata(&spool_dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn the_shipped_hooks_d_entry_is_what_install_writes_by_default() {
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/hooks.d/sidewall.json");
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(shipped).expect("deploy/hooks.d/sidewall.json"))
                .expect("json");
        let defaults = Cli::try_parse_from([NAME]).expect("defaults").hook;
        assert_eq!(v, hook_json(Path::new("/usr/local/bin/sidewall-oci-hook"), &defaults));
    }

    #[test]
    fn install_writes_a_hooks_d_entry_with_the_options_given() {
        let dir = tempfile::tempdir().expect("tmp");
        let args = HookArgs {
            server: Address::Unix("/run/s.sock".into()),
            timeout: Duration::from_millis(1500),
            fail: FailMode::Closed,
            spool_dir: "/run/spool".into(),
            allow_namespaces: vec!["sidewall-system".into()],
        };
        let (hooks, bin) = (dir.path().join("hooks.d"), dir.path().join("bin"));
        install(&args, &hooks, &bin, None).expect("installed");
        assert!(bin.join(NAME).exists());
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(hooks.join("sidewall.json")).expect("json"))
                .expect("parse");
        assert_eq!(v["stages"], serde_json::json!(["createRuntime"]));
        assert_eq!(v["hook"]["path"], bin.join(NAME).display().to_string());
        let argv: Vec<&str> =
            v["hook"]["args"].as_array().expect("args").iter().filter_map(|a| a.as_str()).collect();
        assert_eq!(
            argv,
            [
                NAME,
                "--server",
                "unix:///run/s.sock",
                "--timeout",
                "1500ms",
                "--fail",
                "closed",
                "--spool-dir",
                "/run/spool",
                "--allow-namespace",
                "sidewall-system"
            ]
        );
        install(&args, &hooks, &bin, Some(Path::new("/opt/sidewall/bin"))).expect("installed");
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(hooks.join("sidewall.json")).expect("json"))
                .expect("parse");
        assert_eq!(v["hook"]["path"], "/opt/sidewall/bin/sidewall-oci-hook", "the path the runtime sees");
        uninstall(&hooks, &bin).expect("removed");
        assert!(!hooks.join("sidewall.json").exists() && !bin.join(NAME).exists());
    }
}
