//! Token minting for `palisade token mint`, dev mode and tests. The algorithm is inferred
//! from the private key (PKCS#8 PEM: P-256 -> ES256, P-384 -> ES384, Ed25519 -> EdDSA,
//! RSA -> RS256 unless PS256/RS384/RS512 is asked for); a non-PEM key file is an HMAC
//! secret in base64 (HS256 unless asked otherwise).

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::jwt::{alg_name, parse_alg};

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the key is neither a PKCS#8/PKCS#1 PEM private key nor a base64 HMAC secret")]
    BadKey,
    #[error("algorithm {0} does not fit this key")]
    AlgMismatch(String),
    #[error("signing failed")]
    Sign,
}

/// A signing key with its algorithm.
pub struct SigningKey {
    pub alg: Algorithm,
    key: EncodingKey,
}

impl SigningKey {
    /// Loads a private key; `alg` overrides the inferred algorithm where the key allows it.
    pub fn from_text(text: &str, alg: Option<&str>) -> Result<SigningKey, MintError> {
        let wanted = match alg {
            Some(a) => Some(parse_alg(a).ok_or_else(|| MintError::AlgMismatch(a.to_owned()))?),
            None => None,
        };
        if text.contains("-----BEGIN") {
            let der = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|_| MintError::BadKey)?;
            let bytes = der.secret_der();
            let inferred = if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, bytes).is_ok() {
                Algorithm::ES256
            } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, bytes).is_ok() {
                Algorithm::ES384
            } else if Ed25519KeyPair::from_pkcs8(bytes).is_ok() || Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes).is_ok() {
                Algorithm::EdDSA
            } else if RsaKeyPair::from_pkcs8(bytes).is_ok() || RsaKeyPair::from_der(bytes).is_ok() {
                Algorithm::RS256
            } else {
                return Err(MintError::BadKey);
            };
            let alg = match (inferred, wanted) {
                (_, None) => inferred,
                (Algorithm::RS256, Some(w @ (Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256))) => w,
                (i, Some(w)) if i == w => w,
                (_, Some(w)) => return Err(MintError::AlgMismatch(alg_name(w).to_owned())),
            };
            let key = match alg {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(text.as_bytes()),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(text.as_bytes()),
                _ => EncodingKey::from_rsa_pem(text.as_bytes()),
            }
            .map_err(|_| MintError::BadKey)?;
            Ok(SigningKey { alg, key })
        } else {
            let alg = wanted.unwrap_or(Algorithm::HS256);
            if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(MintError::AlgMismatch(alg_name(alg).to_owned()));
            }
            let key = EncodingKey::from_base64_secret(text.trim()).map_err(|_| MintError::BadKey)?;
            Ok(SigningKey { alg, key })
        }
    }

    /// Signs `claims` with this key, `kid` in the header when given.
    pub fn sign(&self, kid: Option<&str>, claims: &serde_json::Value) -> Result<String, MintError> {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|_| MintError::Sign)
    }
}
