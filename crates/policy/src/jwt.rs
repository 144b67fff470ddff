//! JWT verification (SPEC section 3, step 10): key by `kid` (or the only key), the
//! header's `alg` pinned to the key's algorithm, signature, then claims checked here
//! against an injected clock: `exp` required, `nbf`, `iat`, `iss`, `aud` with leeway, an
//! optional maximum lifetime, and revocations.
//!
//! Errors say only which refusal code applies plus a short static reason for the audit
//! record; they never carry the token, a claim value or key material.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// Why a token was refused. The code maps to SPEC section 3's table; `reason` is for the
/// audit log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token_invalid ({0})")]
    Invalid(&'static str),
    #[error("token_expired")]
    Expired,
    #[error("token_revoked")]
    Revoked,
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Invalid(_) => "token_invalid",
            TokenError::Expired => "token_expired",
            TokenError::Revoked => "token_revoked",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Invalid(r) => r,
            TokenError::Expired => "expired",
            TokenError::Revoked => "revoked",
        }
    }
}

/// A verified token's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: Option<u64>,
    pub jti: Option<String>,
    pub kid: Option<String>,
    /// The verified claims as base64url JSON (the token's payload segment), for
    /// `X-Palisade-Claims`. Not a credential: it carries no signature.
    pub claims_b64: String,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    iss: Option<String>,
    aud: Option<Audience>,
    jti: Option<String>,
}

/// `T` read from a JSON object only: the JOSE header and the claims set are objects
/// (RFC 7519 section 7.2), but serde's derive alone also reads an array as the fields in
/// order, so `["alice",1900000000]` verified as `sub` and `exp` (fuzz target jwt_claims).
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The largest NumericDate kept: 9999-12-31T23:59:59Z. Larger `exp`, `iat` and `nbf`
/// values are clamped to it.
pub const MAX_UNIX: u64 = 253_402_300_799;

/// A NumericDate (RFC 7519 section 2): seconds since the epoch, as a JSON number.
///
/// - Integers and finite floats from 0 up are taken, fractions truncated (`1.5e9` is
///   1500000000).
/// - Values above [`MAX_UNIX`] (year 9999), up to any JSON number serde_json can hold
///   (`2^63`, `18446744073709551615`, `1e19`, `1e300`), are clamped to `MAX_UNIX`: a token
///   that never expires in practice stays accepted, and the deadline arithmetic done with
///   `Claims::exp` downstream (`exp + grace`, `Duration::from_secs(exp - now)`, an
///   `Instant` that far ahead) can never overflow.
/// - Negative numbers and anything that is not a number are malformed (`None`, refused
///   as `token_invalid`). A number beyond f64 (`1e400`) is refused earlier, by the JSON
///   parser, as malformed claims.
fn numeric_date(v: &serde_json::Value) -> Option<u64> {
    let serde_json::Value::Number(n) = v else { return None };
    let secs = match n.as_u64() {
        Some(u) => u,
        None => {
            let f = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
            // Saturating cast; the clamp below bounds it anyway.
            f.min(MAX_UNIX as f64) as u64
        }
    };
    Some(secs.min(MAX_UNIX))
}

pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    decoding: DecodingKey,
    /// ES256 and ES384 keys parsed once, verified with the fixed-size (r || s) signature
    /// of JWS as it is: no SEC1 parse and no DER conversion per token.
    ec: Option<aws_lc_rs::signature::ParsedPublicKey>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl Key {
    pub fn new(kid: String, alg: Algorithm, decoding: DecodingKey) -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ParsedPublicKey};
        let curve = match alg {
            Algorithm::ES256 => Some(&ECDSA_P256_SHA256_FIXED),
            Algorithm::ES384 => Some(&ECDSA_P384_SHA384_FIXED),
            _ => None,
        };
        // A point that does not parse leaves the key to jsonwebtoken, which refuses it.
        let ec = curve.zip(decoding.try_get_as_bytes().ok()).and_then(|(c, point)| ParsedPublicKey::new(c, point).ok());
        Key { kid, alg, decoding, ec }
    }

    /// Whether `signature` (the token's third segment) signs `message` (the first two).
    fn verifies(&self, message: &[u8], signature: &str) -> Result<bool, TokenError> {
        match &self.ec {
            Some(key) => {
                use base64::Engine as _;
                let sig =
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Invalid("malformed"))?;
                Ok(key.verify_sig(message, &sig).is_ok())
            }
            None => {
                jsonwebtoken::crypto::verify(signature, message, &self.decoding, self.alg).map_err(|_| TokenError::Invalid("malformed"))
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Verifier {
    keys: HashMap<String, Arc<Key>>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: u64,
    max_lifetime: Option<u64>,
    pub revocations: Revocations,
    cache: Option<cache::TokenCache>,
}

impl Verifier {
    pub fn new(
        keys: Vec<Key>,
        issuer: Option<String>,
        audience: Vec<String>,
        leeway: u64,
        max_lifetime: Option<u64>,
        revocations: Revocations,
    ) -> Self {
        let keys = keys.into_iter().map(|k| (k.kid.clone(), Arc::new(k))).collect();
        Verifier { keys, issuer, audience, leeway, max_lifetime, revocations, cache: None }
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Whether the token names a `kid` this verifier does not know (for a JWKS refetch).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The policy's JWKS URL is configured: unknown kids may be found in `extra`.
    fn select_key<'a>(&'a self, kid: Option<&str>, extra: Option<&'a KeySet>) -> Result<&'a Arc<Key>, TokenError> {
        match kid {
            Some(kid) => self.keys.get(kid).or_else(|| extra.and_then(|e| e.get(kid))).ok_or(TokenError::Invalid("unknown_kid")),
            None if self.keys.len() == 1 => Ok(self.keys.values().next().ok_or(TokenError::Invalid("no_key"))?),
            None => Err(TokenError::Invalid("kid_required")),
        }
    }

    /// Re-checks claims verified earlier (a ticket's): not expired (with leeway) and not
    /// revoked under the current policy.
    pub fn still_valid(&self, c: &Claims, now: u64) -> Result<(), TokenError> {
        if c.exp.saturating_add(self.leeway) <= now {
            return Err(TokenError::Expired);
        }
        if self.revocations.is_revoked(&c.sub, c.jti.as_deref(), c.iat) {
            return Err(TokenError::Revoked);
        }
        Ok(())
    }

    /// Verifies a compact JWS at time `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        self.verify_with(token, now, None)
    }

    /// Verifies with the policy's keys and, for kids they lack, the keys of `extra`
    /// (fetched from the JWKS URL); a token verified before comes from the cache.
    pub fn verify_with(&self, token: &str, now: u64, extra: Option<&KeySet>) -> Result<Claims, TokenError> {
        // What is not a compact JWS is refused unread (and unhashed by the cache).
        if token.len() > MAX_TOKEN_BYTES || token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(TokenError::Invalid("malformed"));
        }
        match &self.cache {
            Some(cache) => cache.verify(self, token, now, extra),
            None => self.verify_uncached(token, now, extra).map(|(c, ..)| c),
        }
    }

    /// The full check of a compact JWS (its shape checked by `verify_with`): signature and
    /// claims. Also gives `nbf` and the key that verified it (for the cache).
    fn verify_uncached<'a>(
        &'a self,
        token: &str,
        now: u64,
        extra: Option<&'a KeySet>,
    ) -> Result<(Claims, Option<u64>, &'a Arc<Key>), TokenError> {
        let (message, signature) = token.rsplit_once('.').ok_or(TokenError::Invalid("malformed"))?;
        let (header_b64, claims_b64) = message.split_once('.').ok_or(TokenError::Invalid("malformed"))?;
        let header = parse_header(header_b64)?;
        if header.crit {
            // RFC 7515 section 4.1.11: we understand no extension, so a token that
            // requires one must be refused, whatever `crit` lists.
            return Err(TokenError::Invalid("crit_header"));
        }
        let key = self.select_key(header.kid.as_deref(), extra)?;
        if header.alg != key.alg {
            // Pins the algorithm to the key: no `none`, no HS/RS confusion.
            return Err(TokenError::Invalid("alg_mismatch"));
        }
        // The signature first: nothing of an unsigned payload is parsed.
        if !key.verifies(message.as_bytes(), signature)? {
            return Err(TokenError::Invalid("bad_signature"));
        }
        let json = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims_b64).map_err(|_| TokenError::Invalid("malformed"))?
        };
        // UTF-8 throughout (RFC 7519 section 7.2): serde_json skips other members unchecked.
        let json = std::str::from_utf8(&json).map_err(|_| TokenError::Invalid("malformed_claims"))?;
        let Object::<RawClaims>(c) = serde_json::from_str(json).map_err(|_| TokenError::Invalid("malformed_claims"))?;
        let exp = c.exp.as_ref().ok_or(TokenError::Invalid("missing_exp"))?;
        let exp = numeric_date(exp).ok_or(TokenError::Invalid("malformed_exp"))?;
        let sub = c.sub.filter(|s| !s.is_empty()).ok_or(TokenError::Invalid("missing_sub"))?;
        let nbf = c.nbf.as_ref().map(|v| numeric_date(v).ok_or(TokenError::Invalid("malformed_nbf"))).transpose()?;
        let iat = c.iat.as_ref().map(|v| numeric_date(v).ok_or(TokenError::Invalid("malformed_iat"))).transpose()?;

        if let Some(iss) = &self.issuer
            && c.iss.as_deref() != Some(iss.as_str())
        {
            return Err(TokenError::Invalid("bad_iss"));
        }
        if !self.audience.is_empty() {
            let ok = match &c.aud {
                Some(Audience::One(a)) => self.audience.contains(a),
                Some(Audience::Many(v)) => v.iter().any(|a| self.audience.contains(a)),
                None => false,
            };
            if !ok {
                return Err(TokenError::Invalid("bad_aud"));
            }
        }
        let claims = Claims { sub, exp, iat, jti: c.jti, kid: header.kid, claims_b64: claims_b64.to_owned() };
        self.check_times(&claims, nbf, now)?;
        Ok((claims, nbf, key))
    }

    /// The rules that depend on the time (`nbf`, `iat`, the lifetime, `exp`), then the
    /// revocations.
    fn check_times(&self, c: &Claims, nbf: Option<u64>, now: u64) -> Result<(), TokenError> {
        let late = now.saturating_add(self.leeway);
        if nbf.is_some_and(|nbf| nbf > late) {
            return Err(TokenError::Invalid("not_yet_valid"));
        }
        if c.iat.is_some_and(|iat| iat > late) {
            return Err(TokenError::Invalid("issued_in_future"));
        }
        if let Some(max) = self.max_lifetime {
            let start = c.iat.or(nbf).unwrap_or(now);
            if c.exp.saturating_sub(start) > max.saturating_add(self.leeway) {
                return Err(TokenError::Invalid("lifetime_exceeded"));
            }
        }
        self.still_valid(c, now)
    }
}

/// The protected header, parsed once: the algorithm (a name we support, else the header
/// is malformed), the key id, and whether it has a `crit` member (any value, `null`
/// included). Other members are ignored; a duplicate member is malformed.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

struct Header {
    alg: Algorithm,
    kid: Option<String>,
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

fn parse_header(segment: &str) -> Result<Header, TokenError> {
    use base64::Engine as _;
    let bad = |_| TokenError::Invalid("malformed_header");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).map_err(|_| TokenError::Invalid("malformed_header"))?;
    let json = std::str::from_utf8(&json).map_err(|_| TokenError::Invalid("malformed_header"))?;
    let Object::<RawHeader>(h) = serde_json::from_str(json).map_err(bad)?;
    let alg = parse_alg(&h.alg).ok_or(TokenError::Invalid("malformed_header"))?;
    Ok(Header { alg, kid: h.kid, crit: h.crit })
}

/// Keys by kid (from a JWKS document).
pub type KeySet = HashMap<String, Arc<Key>>;

/// The `kid` a token names, if its header parses (to decide on a JWKS refetch).
pub fn token_kid(token: &str) -> Option<String> {
    parse_header(token.split('.').next()?).ok()?.kid
}

/// Longer tokens are refused unread.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

mod cache;
mod keys;
mod revocations;
pub use keys::{alg_name, decoding_key, parse_alg, parse_jwks};
pub use revocations::Revocations;

#[cfg(test)]
mod tests;
