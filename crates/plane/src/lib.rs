//! What the node and the controller share, so that neither links the other:
//!
//! - [`cert`]: a certificate's validity and the expiry warning threshold;
//! - [`tls`]: the control-plane mTLS files (`[control]`, `[nodes_tls]`) and the tonic
//!   server and client configurations built from them;
//! - [`grpc`]: serving tonic services with `grpc.health.v1` and reflection v1 + v1alpha;
//! - [`roles`]: the role a control certificate names (URI SAN) and the check every
//!   control-plane request passes;
//! - [`etcd`]: etcd connect options and the key layout of SPEC section 8;
//! - [`record`]: the node's registry record;
//! - [`selector`]: which sessions an operator command targets;
//! - [`telemetry`]: OTLP export set up from `OTEL_*`, per-service providers, log
//!   output, RPC spans and trace context in gRPC metadata;
//! - `pki` (feature `dev-pki`): the dev and test PKI.

#![forbid(unsafe_code)]

pub mod cert;
pub mod etcd;
pub mod grpc;
#[cfg(feature = "dev-pki")]
pub mod pki;
pub mod record;
pub mod roles;
pub mod selector;
pub mod telemetry;
pub mod tls;

pub use record::NodeRecord;
pub use roles::{Access, Role};
pub use selector::Selector;
pub use tls::{ControlConfig, ControlTls};
