//! The gRPC API (package sidewall.v1) and where it listens.
pub mod listen;
pub mod service;
