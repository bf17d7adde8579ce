//! The generated types of sidewall's gRPC API, package `sidewall.v1`.
//!
//! Every message also implements serde with the canonical proto3 JSON mapping and proto
//! field names (snake_case), which is the form of the JSON-lines export.

pub mod client;
pub mod documents;
mod timestamp;
pub use timestamp::Timestamp;

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sidewall.v1");
    include!(concat!(env!("OUT_DIR"), "/sidewall.v1.serde.rs"));
}
