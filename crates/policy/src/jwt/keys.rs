//! Keys: algorithm names, decoding keys from PEM or secrets, and JWKS documents.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};

use super::{Key, KeySet};

/// Parses a JWKS document (RFC 7517) into keys. Only public keys of the algorithms we
/// support are taken: a key needs a `kid` and an algorithm (its `alg`, or inferred from
/// an EC curve, RSA, or Ed25519); symmetric (`oct`) keys are refused, since a JWKS is
/// public. Keys meant for something other than signatures are skipped: `use` other than
/// `sig` (`enc`, say), or a `key_ops` list without `verify`. Returns the keys and how many
/// entries were skipped.
pub fn parse_jwks(json: &[u8]) -> Result<(KeySet, usize), String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyOperations, PublicKeyUse};
    let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = KeySet::new();
    let mut skipped = 0;
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            skipped += 1;
            continue;
        };
        let for_signatures = matches!(jwk.common.public_key_use, None | Some(PublicKeyUse::Signature))
            && jwk.common.key_operations.as_ref().is_none_or(|ops| ops.contains(&KeyOperations::Verify));
        if !for_signatures {
            skipped += 1;
            continue;
        }
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                _ => None,
            },
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
            _ => None,
        };
        let alg = match jwk.common.key_algorithm {
            // The JWK's own `alg`, by name (HS*, RSA-OAEP and unknown names are refused).
            Some(a) => serde_json::to_value(a).ok().and_then(|v| v.as_str().and_then(parse_alg)).filter(|a| !is_hmac(*a)),
            None => inferred,
        };
        let (Some(alg), Some(_)) = (alg, inferred) else {
            skipped += 1;
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(dk) => {
                keys.insert(kid.clone(), Arc::new(Key::new(kid, alg, dk)));
            }
            Err(_) => skipped += 1,
        }
    }
    Ok((keys, skipped))
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Parses an algorithm name of SPEC section 7.
pub fn parse_alg(s: &str) -> Option<Algorithm> {
    match s {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        "PS256" => Some(Algorithm::PS256),
        "ES256" => Some(Algorithm::ES256),
        "ES384" => Some(Algorithm::ES384),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        _ => "unknown",
    }
}

/// Builds the decoding key for `alg` from a PEM public key or a base64 HMAC secret.
pub fn decoding_key(alg: Algorithm, public_key_pem: Option<&str>, secret_base64: Option<&str>) -> Result<DecodingKey, String> {
    use jsonwebtoken::Algorithm as A;
    match (alg, public_key_pem, secret_base64) {
        (A::HS256 | A::HS384 | A::HS512, None, Some(secret)) => {
            let bytes = decode_base64_any(secret).ok_or("secret_base64 is not valid base64")?;
            let min = match alg {
                A::HS256 => 32,
                A::HS384 => 48,
                _ => 64,
            };
            if bytes.len() < min {
                return Err(format!("an {} secret needs at least {min} bytes", alg_name(alg)));
            }
            Ok(DecodingKey::from_secret(&bytes))
        }
        (A::HS256 | A::HS384 | A::HS512, _, _) => Err("HMAC keys take secret_base64 and no public_key_pem".into()),
        (_, Some(pem), None) => {
            let pem = pem.as_bytes();
            let key = match alg {
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => DecodingKey::from_rsa_pem(pem),
                A::ES256 | A::ES384 => DecodingKey::from_ec_pem(pem),
                A::EdDSA => DecodingKey::from_ed_pem(pem),
                _ => return Err("unsupported algorithm".into()),
            };
            key.map_err(|_| format!("public_key_pem is not a {} public key in PEM", alg_name(alg)))
        }
        _ => Err("asymmetric keys take public_key_pem and no secret_base64".into()),
    }
}

fn decode_base64_any(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(s).ok())
}
