//! The gRPC API (package sidewall.v1): where it listens (`listen`), who is calling (`peer`),
//! what they may do (`access`), mutual TLS (`tls`), and the service itself (`service`).
pub mod access;
pub mod listen;
pub mod peer;
pub mod service;
pub mod tls;
