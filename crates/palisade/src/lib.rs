//! The `palisade` binary's commands, as a library so tests drive them in process.

pub mod check;
pub mod cli;
pub mod dev;
pub mod ops;
mod shutdown;
pub mod token;
pub mod trace;
