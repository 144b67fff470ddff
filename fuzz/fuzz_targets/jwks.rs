//! JWKS documents fetched from `auth.jwks_url` (`palisade_policy::jwt::parse_jwks`).
//!
//! Invariants: every key taken is filed under its own kid, is never an HMAC key (a JWKS
//! is public), and keys taken plus entries skipped never exceed the entries listed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::jwt::{alg_name, parse_jwks};

fuzz_target!(|data: &[u8]| {
    let Ok((keys, skipped)) = parse_jwks(data) else { return };
    let doc: serde_json::Value = serde_json::from_slice(data).expect("a JWKS that parsed is JSON");
    // `{"keys": [...]}`, or the same struct as a one-element sequence (serde's derive
    // accepts `[[...]]` too).
    let list = doc.get("keys").or_else(|| doc.get(0)).and_then(|k| k.as_array()).expect("a keys array");
    assert!(keys.len() + skipped <= list.len(), "{} keys + {skipped} skipped of {}", keys.len(), list.len());
    for (kid, key) in &keys {
        assert_eq!(&key.kid, kid);
        assert!(!alg_name(key.alg).starts_with("HS"), "a symmetric key from a JWKS");
    }
});
