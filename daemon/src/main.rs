//! `sidewalld`: the sidewall node daemon (needs root: it loads eBPF programs).

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use sidewalld::config::{Config, DEFAULT_TOML, Overrides};

/// sidewall node daemon: eBPF sensors for zero trust inside the pod.
#[derive(Parser, Debug)]
#[command(name = "sidewalld", version)]
struct Args {
    /// TOML configuration file; its keys override the built-in defaults (see --print-default-config).
    #[arg(long, short = 'c', env = "SIDEWALL_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address: unix:///path or tcp://ip:port; repeat it for several listeners.
    /// TCP needs --tls-cert, --tls-key and --tls-client-ca, or --insecure-tcp.
    #[arg(long)]
    grpc_address: Vec<String>,
    /// Write every event as a JSON line to this file (rotated by size).
    #[arg(long)]
    export_file: Option<String>,
    /// Rotate the export file at this many MiB.
    #[arg(long)]
    export_file_max_mb: Option<u64>,
    /// Rotated export files to keep.
    #[arg(long)]
    export_file_keep: Option<u32>,
    /// Node name in events; defaults to the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// Kernel ring buffer size in MiB (power of two).
    #[arg(long)]
    ring_buffer_mb: Option<u32>,
    /// kubeconfig for the Kubernetes API (default: in-cluster configuration when in a cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<String>,
    /// Directory of SidecarPolicy documents, reloaded when they change.
    #[arg(long)]
    policy_dir: Option<String>,
    /// Serve Prometheus metrics on this ip:port (/metrics).
    #[arg(long)]
    metrics_address: Option<String>,
    /// Log filter (tracing-subscriber syntax), e.g. "debug".
    #[arg(long, env = "SIDEWALL_LOG")]
    log: Option<String>,
    /// Server certificate (PEM, with its chain) of the TCP listeners; reloaded when it changes.
    #[arg(long)]
    tls_cert: Option<String>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long)]
    tls_key: Option<String>,
    /// CA (PEM) that signs the client certificates: clients without one are refused.
    #[arg(long)]
    tls_client_ca: Option<String>,
    /// Serve TCP in plaintext, without client authentication (a warning in the log and in
    /// `sidewall status`; every peer gets api_insecure_tcp_role).
    #[arg(long)]
    insecure_tcp: bool,
    /// bpffs directory of what outlives the daemon (pinned policy maps and enforcing programs);
    /// "{node}" stands for the node name, so daemons sharing a bpffs (kind nodes) keep apart.
    #[arg(long)]
    bpf_pin_dir: Option<String>,
    /// "namespace/name" of this daemon's DaemonSet: when it is deleted (an uninstall), the
    /// daemon removes its pinned enforcement as it stops.
    #[arg(long)]
    uninstall_daemonset: Option<String>,
    /// Post every policy alert to this Alertmanager (base URL, e.g. http://alertmanager:9093);
    /// repeat it for several.
    #[arg(long)]
    alertmanager_url: Vec<String>,
    /// Print the built-in configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Remove everything the daemon leaves in the kernel (pinned programs and maps under
    /// bpf_pin_dir, which keep enforcing while the daemon is down) and its socket, then exit.
    #[arg(long)]
    cleanup: bool,
    /// Print the SidecarPolicy CustomResourceDefinition (generated from the types) and exit.
    #[arg(long)]
    print_crd: bool,
    /// Print the ClusterSidecarPolicy CustomResourceDefinition and exit.
    #[arg(long)]
    print_cluster_crd: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_crd {
        use kube::CustomResourceExt as _;
        match serde_yaml_ng::to_string(&sidewalld::policy::model::SidecarPolicy::crd()) {
            Ok(y) => print!("{y}"),
            Err(e) => {
                eprintln!("sidewalld: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if args.print_cluster_crd {
        use kube::CustomResourceExt as _;
        match serde_yaml_ng::to_string(&sidewalld::policy::model::ClusterSidecarPolicy::crd()) {
            Ok(y) => print!("{y}"),
            Err(e) => {
                eprintln!("sidewalld: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if args.print_default_config {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let flags = Overrides {
        node_name: args.node_name,
        grpc_address: (!args.grpc_address.is_empty()).then_some(args.grpc_address),
        export_file: args.export_file,
        export_file_max_mb: args.export_file_max_mb,
        export_file_keep: args.export_file_keep,
        ring_buffer_mb: args.ring_buffer_mb,
        kubeconfig: args.kubeconfig,
        policy_dir: args.policy_dir,
        metrics_address: args.metrics_address,
        log: args.log,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_client_ca: args.tls_client_ca,
        insecure_tcp: args.insecure_tcp.then_some(true),
        bpf_pin_dir: args.bpf_pin_dir,
        uninstall_daemonset: args.uninstall_daemonset,
        alertmanager_url: (!args.alertmanager_url.is_empty()).then_some(args.alertmanager_url),
    };
    let cfg = match Config::load(args.config.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidewalld: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg.log);
    if args.cleanup {
        return cleanup(&cfg);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidewalld: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(sidewalld::daemon::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sidewalld: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cleanup(cfg: &Config) -> ExitCode {
    if !cfg.bpf_pin_dir.is_empty()
        && let Err(e) = sidewalld::kernel::loader::cleanup(std::path::Path::new(&cfg.bpf_pin_dir))
    {
        eprintln!("sidewalld: cannot remove {}: {e}", cfg.bpf_pin_dir);
        return ExitCode::FAILURE;
    }
    for address in cfg.addresses() {
        // Only a stale socket: a live daemon is still answering on it.
        if let sidewalld::config::Address::Unix(path) = address
            && std::os::unix::net::UnixStream::connect(&path).is_err()
        {
            let _ = std::fs::remove_file(&path);
        }
    }
    println!(
        "removed {} and the socket",
        if cfg.bpf_pin_dir.is_empty() { "nothing pinned" } else { &cfg.bpf_pin_dir }
    );
    ExitCode::SUCCESS
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
