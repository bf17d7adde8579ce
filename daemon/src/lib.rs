//! sidewalld: the node daemon. Data flows one way:
//! kernel (`kernel`) -> decode -> process cache (`process`) -> workload identity (`identity`)
//! -> sockets and flows (`net`), namespaces and access (`isolation`) -> events (`pipeline`) -> fan-out and exporters (`export`) -> gRPC (`api`).
pub mod api;
pub mod config;
pub mod daemon;
pub mod event;
pub mod export;
pub mod identity;
pub mod isolation;
pub mod kernel;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod policy;
pub mod process;
pub mod stats;
#[cfg(test)]
pub(crate) mod testing;
