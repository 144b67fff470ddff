//! Compact JWS tokens as clients send them (`palisade_policy::jwt`, SPEC section 3
//! step 10): the token text as is, and its first two segments signed again with the
//! policy's HS256 key, so that the fuzzer reaches the header and claims checks behind
//! the signature with segments of any shape (padding, bad base64, odd JSON).
//!
//! Invariants: a token that verifies meets `check_verified`; an `unknown_kid` refusal
//! names a kid the policy lacks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{NOW, check_verified, policy, sign_segments};
use palisade_policy::TokenError;
use palisade_policy::jwt::token_kid;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let v = &policy().verifier;
    match v.verify(&token, NOW) {
        Ok(c) => check_verified(&token, &c),
        Err(TokenError::Invalid("unknown_kid")) => {
            let kid = token_kid(&token).expect("unknown_kid names a kid");
            assert!(!v.has_kid(&kid));
        }
        Err(_) => {}
    }
    let mut segments = token.split('.');
    if let (Some(h), Some(c)) = (segments.next(), segments.next()) {
        let resigned = sign_segments(h, c);
        if let Ok(claims) = v.verify(&resigned, NOW) {
            check_verified(&resigned, &claims);
        }
    }
});
