//! One file per kernel hook.
mod exec;
mod exit;
mod fork;
