//! Palisade's policy: the document operators write (SPEC section 7), its validation with
//! the offending field named, and the compiled snapshot the handshake hot path reads.
//!
//! Also the pure parsers of untrusted input: Origin, `X-Forwarded-For`, credential
//! carriers and JWT verification. Nothing here does I/O or needs a runtime, so all of it
//! is unit-, property- and fuzz-testable.

pub mod access;
pub mod client_addr;
mod compile;
pub mod control_msg;
pub mod credentials;
mod error;
pub mod jwt;
pub mod mint;
pub mod model;
pub mod origin;
#[cfg(feature = "proto")]
pub mod wire;

pub use compile::{CompiledPolicy, Limits, MessageLimits, RateSpec, parse_rfc3339};
pub use error::PolicyError;
pub use jwt::{Claims, TokenError, Verifier};
pub use model::Policy;
