//! The JWT header and claims (`palisade_policy::jwt`): JSON the fuzzer writes, signed
//! with the policy's HS256 key, so every input reaches the claim checks. Input: the
//! claims, or `header \0 claims` (the default header is `{"alg":"HS256","kid":"k1"}`).
//!
//! Invariants: a token that verifies meets `check_verified` (its claims are a JSON
//! object with the subject, issuer and audience asked for, unexpired, unrevoked); a
//! well-formed token whose subject is the input text verifies with that subject.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{AUDIENCE, ISSUER, NOW, check_verified, policy, sign_hs256};

const HEADER: &[u8] = br#"{"alg":"HS256","kid":"k1"}"#;

fuzz_target!(|data: &[u8]| {
    let (header, claims) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (HEADER, data),
    };
    let v = &policy().verifier;
    let token = sign_hs256(header, claims);
    if let Ok(c) = v.verify(&token, NOW) {
        check_verified(&token, &c);
    }

    // The converse, for subjects and token ids of any text.
    let text = String::from_utf8_lossy(claims);
    if text.is_empty() || text.len() > 4096 || text == "revoked-user" || text == "old-user" || text == "revoked-jti" {
        return;
    }
    let claims = serde_json::json!({"sub": text, "jti": text, "iss": ISSUER, "aud": [AUDIENCE], "iat": NOW - 5, "exp": NOW + 60});
    let token = sign_hs256(HEADER, claims.to_string().as_bytes());
    let c = v.verify(&token, NOW).unwrap_or_else(|e| panic!("a well-formed token was refused: {e}"));
    assert_eq!((c.sub.as_str(), c.jti.as_deref(), c.exp, c.iat), (text.as_ref(), Some(text.as_ref()), NOW + 60, Some(NOW - 5)));
    check_verified(&token, &c);
});
