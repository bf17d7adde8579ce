//! The process cache: who each pid is, its exec_id, its parent and ancestors.
pub mod cache;
pub mod procfs;

pub use cache::{ProcEntry, ProcessCache};
