//! Configuration: the embedded defaults, overlaid by a TOML file, overlaid by flags.

pub mod api;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::api::{InsecureRole, Listener};
pub use sidewall_proto::client::{Address, parse_address};

const DEFAULT_SOCKET: &str = "/run/sidewall/sidewall.sock";

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {field}: {message}")]
    Invalid { origin: String, field: &'static str, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node_name: String,
    /// One address, or several (a unix socket and a TCP listener).
    #[serde(deserialize_with = "api::one_or_many")]
    pub grpc_address: Vec<String>,
    pub export_file: String,
    pub export_file_max_mb: u64,
    pub export_file_keep: u32,
    pub export_file_events: OutputEvents,
    pub ring_buffer_mb: u32,
    pub subscriber_queue: usize,
    pub export_queue: usize,
    pub process_grace_seconds: u64,
    pub kubernetes: KubeMode,
    pub kubeconfig: String,
    pub podman_storage: String,
    pub btf_path: PathBuf,
    pub sensor_set: SensorSet,
    pub policy_dir: String,
    pub metrics_address: String,
    pub metrics_labels: Vec<String>,
    pub metrics_max_series: usize,
    pub otlp_endpoint: String,
    pub otlp_metrics_interval_seconds: u64,
    /// gRPC metadata of every OTLP export, "key=value" each.
    pub otlp_headers: Vec<String>,
    pub bpf_pin_dir: String,
    pub log: String,
    /// Where the runtime hook leaves the record of a container it let start unguarded.
    pub hook_spool_dir: String,
    /// Sensors not to attach, by name (never one that enforces).
    pub sensors_off: Vec<String>,
    /// Mode and group of the unix socket (who may connect; roles still apply).
    pub grpc_socket_mode: u32,
    pub grpc_socket_group: String,
    /// Mutual TLS of TCP listeners: PEM files, reloaded when they change.
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_client_ca: String,
    /// Plaintext TCP listeners, on purpose.
    pub insecure_tcp: bool,
    pub api_insecure_tcp_role: InsecureRole,
    /// Who holds which role: unix peers by uid or gid, TLS peers by certificate name.
    pub api_admin_uids: Vec<u32>,
    pub api_admin_gids: Vec<u32>,
    pub api_read_only_uids: Vec<u32>,
    pub api_read_only_gids: Vec<u32>,
    pub api_admin_names: Vec<String>,
    pub api_read_only_names: Vec<String>,
    pub alert_ring_buffer_kb: u32,
    pub alert_queue: usize,
    pub alert_rate: u64,
    pub alert_burst: u64,
    /// "namespace/name" of the DaemonSet this daemon runs in: when it is gone or being
    /// deleted at shutdown, the pins are removed too. Empty: enforcement always outlives.
    pub uninstall_daemonset: String,
    /// Alertmanager base URLs that receive every policy alert.
    #[serde(deserialize_with = "api::one_or_many")]
    pub alertmanager_url: Vec<String>,
    /// Syslog (RFC 5424) output: tcp://host:port or tls://host:port, what it carries
    /// ("alerts" or "all"), and the CA that signs a TLS server's certificate.
    pub syslog_address: String,
    pub syslog_events: OutputEvents,
    pub syslog_tls_ca: String,
    /// Retries of a batch an output (Alertmanager, syslog) could not deliver, with backoff.
    pub output_retries: u32,
}

/// Which events an output (the export file, syslog) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputEvents {
    Alerts,
    All,
}

/// Which sensors attach: the default set costs nothing on unrelated syscalls; the strict set
/// adds syscall tracepoints (unix socket connects, and more) at a cost on every syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorSet {
    Default,
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeMode {
    Auto,
    On,
    Off,
}

/// Values given on the command line; `None` keeps the file's or the default value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub node_name: Option<String>,
    /// Replaces the configured addresses when given (the flag may be repeated).
    pub grpc_address: Option<Vec<String>>,
    pub export_file: Option<String>,
    pub export_file_max_mb: Option<u64>,
    pub export_file_keep: Option<u32>,
    pub ring_buffer_mb: Option<u32>,
    pub kubeconfig: Option<String>,
    pub policy_dir: Option<String>,
    pub metrics_address: Option<String>,
    pub log: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_client_ca: Option<String>,
    /// `--insecure-tcp`: true when given.
    pub insecure_tcp: Option<bool>,
    pub bpf_pin_dir: Option<String>,
    pub uninstall_daemonset: Option<String>,
    /// Replaces the configured Alertmanager URLs when given (the flag may be repeated).
    pub alertmanager_url: Option<Vec<String>>,
}

impl Config {
    /// Defaults, then `file` if given, then `flags`; validated.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Self, ConfigError> {
        let mut table = parse_table("built-in defaults", DEFAULT_TOML)?;
        let mut origin = "built-in defaults".to_string();
        if let Some(path) = file {
            origin = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: origin.clone(), source })?;
            for (k, v) in parse_table(&origin, &text)? {
                table.insert(k, v);
            }
        }
        let mut cfg: Config = table.try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
            origin: origin.clone(),
            message: e.message().to_string(),
        })?;
        cfg.apply_otel_env(|name| std::env::var(name).ok());
        cfg.apply(flags);
        cfg.validate(&origin)?;
        Ok(cfg)
    }

    /// The OpenTelemetry exporter variables, under the file's keys: the endpoint
    /// (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`) when none is
    /// configured, and the headers of `OTEL_EXPORTER_OTLP_HEADERS` the file does not set.
    fn apply_otel_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if self.otlp_endpoint.is_empty()
            && let Some(e) =
                var("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        {
            self.otlp_endpoint = e;
        }
        let Some(text) = var("OTEL_EXPORTER_OTLP_HEADERS") else { return };
        match crate::export::otlp::parse_pairs(&text) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    if !self.otlp_headers().iter().any(|(key, _)| key.eq_ignore_ascii_case(&k)) {
                        self.otlp_headers.push(format!("{k}={v}"));
                    }
                }
            }
            // Kept as it is, so that validation names the problem.
            Err(_) => self.otlp_headers.push(text),
        }
    }

    /// `otlp_headers` as (lowercase name, value) pairs; malformed entries left out (validate
    /// refuses them).
    pub fn otlp_headers(&self) -> Vec<(String, String)> {
        self.otlp_headers
            .iter()
            .filter_map(|h| h.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect()
    }

    fn apply(&mut self, o: &Overrides) {
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = &o.$f { self.$f = v.clone(); })* };
        }
        set!(
            node_name,
            grpc_address,
            export_file,
            export_file_max_mb,
            export_file_keep,
            ring_buffer_mb,
            kubeconfig,
            policy_dir,
            metrics_address,
            log,
            tls_cert,
            tls_key,
            tls_client_ca,
            insecure_tcp,
            bpf_pin_dir,
            uninstall_daemonset,
            alertmanager_url
        );
        // Daemons sharing a bpffs (kind nodes on one host) each need their own pins.
        self.bpf_pin_dir = self.bpf_pin_dir.replace("{node}", &self.node());
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad =
            |field, message: String| Err(ConfigError::Invalid { origin: origin.into(), field, message });
        if let Err((field, message)) = api::validate(self) {
            return bad(field, message);
        }
        if !self.ring_buffer_mb.is_power_of_two() || self.ring_buffer_mb > 1024 {
            return bad(
                "ring_buffer_mb",
                format!("{} is not a power of two between 1 and 1024", self.ring_buffer_mb),
            );
        }
        if !self.alert_ring_buffer_kb.is_power_of_two()
            || !(4..=1024 * 1024).contains(&self.alert_ring_buffer_kb)
        {
            return bad(
                "alert_ring_buffer_kb",
                format!("{} is not a power of two between 4 and 1048576", self.alert_ring_buffer_kb),
            );
        }
        if self.alert_queue == 0 {
            return bad("alert_queue", "must be at least 1".to_string());
        }
        // The kernel computes in billionths of a record: keep rate and burst far from overflow.
        if self.alert_rate > 1_000_000 || self.alert_burst > 1_000_000 {
            return bad("alert_rate", "alert_rate and alert_burst must be at most 1000000".to_string());
        }
        if self.alert_rate > 0 && self.alert_burst == 0 {
            return bad("alert_burst", "must be at least 1 when alert_rate is set".to_string());
        }
        if !self.metrics_address.is_empty() && self.metrics_address.parse::<std::net::SocketAddr>().is_err() {
            return bad("metrics_address", format!("{:?} is not ip:port", self.metrics_address));
        }
        if self.otlp_metrics_interval_seconds == 0 {
            return bad("otlp_metrics_interval_seconds", "must be at least 1".to_string());
        }
        let otlp = &self.otlp_endpoint;
        if !(otlp.is_empty() || otlp.starts_with("http://") || otlp.starts_with("https://")) {
            return bad(
                "otlp_endpoint",
                format!("{:?} must start with http:// or https://", self.otlp_endpoint),
            );
        }
        for h in &self.otlp_headers {
            let ok = h.split_once('=').is_some_and(|(k, v)| {
                let probe = [(k.trim().to_ascii_lowercase(), v.trim().to_string())];
                !k.trim().is_empty() && crate::export::otlp::request((), &probe).is_ok()
            });
            if !ok {
                // The value may be a secret: name the header only.
                let name = h.split_once('=').map_or("(no name)", |(k, _)| k);
                return bad(
                    "otlp_headers",
                    format!("{name:?}: expected name=value with a valid gRPC header name and value"),
                );
            }
        }
        for url in &self.alertmanager_url {
            if let Err(e) = crate::export::alertmanager::alerts_url(url) {
                return bad("alertmanager_url", e);
            }
        }
        if !self.syslog_address.is_empty()
            && let Err(e) = crate::export::syslog::Target::parse(&self.syslog_address)
        {
            return bad("syslog_address", e);
        }
        if let Err(e) = LabelFilter::parse(&self.metrics_labels) {
            return bad("metrics_labels", e);
        }
        if self.export_file_max_mb == 0 {
            return bad("export_file_max_mb", "must be at least 1".into());
        }
        if self.subscriber_queue == 0 || self.export_queue == 0 {
            return bad("subscriber_queue", "queues must hold at least one event".into());
        }
        if !self.bpf_pin_dir.is_empty() && !Path::new(&self.bpf_pin_dir).is_absolute() {
            return bad("bpf_pin_dir", format!("{:?} is not an absolute path", self.bpf_pin_dir));
        }
        if !self.uninstall_daemonset.is_empty()
            && crate::uninstall::parse(&self.uninstall_daemonset).is_none()
        {
            return bad(
                "uninstall_daemonset",
                format!("{:?} is not namespace/name", self.uninstall_daemonset),
            );
        }
        for name in &self.sensors_off {
            if let Err(e) = crate::kernel::loader::can_be_off(name) {
                return bad("sensors_off", e);
            }
        }
        Ok(())
    }

    /// The first address: the unix socket by default.
    pub fn address(&self) -> Address {
        // validate() has checked them; the fallback is never taken.
        self.grpc_address
            .first()
            .and_then(|a| parse_address(a).ok())
            .unwrap_or_else(|| Address::Unix(DEFAULT_SOCKET.into()))
    }

    /// Every address, validated.
    pub fn addresses(&self) -> Vec<Address> {
        self.grpc_address.iter().filter_map(|a| parse_address(a).ok()).collect()
    }

    /// Whether to watch the Kubernetes API: asked for, or a kubeconfig given, or running in a
    /// cluster (the service host variable every pod gets).
    pub fn use_kubernetes(&self) -> bool {
        match self.kubernetes {
            KubeMode::On => true,
            KubeMode::Off => false,
            KubeMode::Auto => {
                !self.kubeconfig.is_empty() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            }
        }
    }

    /// The node name, defaulting to the host name.
    pub fn node(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    }
}

/// A listen address must be an IP and port; host names are for clients.
pub fn tcp_listen_addr(authority: &str) -> Result<std::net::SocketAddr, String> {
    authority.parse().map_err(|_| format!("tcp://{authority}: listen address must be ip:port"))
}

/// Which workload labels are kept.
#[derive(Clone, Copy, Debug)]
pub struct LabelFilter {
    pub namespace: bool,
    pub pod: bool,
    pub container: bool,
}

impl LabelFilter {
    /// From a list like ["namespace", "pod", "container"]; unknown names are an error.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        let mut f = Self { namespace: false, pod: false, container: false };
        for n in names {
            match n.as_str() {
                "namespace" => f.namespace = true,
                "pod" => f.pod = true,
                "container" => f.container = true,
                other => return Err(format!("{other:?} is not one of namespace, pod, container")),
            }
        }
        Ok(f)
    }
}

fn parse_table(origin: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Parse { origin: origin.into(), message: located(text, &e) })
}

/// "line L, column C: message" for a TOML error.
fn located(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn defaults_load() {
        let c = Config::load(None, &Overrides::default()).expect("defaults are valid");
        assert_eq!(c.address(), Address::Unix("/run/sidewall/sidewall.sock".into()));
        assert_eq!(c.ring_buffer_mb, 8);
    }

    #[test]
    fn alert_lane_keys_load_and_are_checked() {
        let c = Config::load(None, &Overrides::default()).expect("defaults are valid");
        assert_eq!((c.alert_ring_buffer_kb, c.alert_rate, c.alert_burst), (1024, 100, 200));
        let f = file("alert_rate = 5\nalert_burst = 7\nalert_ring_buffer_kb = 64\n");
        let c = Config::load(Some(f.path()), &Overrides::default()).expect("valid");
        assert_eq!((c.alert_ring_buffer_kb, c.alert_rate, c.alert_burst), (64, 5, 7));
        for bad in
            ["alert_ring_buffer_kb = 100\n", "alert_rate = 2000000\n", "alert_rate = 1\nalert_burst = 0\n"]
        {
            let f = file(bad);
            assert!(Config::load(Some(f.path()), &Overrides::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn export_file_carries_every_event_or_alerts_only() {
        let c = Config::load(None, &Overrides::default()).expect("defaults are valid");
        assert_eq!(c.export_file_events, OutputEvents::All);
        let f = file("export_file_events = \"alerts\"\n");
        let c = Config::load(Some(f.path()), &Overrides::default()).expect("valid");
        assert_eq!(c.export_file_events, OutputEvents::Alerts);
        let f = file("export_file_events = \"alert\"\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("unknown variant `alert`"), "{e}");
    }

    #[test]
    fn file_then_flags_override() {
        let f = file("export_file = \"/tmp/e.json\"\nring_buffer_mb = 16\n");
        let flags = Overrides { ring_buffer_mb: Some(32), ..Default::default() };
        let c = Config::load(Some(f.path()), &flags).expect("valid");
        assert_eq!(c.export_file, "/tmp/e.json");
        assert_eq!(c.ring_buffer_mb, 32);
    }

    #[test]
    fn errors_name_file_place_and_field() {
        let f = file("node_name = \"a\"\nring_buffer_mb = \"big\"\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(e.starts_with(&f.path().display().to_string()), "{e}");
        assert!(e.contains("ring_buffer_mb") || e.contains("invalid type"), "{e}");

        let f = file("grpc_adress = \"x\"\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("unknown field `grpc_adress`"), "{e}");

        let f = file("ring_buffer_mb = 3\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("ring_buffer_mb: 3 is not a power of two"), "{e}");

        let f = file("x = [\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("line "), "{e}");
    }

    #[test]
    fn only_sensors_that_do_not_enforce_can_be_turned_off() {
        let f = file("sensors_off = [\"cgroup_mkdir\"]\n");
        let c = Config::load(Some(f.path()), &Overrides::default()).expect("valid");
        assert_eq!(c.sensors_off, ["cgroup_mkdir"]);
        let f = file("sensors_off = [\"inet_connect\"]\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(
            e.contains("sensors_off: \"inet_connect\" cannot be turned off: its program connect4 enforces"),
            "{e}"
        );
        let f = file("sensors_off = [\"cgroup_mkdri\"]\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("\"cgroup_mkdri\" is not a sensor"), "{e}");
    }

    #[test]
    fn pin_dir_takes_the_node_name() {
        let f = file("node_name = \"kind-worker2\"\nbpf_pin_dir = \"/sys/fs/bpf/sidewall/{node}\"\n");
        let c = Config::load(Some(f.path()), &Overrides::default()).expect("valid");
        assert_eq!(c.bpf_pin_dir, "/sys/fs/bpf/sidewall/kind-worker2");
        let flags = Overrides { bpf_pin_dir: Some("/sys/fs/bpf/x-{node}".into()), ..Default::default() };
        assert_eq!(
            Config::load(Some(f.path()), &flags).expect("valid").bpf_pin_dir,
            "/sys/fs/bpf/x-kind-worker2"
        );
        let flags = Overrides { bpf_pin_dir: Some("pins".into()), ..Default::default() };
        let e = Config::load(None, &flags).unwrap_err().to_string();
        assert!(e.contains("bpf_pin_dir: \"pins\" is not an absolute path"), "{e}");
    }

    #[test]
    fn otel_variables_fill_what_the_file_leaves_open() {
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4317".to_string()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("Authorization=Bearer%20t,x-team=sec".to_string()),
            _ => None,
        };
        let f = file("otlp_headers = [\"x-team=soc\"]\n");
        let mut c = Config::load(Some(f.path()), &Overrides::default()).expect("valid");
        c.apply_otel_env(env);
        assert_eq!(c.otlp_endpoint, "http://collector:4317");
        let want =
            [("x-team", "soc"), ("authorization", "Bearer t")].map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(c.otlp_headers(), want);
        let f = file("otlp_headers = [\"bad header=secret\"]\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("otlp_headers: \"bad header\"") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn tcp_listen_needs_an_ip() {
        assert!(tcp_listen_addr("127.0.0.1:50051").is_ok());
        assert!(tcp_listen_addr("[::1]:1").is_ok());
        assert!(tcp_listen_addr("localhost:1").is_err());
    }
}
