//! The kernel side as the daemon sees it: BTF offsets, loading and attaching, the ring
//! buffer readers (events and the alert lane) and the programs' counters, and decoding of its records.
pub mod alerts;
pub mod counters;
pub mod decode;
pub mod loader;
pub mod offsets;
pub mod ringbuf;
pub mod tasks;
