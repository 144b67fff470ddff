//! Hand-built JWS (raw header and claims JSON), signed with the real keys: the edges of
//! the numeric range, `crit`, JWKS key use.

use super::*;

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
fn a_header_or_claims_that_are_not_a_json_object_are_refused() {
    // Regression (fuzz target jwt_claims): serde's derive read a JSON array as the fields
    // in order, so these verified as sub "alice" (and the header as alg and kid).
    let v = hs_verifier(|_| {});
    let h = r#"{"alg":"HS256","kid":"h"}"#;
    let exp = NOW + 60;
    for claims in [format!(r#"["alice",{exp},null,null,null,null,"t-1"]"#), r#""alice""#.into(), "null".into(), "7".into()] {
        assert_eq!(v.verify(&raw_hs(h, &claims), NOW), Err(TokenError::Invalid("malformed_claims")), "{claims}");
    }
    let ok = format!(r#"{{"sub":"alice","exp":{exp},"extra":[1,{{"a":null}}]}}"#);
    assert_eq!(v.verify(&raw_hs(r#"["HS256","h"]"#, &ok), NOW), Err(TokenError::Invalid("malformed_header")));
    let dup = format!(r#"{{"sub":"alice","sub":"bob","exp":{exp}}}"#);
    assert_eq!(v.verify(&raw_hs(h, &dup), NOW), Err(TokenError::Invalid("malformed_claims")), "duplicates stay refused");
    assert_eq!(v.verify(&raw_hs(h, &ok), NOW).map(|c| c.sub), Ok("alice".into()));
}

#[test]
fn a_header_or_claims_that_are_not_utf8_are_refused() {
    // Regression (fuzz target jwt_claims): serde_json skips the members nobody reads
    // without checking their UTF-8, so a 0xff byte in an unread claim verified.
    use base64::Engine as _;
    let v = hs_verifier(|_| {});
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let tok = |h: &[u8], c: &[u8]| {
        let input = format!("{}.{}", e.encode(h), e.encode(c));
        let key = jsonwebtoken::EncodingKey::from_secret(&HS_SECRET);
        format!("{input}.{}", jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).expect("sign"))
    };
    let h = br#"{"alg":"HS256","kid":"h"}"#;
    let good = format!(r#"{{"sub":"alice","exp":{},"scope":"ws:admin"}}"#, NOW + 60).into_bytes();
    let mut bad = format!(r#"{{"sub":"alice","exp":{},"scope":"ws:"#, NOW + 60).into_bytes();
    bad.extend_from_slice(b"\xff\"}");
    assert_eq!(v.verify(&tok(h, &bad), NOW), Err(TokenError::Invalid("malformed_claims")));
    assert_eq!(
        v.verify(&tok(b"{\"alg\":\"HS256\",\"kid\":\"h\",\"x\":\"\xff\"}", &good), NOW),
        Err(TokenError::Invalid("malformed_header"))
    );
    assert_eq!(v.verify(&tok(h, &good), NOW).map(|c| c.sub), Ok("alice".into()));
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

#[test]
fn the_header_is_parsed_strictly_once() {
    let v = hs_verifier(|_| {});
    let body = format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60);
    for (header, why) in [
        (r#"{"alg":"HS256","kid":"h","alg":"HS256"}"#, "a duplicate member"),
        (r#"{"alg":"none","kid":"h"}"#, "alg none"),
        (r#"{"alg":"HS257","kid":"h"}"#, "an unknown alg"),
        (r#"{"kid":"h"}"#, "no alg"),
        (r#"{"alg":"HS256","kid":7}"#, "a kid that is not a string"),
        (r#"["alg","HS256"]"#, "not an object"),
    ] {
        assert_eq!(v.verify(&raw_hs(header, &body), NOW), Err(TokenError::Invalid("malformed_header")), "{why}");
    }
    // Unknown members are ignored; `kid` is what `token_kid` reads.
    let t = raw_hs(r#"{"alg":"HS256","kid":"h","typ":"JWT","x-extra":{"a":1}}"#, &body);
    assert!(v.verify(&t, NOW).is_ok());
    assert_eq!(crate::jwt::token_kid(&t).as_deref(), Some("h"));
    // A bad signature is refused before the claims are read: malformed claims under a
    // wrong signature say bad_signature.
    let forged = format!("{}.{}", raw_hs(r#"{"alg":"HS256","kid":"h"}"#, "not json").rsplit_once('.').expect("dots").0, "AAAA");
    assert_eq!(v.verify(&forged, NOW), Err(TokenError::Invalid("bad_signature")));
}

#[test]
fn es256_signatures_are_checked_in_their_fixed_form() {
    use base64::Engine as _;
    let ec = keypair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v = verifier(vec![kd("k", "ES256", &ec.public_pem)], |_| {});
    let key = jsonwebtoken::EncodingKey::from_ec_pem(ec.private_pem.as_bytes()).expect("key");
    let t = raw_jws(r#"{"alg":"ES256","kid":"k"}"#, &claims(json!({})).to_string(), &key, Algorithm::ES256);
    assert!(v.verify(&t, NOW).is_ok());
    let (message, sig) = t.rsplit_once('.').expect("dots");
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut raw = e.decode(sig).expect("b64");
    assert_eq!(raw.len(), 64, "r || s");
    raw[10] ^= 1;
    assert_eq!(v.verify(&format!("{message}.{}", e.encode(&raw)), NOW), Err(TokenError::Invalid("bad_signature")));
    // A DER-encoded signature is not JWS's form.
    assert_eq!(
        v.verify(&format!("{message}.{}", e.encode([0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01])), NOW),
        Err(TokenError::Invalid("bad_signature"))
    );
    assert_eq!(v.verify(&format!("{message}.!!"), NOW), Err(TokenError::Invalid("malformed")));
}
