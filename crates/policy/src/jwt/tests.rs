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

mod cache;
mod hand_built;
