//! Policies: the model (`model`), reading and validating documents (`parse`), the set in
//! force (`store`), detections (`detect`), and compiling rules into the kernel's maps
//! (`enforce`), and cutting the established connections those maps now forbid (`cut`).
//! From observed behaviour to a policy (`suggest`), recorded events judged offline
//! (`replay`), and two policies compared in their own terms (`diff`).
pub mod audit;
pub mod crd;
pub mod cut;
pub mod detect;
pub mod diff;
pub mod enforce;
pub mod engine;
pub mod model;
pub mod parse;
pub mod protection;
pub mod replay;
pub mod store;
pub mod suggest;
