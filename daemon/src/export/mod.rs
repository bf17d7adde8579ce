//! The last stage: fan-out to subscribers and the exporters that consume it.
pub mod alertmanager;
pub mod delivery;
pub mod filter;
pub mod hub;
pub mod jsonl;
pub mod metrics;
pub mod otlp;
pub mod otlp_metrics;
pub mod syslog;
