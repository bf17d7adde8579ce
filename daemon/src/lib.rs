//! sidewalld: the node daemon. Data flows one way (see `pipeline`):
//! kernel (`kernel`) -> decode -> enrich (`process`, `identity`, `net`, `isolation`) ->
//! detect and enforce (`policy::engine`) -> act -> publish -> fan-out and exporters (`export`)
//! -> gRPC (`api`). `runtime` brings the runtime hook's requests to the pipeline. `status`
//! reports on all of it; `config` and `clock` are leaves.
pub mod api;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod event;
pub mod export;
pub mod identity;
pub mod isolation;
pub mod kernel;
pub mod net;
pub mod pipeline;
pub mod policy;
pub mod process;
pub mod runtime;
pub mod stats;
pub mod status;
#[cfg(test)]
pub(crate) mod testing;
pub mod uninstall;
