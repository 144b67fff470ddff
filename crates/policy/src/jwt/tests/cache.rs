//! The cache of verified tokens: hits answer what the full check would.

use super::*;

fn jwks(pair: &Pair, kid: &str) -> KeySet {
    use jsonwebtoken::EncodingKey;
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    let key = EncodingKey::from_ec_pem(pair.private_pem.as_bytes()).expect("key");
    let mut jwk = Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    parse_jwks(&serde_json::to_vec(&JwkSet { keys: vec![jwk] }).expect("json")).expect("jwks").0
}

#[test]
fn a_token_verified_once_is_answered_from_the_cache_and_a_refused_one_never_is() {
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(vec![kd("k", "ES256", &ec.public_pem)], |_| {});
    assert_eq!(v.token_cache_stats(), Some((0, 0)), "on by default");
    let t = sign(&ec, None, Some("k"), &claims(json!({"jti": "j-1"})));
    let first = v.verify(&t, NOW).expect("valid");
    assert_eq!(v.verify(&t, NOW + 1), Ok(first.clone()));
    assert_eq!(v.token_cache_stats(), Some((1, 1)));
    // Another signature over the same claims: not the cached token.
    let other = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let forged = format!(
        "{}.{}",
        t.rsplit_once('.').expect("jws").0,
        sign(&other, None, Some("k"), &claims(json!({}))).rsplit_once('.').expect("jws").1
    );
    for _ in 0..2 {
        assert_eq!(v.verify(&forged, NOW), Err(TokenError::Invalid("bad_signature")));
    }
    assert_eq!(v.token_cache_stats(), Some((1, 1)), "refusals are not remembered");
}

#[test]
fn a_hit_checks_the_time_and_the_revocations_again() {
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let keys = vec![kd("k", "ES256", &ec.public_pem)];
    let v = verifier(keys.clone(), |p| {
        p.auth.leeway_seconds = 30;
        p.auth.max_token_lifetime_seconds = Some(3600);
    });
    let short = sign(&ec, None, Some("k"), &claims(json!({"exp": NOW + 10})));
    assert!(v.verify(&short, NOW).is_ok());
    assert!(v.verify(&short, NOW + 39).is_ok(), "within leeway");
    assert_eq!(v.verify(&short, NOW + 40), Err(TokenError::Expired));
    // `nbf`, `iat` and the lifetime are judged at the hit's time too (a clock set back).
    let later = sign(&ec, None, Some("k"), &claims(json!({"nbf": NOW, "iat": null, "exp": NOW + 3000})));
    assert!(v.verify(&later, NOW).is_ok());
    assert_eq!(v.verify(&later, NOW - 100), Err(TokenError::Invalid("not_yet_valid")));
    let no_start = sign(&ec, None, Some("k"), &claims(json!({"iat": null, "exp": NOW + 3620})));
    assert!(v.verify(&no_start, NOW).is_ok());
    assert_eq!(v.verify(&no_start, NOW - 100), Err(TokenError::Invalid("lifetime_exceeded")));
    assert_eq!(v.token_cache_stats().map(|s| s.0), Some(4), "every refusal above came from a hit");
    // A revocation is a new policy: a new verifier, whose cache is empty.
    let alice = sign(&ec, None, Some("k"), &claims(json!({})));
    assert!(v.verify(&alice, NOW).is_ok());
    let revoked = verifier(keys, |p| p.revocations = serde_yaml_ng::from_str(r#"[{ sub: "alice" }]"#).expect("yaml"));
    assert_eq!(revoked.token_cache_stats(), Some((0, 0)));
    assert_eq!(revoked.verify(&alice, NOW), Err(TokenError::Revoked));
}

#[test]
fn a_jwks_key_replaced_or_dropped_is_not_trusted_from_the_cache() {
    let a = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let b = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = Verifier::new(vec![], None, vec![], 30, None, Revocations::default()).with_token_cache(100);
    let t = sign(&a, None, Some("ec"), &claims(json!({})));
    let first = jwks(&a, "ec");
    assert!(v.verify_with(&t, NOW, Some(&first)).is_ok());
    assert!(v.verify_with(&t, NOW, Some(&first)).is_ok());
    assert_eq!(v.token_cache_stats(), Some((1, 1)));
    // The JWKS now maps `ec` to another key: the token is checked in full, and fails.
    assert_eq!(v.verify_with(&t, NOW, Some(&jwks(&b, "ec"))), Err(TokenError::Invalid("bad_signature")));
    assert_eq!(v.verify_with(&t, NOW, Some(&jwks(&b, "other"))), Err(TokenError::Invalid("unknown_kid")));
    assert_eq!(v.verify_with(&t, NOW, None), Err(TokenError::Invalid("unknown_kid")));
    assert_eq!(v.token_cache_stats().map(|s| s.0), Some(1));
}

#[test]
fn the_cache_is_bounded_can_be_off_and_its_size_is_checked() {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let hs = || vec![KeyDoc { kid: "h".into(), alg: "HS256".into(), public_key_pem: None, secret_base64: Some(secret.clone()) }];
    let key = SigningKey::from_text(&secret, Some("HS256")).expect("key");
    let v = verifier(hs(), |p| p.auth.token_cache.max_entries = 16);
    for i in 0..500 {
        let t = key.sign(Some("h"), &claims(json!({"sub": format!("user-{i}")}))).expect("sign");
        assert!(v.verify(&t, NOW).is_ok());
    }
    let (_, held) = v.token_cache_stats().expect("on");
    assert!(held > 0 && held <= 32, "500 tokens, 16 entries: {held} held");
    let off = verifier(hs(), |p| p.auth.token_cache.max_entries = 0);
    assert_eq!(off.token_cache_stats(), None);
    let t = key.sign(Some("h"), &claims(json!({}))).expect("sign");
    assert!(off.verify(&t, NOW).is_ok() && off.verify(&t, NOW).is_ok());
    let mut p = Policy::default();
    p.auth.keys = hs();
    p.auth.token_cache.max_entries = 1_000_001;
    assert_eq!(p.compile(1).map(|_| ()).unwrap_err().field, "auth.token_cache.max_entries");
}

mod equivalence {
    use super::*;
    use proptest::prelude::*;

    const SECRET: [u8; 32] = [3u8; 32];

    fn policy_keys() -> Vec<KeyDoc> {
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD.encode(SECRET);
        vec![KeyDoc { kid: "h".into(), alg: "HS256".into(), public_key_pem: None, secret_base64: Some(secret) }]
    }

    /// A token from a small space, so that the sequences repeat tokens: subjects (one
    /// revoked), `exp`, `nbf` and `iat` around `NOW` or absent, and a signature that is
    /// good or made with another secret.
    fn token(sub: u8, exp: i64, nbf: Option<i64>, iat: Option<i64>, forged: bool) -> String {
        let mut c = json!({"sub": format!("user-{sub}"), "exp": (NOW as i64 + exp) as u64});
        if let Some(n) = nbf {
            c["nbf"] = json!((NOW as i64 + n) as u64);
        }
        c["iat"] = iat.map_or(serde_json::Value::Null, |i| json!((NOW as i64 + i) as u64));
        let secret = if forged { [4u8; 32] } else { SECRET };
        jsonwebtoken::encode(
            &jsonwebtoken::Header { kid: Some("h".into()), ..jsonwebtoken::Header::new(Algorithm::HS256) },
            &c,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .expect("sign")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The cache never changes an answer: any sequence of uses of a few tokens at any
        /// times (the clock may go back) gets the same results with the cache as without.
        #[test]
        fn cached_answers_equal_full_checks(
            pool in proptest::collection::vec(
                (0u8..3, -100i64..200, proptest::option::of(-100i64..100), proptest::option::of(-100i64..100), any::<bool>()),
                1..6,
            ),
            steps in proptest::collection::vec((0usize..6, -150i64..150), 1..40),
        ) {
            let mutate = |p: &mut Policy| {
                p.auth.leeway_seconds = 20;
                p.auth.max_token_lifetime_seconds = Some(150);
                p.revocations = serde_yaml_ng::from_str(r#"[{ sub: "user-2", issued_before: "2027-01-15T08:00:00Z" }]"#).expect("yaml");
            };
            let cached = verifier(policy_keys(), |p| { mutate(p); p.auth.token_cache.max_entries = 4; });
            let full = verifier(policy_keys(), |p| { mutate(p); p.auth.token_cache.max_entries = 0; });
            let tokens: Vec<String> = pool.iter().map(|&(sub, exp, nbf, iat, forged)| token(sub, exp, nbf, iat, forged && sub == 0)).collect();
            for (i, at) in steps {
                let t = &tokens[i % tokens.len()];
                let now = (NOW as i64 + at) as u64;
                prop_assert_eq!(cached.verify(t, now), full.verify(t, now));
            }
        }
    }
}
