use super::*;
use crate::mint::SigningKey;
use crate::model::{KeyDoc, Policy};
use serde_json::json;

const NOW: u64 = 1_800_000_000;

struct Pair {
    private_pem: String,
    public_pem: String,
}

fn keypair(alg: &'static rcgen::SignatureAlgorithm) -> Pair {
    let kp = rcgen::KeyPair::generate_for(alg).expect("keygen");
    Pair { private_pem: kp.serialize_pem(), public_pem: kp.public_key_pem() }
}

fn verifier(keys: Vec<KeyDoc>, mutate: impl FnOnce(&mut Policy)) -> Verifier {
    let mut p = Policy::default();
    p.auth.keys = keys;
    mutate(&mut p);
    p.compile(1).expect("valid policy").verifier
}

fn kd(kid: &str, alg: &str, pem: &str) -> KeyDoc {
    KeyDoc { kid: kid.into(), alg: alg.into(), public_key_pem: Some(pem.into()), secret_base64: None }
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"sub": "alice", "exp": NOW + 600, "iat": NOW - 10});
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                m.remove(k);
            } else {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn sign(pair: &Pair, alg: Option<&str>, kid: Option<&str>, c: &serde_json::Value) -> String {
    SigningKey::from_text(&pair.private_pem, alg).expect("key").sign(kid, c).expect("sign")
}

#[test]
fn every_algorithm_family_verifies() {
    let cases: [(&str, &'static rcgen::SignatureAlgorithm); 7] = [
        ("RS256", &rcgen::PKCS_RSA_SHA256),
        ("RS384", &rcgen::PKCS_RSA_SHA256),
        ("RS512", &rcgen::PKCS_RSA_SHA256),
        ("PS256", &rcgen::PKCS_RSA_SHA256),
        ("ES256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("ES384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("EdDSA", &rcgen::PKCS_ED25519),
    ];
    for (alg, ra) in cases {
        let pair = keypair(ra);
        let v = verifier(vec![kd("k1", alg, &pair.public_pem)], |_| {});
        let t = sign(&pair, Some(alg), Some("k1"), &claims(json!({})));
        let c = v.verify(&t, NOW).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(c.sub, "alice");
        assert_eq!(c.exp, NOW + 600);
        // Without kid: the only key is used.
        let t = sign(&pair, Some(alg), None, &claims(json!({})));
        assert!(v.verify(&t, NOW).is_ok(), "{alg} without kid");
    }
    for (alg, len) in [("HS256", 32), ("HS384", 48), ("HS512", 64)] {
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD.encode(vec![7u8; len]);
        let v =
            verifier(vec![KeyDoc { kid: "h".into(), alg: alg.into(), public_key_pem: None, secret_base64: Some(secret.clone()) }], |_| {});
        let t = SigningKey::from_text(&secret, Some(alg)).expect("key").sign(Some("h"), &claims(json!({}))).expect("sign");
        assert!(v.verify(&t, NOW).is_ok(), "{alg}");
    }
}

#[test]
fn hs_rs_confusion_is_refused() {
    use base64::Engine as _;
    let rsa = keypair(&rcgen::PKCS_RSA_SHA256);
    let v = verifier(vec![kd("rsa", "RS256", &rsa.public_pem)], |_| {});
    // The classic attack: HMAC-sign with the RSA public key as the secret.
    let secret = base64::engine::general_purpose::STANDARD.encode(rsa.public_pem.as_bytes());
    let hs = SigningKey::from_text(&secret, Some("HS256")).expect("key");
    for kid in [Some("rsa"), None] {
        let t = hs.sign(kid, &claims(json!({}))).expect("sign");
        assert_eq!(v.verify(&t, NOW), Err(TokenError::Invalid("alg_mismatch")));
    }
}

#[test]
fn alg_none_and_garbage_are_refused() {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(vec![kd("k", "ES256", &ec.public_pem)], |_| {});
    let payload = e.encode(claims(json!({})).to_string());
    for header in [r#"{"alg":"none"}"#, r#"{"alg":"none","kid":"k"}"#, r#"{"alg":"None","kid":"k"}"#] {
        let t = format!("{}.{payload}.", e.encode(header));
        assert!(matches!(v.verify(&t, NOW), Err(TokenError::Invalid(_))), "{header}");
    }
    for t in ["", "a.b", "a.b.c", "....", "eyJ.eyJ.sig"] {
        assert!(matches!(v.verify(t, NOW), Err(TokenError::Invalid(_))), "{t}");
    }
    // Tampered payload with a valid signature from another payload.
    let good = sign(&ec, None, Some("k"), &claims(json!({})));
    let parts: Vec<&str> = good.split('.').collect();
    let evil = e.encode(claims(json!({"sub": "admin"})).to_string());
    let t = format!("{}.{evil}.{}", parts[0], parts[2]);
    assert_eq!(v.verify(&t, NOW), Err(TokenError::Invalid("bad_signature")));
}

#[test]
fn kid_selection() {
    let a = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let b = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(vec![kd("a", "ES256", &a.public_pem), kd("b", "ES256", &b.public_pem)], |_| {});
    assert!(v.verify(&sign(&a, None, Some("a"), &claims(json!({}))), NOW).is_ok());
    assert!(v.verify(&sign(&b, None, Some("b"), &claims(json!({}))), NOW).is_ok());
    assert_eq!(v.verify(&sign(&a, None, Some("zzz"), &claims(json!({}))), NOW), Err(TokenError::Invalid("unknown_kid")));
    assert_eq!(v.verify(&sign(&a, None, Some("b"), &claims(json!({}))), NOW), Err(TokenError::Invalid("bad_signature")));
    // Two keys and no kid: refused.
    assert_eq!(v.verify(&sign(&a, None, None, &claims(json!({}))), NOW), Err(TokenError::Invalid("kid_required")));
}

#[test]
fn time_claims_with_leeway() {
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(vec![kd("k", "ES256", &ec.public_pem)], |p| {
        p.auth.leeway_seconds = 30;
        p.auth.max_token_lifetime_seconds = Some(3600);
    });
    let t = |extra| sign(&ec, None, Some("k"), &claims(extra));
    assert!(v.verify(&t(json!({"exp": NOW - 10})), NOW).is_ok(), "expired within leeway");
    assert_eq!(v.verify(&t(json!({"exp": NOW - 31})), NOW), Err(TokenError::Expired));
    assert_eq!(v.verify(&t(json!({"exp": null})), NOW), Err(TokenError::Invalid("missing_exp")));
    assert_eq!(v.verify(&t(json!({"exp": "soon"})), NOW), Err(TokenError::Invalid("malformed_exp")));
    assert!(v.verify(&t(json!({"nbf": NOW + 20})), NOW).is_ok(), "nbf within leeway");
    assert_eq!(v.verify(&t(json!({"nbf": NOW + 60})), NOW), Err(TokenError::Invalid("not_yet_valid")));
    assert_eq!(v.verify(&t(json!({"iat": NOW + 60})), NOW), Err(TokenError::Invalid("issued_in_future")));
    assert_eq!(v.verify(&t(json!({"exp": NOW + 7200})), NOW), Err(TokenError::Invalid("lifetime_exceeded")));
    assert_eq!(v.verify(&t(json!({"sub": null})), NOW), Err(TokenError::Invalid("missing_sub")));
}

#[test]
fn issuer_and_audience() {
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(vec![kd("k", "ES256", &ec.public_pem)], |p| {
        p.auth.issuer = Some("https://auth.example.com".into());
        p.auth.audience = vec!["palisade".into()];
    });
    let t = |extra| sign(&ec, None, Some("k"), &claims(extra));
    assert!(v.verify(&t(json!({"iss": "https://auth.example.com", "aud": "palisade"})), NOW).is_ok());
    assert!(v.verify(&t(json!({"iss": "https://auth.example.com", "aud": ["x", "palisade"]})), NOW).is_ok());
    assert_eq!(v.verify(&t(json!({"iss": "https://evil", "aud": "palisade"})), NOW), Err(TokenError::Invalid("bad_iss")));
    assert_eq!(v.verify(&t(json!({"aud": "palisade"})), NOW), Err(TokenError::Invalid("bad_iss")));
    assert_eq!(v.verify(&t(json!({"iss": "https://auth.example.com", "aud": "other"})), NOW), Err(TokenError::Invalid("bad_aud")));
    assert_eq!(v.verify(&t(json!({"iss": "https://auth.example.com"})), NOW), Err(TokenError::Invalid("bad_aud")));
}

#[test]
fn revocations() {
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(vec![kd("k", "ES256", &ec.public_pem)], |p| {
        p.revocations = serde_yaml_ng::from_str(
            r#"
- { sub: "mallory" }
- { jti: "j-1", expires: "2030-01-01T00:00:00Z" }
- { sub: "bob", issued_before: "2027-01-15T08:00:00Z" }
"#,
        )
        .expect("yaml");
    });
    let t = |extra| sign(&ec, None, Some("k"), &claims(extra));
    let cutoff = crate::compile::parse_rfc3339("2027-01-15T08:00:00Z").expect("time");
    assert_eq!(cutoff, NOW); // the fixture's clock is the cutoff
    assert_eq!(v.verify(&t(json!({"sub": "mallory"})), NOW), Err(TokenError::Revoked));
    assert_eq!(v.verify(&t(json!({"jti": "j-1"})), NOW), Err(TokenError::Revoked));
    assert!(v.verify(&t(json!({"jti": "j-2"})), NOW).is_ok());
    assert_eq!(v.verify(&t(json!({"sub": "bob", "iat": NOW - 5})), NOW), Err(TokenError::Revoked));
    assert_eq!(v.verify(&t(json!({"sub": "bob", "iat": null})), NOW), Err(TokenError::Revoked));
    assert!(v.verify(&t(json!({"sub": "bob", "iat": NOW})), NOW).is_ok());
}

#[test]
fn bad_keys_are_refused_with_the_field_named() {
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let mut p = Policy::default();
    p.auth.keys = vec![kd("a", "ES256", &ec.public_pem), kd("a", "ES256", &ec.public_pem)];
    assert_eq!(p.compile(1).map(|_| ()).unwrap_err().field, "auth.keys[1].kid");
    p.auth.keys = vec![kd("a", "ES257", &ec.public_pem)];
    assert_eq!(p.compile(1).map(|_| ()).unwrap_err().field, "auth.keys[0].alg");
    p.auth.keys = vec![kd("a", "ES256", "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")];
    assert_eq!(p.compile(1).map(|_| ()).unwrap_err().field, "auth.keys[0].public_key_pem");
    p.auth.keys = vec![KeyDoc { kid: "h".into(), alg: "HS256".into(), public_key_pem: None, secret_base64: Some("c2hvcnQ=".into()) }];
    let e = p.compile(1).map(|_| ()).unwrap_err();
    assert_eq!(e.field, "auth.keys[0].secret_base64");
    assert!(!e.to_string().contains("c2hvcnQ"), "error must not echo the secret");
    p.auth.keys = vec![];
    assert_eq!(p.compile(1).map(|_| ()).unwrap_err().field, "auth.keys");
}

#[test]
fn jwks_documents_parse_public_keys_only() {
    use jsonwebtoken::EncodingKey;
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let mut ec_jwk =
        Jwk::from_encoding_key(&EncodingKey::from_ec_pem(ec.private_pem.as_bytes()).expect("k"), jsonwebtoken::Algorithm::ES256)
            .expect("jwk");
    ec_jwk.common.key_id = Some("ec".into());
    let mut no_kid = ec_jwk.clone();
    no_kid.common.key_id = None;
    let mut hmac = Jwk::from_encoding_key(&EncodingKey::from_secret(&[1u8; 32]), jsonwebtoken::Algorithm::HS256).expect("jwk");
    hmac.common.key_id = Some("secret".into());
    let doc = serde_json::to_vec(&JwkSet { keys: vec![ec_jwk, no_kid, hmac] }).expect("json");
    let (keys, skipped) = parse_jwks(&doc).expect("parses");
    assert_eq!((keys.len(), skipped), (1, 2), "the HMAC key and the key without kid are skipped");
    let v = Verifier::new(vec![], None, vec![], 30, None, Revocations::default());
    let t = sign(&ec, None, Some("ec"), &claims(json!({})));
    assert_eq!(v.verify(&t, NOW), Err(TokenError::Invalid("unknown_kid")));
    assert!(v.verify_with(&t, NOW, Some(&keys)).is_ok());
    assert!(parse_jwks(b"{\"nope\":1}").is_err());
}

#[test]
fn claims_verified_earlier_are_rechecked() {
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(vec![kd("k", "ES256", &ec.public_pem)], |p| {
        p.auth.leeway_seconds = 30;
        p.revocations = serde_yaml_ng::from_str(r#"[{ sub: "gone" }]"#).expect("yaml");
    });
    let c = v.verify(&sign(&ec, None, Some("k"), &claims(json!({"exp": NOW + 10}))), NOW).expect("valid");
    assert_eq!(v.still_valid(&c, NOW + 39), Ok(()), "within leeway");
    assert_eq!(v.still_valid(&c, NOW + 40), Err(TokenError::Expired));
    let gone = Claims { sub: "gone".into(), ..c };
    assert_eq!(v.still_valid(&gone, NOW), Err(TokenError::Revoked));
}

// ---- Hand-built JWS (raw header and claims JSON), signed with the real keys ----

const HS_SECRET: [u8; 32] = [9u8; 32];

fn hs_verifier(mutate: impl FnOnce(&mut Policy)) -> Verifier {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::STANDARD.encode(HS_SECRET);
    verifier(vec![KeyDoc { kid: "h".into(), alg: "HS256".into(), public_key_pem: None, secret_base64: Some(secret) }], mutate)
}

/// base64url(header) "." base64url(claims) "." signature, the JSON given verbatim (so
/// numbers serde_json cannot hold, such as 1e400, can be signed).
fn raw_jws(header: &str, claims: &str, key: &jsonwebtoken::EncodingKey, alg: Algorithm) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!("{}.{}", e.encode(header), e.encode(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{sig}")
}

fn raw_hs(header: &str, claims: &str) -> String {
    raw_jws(header, claims, &jsonwebtoken::EncodingKey::from_secret(&HS_SECRET), Algorithm::HS256)
}

#[test]
fn raw_jws_helper_makes_valid_tokens() {
    let v = hs_verifier(|_| {});
    let t = raw_hs(r#"{"alg":"HS256","kid":"h"}"#, &format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60));
    assert_eq!(v.verify(&t, NOW).map(|c| c.exp), Ok(NOW + 60));
}

#[test]
fn numeric_dates_at_the_edge_of_the_range_are_clamped_or_refused() {
    let v = hs_verifier(|p| p.auth.leeway_seconds = 30);
    let tok = |claims: String| raw_hs(r#"{"alg":"HS256","kid":"h"}"#, &claims);
    let huge = ["9223372036854775808", "9223372036854775807", "18446744073709551615", "1e19", "1e300", "1.7e308"];
    for exp in huge {
        // exp beyond year 9999 is capped, so `exp + grace` and `exp - now` stay small.
        let t = tok(format!(r#"{{"sub":"alice","exp":{exp}}}"#));
        let c = v.verify(&t, NOW).unwrap_or_else(|e| panic!("exp {exp}: {e}"));
        assert_eq!(c.exp, MAX_UNIX, "exp {exp}");
        assert!(c.exp.checked_add(u64::from(u32::MAX)).is_some());
        assert_eq!(v.still_valid(&c, NOW), Ok(()));
        // iat and nbf far in the future are clamped too, and then refused as such.
        let t = tok(format!(r#"{{"sub":"alice","exp":{},"iat":{exp}}}"#, NOW + 60));
        assert_eq!(v.verify(&t, NOW), Err(TokenError::Invalid("issued_in_future")), "iat {exp}");
        let t = tok(format!(r#"{{"sub":"alice","exp":{},"nbf":{exp}}}"#, NOW + 60));
        assert_eq!(v.verify(&t, NOW), Err(TokenError::Invalid("not_yet_valid")), "nbf {exp}");
    }
    // A lifetime limit sees the clamped exp.
    let lim = hs_verifier(|p| p.auth.max_token_lifetime_seconds = Some(3600));
    let t = tok(format!(r#"{{"sub":"alice","exp":1e300,"iat":{NOW}}}"#));
    assert_eq!(lim.verify(&t, NOW), Err(TokenError::Invalid("lifetime_exceeded")));

    // Beyond f64 (serde_json refuses the number), negative, or not a number: malformed.
    for bad in ["1e400", "-1e400"] {
        let t = tok(format!(r#"{{"sub":"alice","exp":{bad}}}"#));
        assert!(matches!(v.verify(&t, NOW), Err(TokenError::Invalid(_))), "exp {bad}");
    }
    for (claim, reason) in [("exp", "malformed_exp"), ("iat", "malformed_iat"), ("nbf", "malformed_nbf")] {
        for bad in ["-1", "-1.5e9", "-9223372036854775809", "\"1800000000\"", "true", "[1]"] {
            let mut c = serde_json::Map::new();
            c.insert("sub".into(), json!("alice"));
            if claim != "exp" {
                c.insert("exp".into(), json!(NOW + 60));
            }
            let raw = format!(r#"{},"{claim}":{bad}}}"#, serde_json::to_string(&c).expect("json").trim_end_matches('}'));
            // jsonwebtoken's own pre-parse of exp/nbf gives up on some shapes first.
            let got = v.verify(&tok(raw), NOW);
            assert!(matches!(got, Err(TokenError::Invalid(r)) if r == reason || r == "malformed_claims"), "{claim} {bad}: {got:?}");
        }
    }
    // Fractions are truncated.
    let t = tok(r#"{"sub":"alice","exp":1.9e9,"iat":1.5e9,"nbf":1500000000.75}"#.to_owned());
    let c = v.verify(&t, NOW).expect("fractional dates");
    assert_eq!((c.exp, c.iat), (1_900_000_000, Some(1_500_000_000)));
    // exp exactly at the cap is kept.
    let t = tok(format!(r#"{{"sub":"alice","exp":{MAX_UNIX}}}"#));
    assert_eq!(v.verify(&t, NOW).map(|c| c.exp), Ok(MAX_UNIX));
}

#[test]
fn numeric_date_unit() {
    assert_eq!(numeric_date(&json!(0)), Some(0));
    assert_eq!(numeric_date(&json!(u64::MAX)), Some(MAX_UNIX));
    assert_eq!(numeric_date(&json!(1e300)), Some(MAX_UNIX));
    assert_eq!(numeric_date(&json!(MAX_UNIX + 1)), Some(MAX_UNIX));
    assert_eq!(numeric_date(&json!(-1)), None);
    assert_eq!(numeric_date(&json!(-0.5)), None);
    assert_eq!(numeric_date(&json!(1.5)), Some(1));
}

#[test]
fn crit_header_is_refused() {
    let v = hs_verifier(|_| {});
    let body = format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60);
    for header in [
        r#"{"alg":"HS256","kid":"h","crit":["exp"]}"#,
        r#"{"alg":"HS256","kid":"h","crit":["b64"],"b64":false}"#,
        r#"{"alg":"HS256","kid":"h","crit":[]}"#,
        r#"{"alg":"HS256","kid":"h","crit":null}"#,
        r#"{"alg":"HS256","kid":"h","crit":"exp"}"#,
    ] {
        assert!(matches!(v.verify(&raw_hs(header, &body), NOW), Err(TokenError::Invalid(_))), "{header}");
    }
    assert_eq!(v.verify(&raw_hs(r#"{"alg":"HS256","kid":"h","crit":["exp"]}"#, &body), NOW), Err(TokenError::Invalid("crit_header")));
    assert_eq!(v.verify(&raw_hs(r#"{"alg":"HS256","kid":"h","crit":null}"#, &body), NOW), Err(TokenError::Invalid("crit_header")));

    // ES256 through jsonwebtoken's own encoder, which writes `crit` when set.
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(vec![kd("k", "ES256", &ec.public_pem)], |_| {});
    let key = jsonwebtoken::EncodingKey::from_ec_pem(ec.private_pem.as_bytes()).expect("key");
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("k".into());
    assert!(v.verify(&jsonwebtoken::encode(&header, &claims(json!({})), &key).expect("sign"), NOW).is_ok());
    header.crit = Some(vec!["exp".into()]);
    let t = jsonwebtoken::encode(&header, &claims(json!({})), &key).expect("sign");
    assert_eq!(v.verify(&t, NOW), Err(TokenError::Invalid("crit_header")));
    // Hand-built ES256 as well.
    let t = raw_jws(r#"{"alg":"ES256","kid":"k","crit":["exp"]}"#, &claims(json!({})).to_string(), &key, Algorithm::ES256);
    assert_eq!(v.verify(&t, NOW), Err(TokenError::Invalid("crit_header")));
}

#[test]
fn jwks_keys_for_encryption_are_skipped() {
    use jsonwebtoken::EncodingKey;
    use jsonwebtoken::jwk::{Jwk, JwkSet, KeyOperations, PublicKeyUse};
    let mk = |kid: &str, pair: &Pair, usage: Option<PublicKeyUse>, ops: Option<Vec<KeyOperations>>| {
        let mut j =
            Jwk::from_encoding_key(&EncodingKey::from_ec_pem(pair.private_pem.as_bytes()).expect("k"), Algorithm::ES256).expect("jwk");
        j.common.key_id = Some(kid.into());
        j.common.public_key_use = usage;
        j.common.key_operations = ops;
        j
    };
    let pairs: Vec<Pair> = (0..7).map(|_| keypair(&rcgen::PKCS_ECDSA_P256_SHA256)).collect();
    let set = JwkSet {
        keys: vec![
            mk("sig", &pairs[0], Some(PublicKeyUse::Signature), None),
            mk("none", &pairs[1], None, None),
            mk("enc", &pairs[2], Some(PublicKeyUse::Encryption), None),
            mk("other", &pairs[3], Some(PublicKeyUse::Other("tls".into())), None),
            mk("ops-verify", &pairs[4], None, Some(vec![KeyOperations::Verify])),
            mk("ops-encrypt", &pairs[5], None, Some(vec![KeyOperations::Encrypt, KeyOperations::WrapKey])),
            mk("ops-empty", &pairs[6], Some(PublicKeyUse::Signature), Some(vec![])),
        ],
    };
    let (keys, skipped) = parse_jwks(&serde_json::to_vec(&set).expect("json")).expect("parses");
    let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
    kids.sort_unstable();
    assert_eq!(kids, ["none", "ops-verify", "sig"]);
    assert_eq!(skipped, 4);
    let v = Verifier::new(vec![], None, vec![], 30, None, Revocations::default());
    for (i, kid) in ["sig", "none", "enc", "other", "ops-verify", "ops-encrypt", "ops-empty"].iter().enumerate() {
        let t = sign(&pairs[i], None, Some(kid), &claims(json!({})));
        let want = if kids.contains(kid) { Ok("alice".to_owned()) } else { Err(TokenError::Invalid("unknown_kid")) };
        assert_eq!(v.verify_with(&t, NOW, Some(&keys)).map(|c| c.sub), want, "{kid}");
    }
    // The raw JSON spelling an operator's IdP would publish.
    let mut doc: serde_json::Value = serde_json::to_value(JwkSet { keys: vec![mk("raw", &pairs[0], None, None)] }).expect("json");
    doc["keys"][0]["use"] = json!("enc");
    let (keys, skipped) = parse_jwks(&serde_json::to_vec(&doc).expect("json")).expect("parses");
    assert_eq!((keys.len(), skipped), (0, 1));
}
