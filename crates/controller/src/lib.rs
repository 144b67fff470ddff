//! The Palisade controller (SPEC section 6): discovers nodes in etcd (or an in-process
//! list in dev mode), keeps mTLS clients to every node, stores the versioned policy in
//! etcd with a compare on the version, fans operator actions out with bounded
//! concurrency, and serves `palisade.controller.v1.FleetControl`.

pub mod config;
pub mod directory;
pub mod events;
pub mod lag;
mod rpc;
pub mod service;
pub mod status;
pub mod store;
pub mod telemetry;
mod watch;

pub use config::ControllerConfig;
pub use service::{Controller, ControllerHandle};
