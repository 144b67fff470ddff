//! Signing keys of every algorithm, tokens, and a policy trusting them.

#[allow(unused_imports)]
use super::*;

/// A private key (PKCS#8 PEM or base64 HMAC secret) with the policy entry for it.
pub struct TestKey {
    pub kid: String,
    pub alg: &'static str,
    pub private: String,
    pub doc: KeyDoc,
}

impl TestKey {
    pub fn generate(kid: &str, alg: &'static str) -> TestKey {
        use base64::Engine as _;
        let ra: Option<&'static rcgen::SignatureAlgorithm> = match alg {
            "ES256" => Some(&rcgen::PKCS_ECDSA_P256_SHA256),
            "ES384" => Some(&rcgen::PKCS_ECDSA_P384_SHA384),
            "EdDSA" => Some(&rcgen::PKCS_ED25519),
            "RS256" | "RS384" | "RS512" | "PS256" => Some(&rcgen::PKCS_RSA_SHA256),
            _ => None,
        };
        match ra {
            Some(ra) => {
                let kp = rcgen::KeyPair::generate_for(ra).expect("keygen");
                let doc = KeyDoc { kid: kid.into(), alg: alg.into(), public_key_pem: Some(kp.public_key_pem()), secret_base64: None };
                TestKey { kid: kid.into(), alg, private: kp.serialize_pem(), doc }
            }
            None => {
                let secret = base64::engine::general_purpose::STANDARD.encode(rand_bytes::<64>());
                let doc = KeyDoc { kid: kid.into(), alg: alg.into(), public_key_pem: None, secret_base64: Some(secret.clone()) };
                TestKey { kid: kid.into(), alg, private: secret, doc }
            }
        }
    }

    /// Signs `claims` over the defaults (`sub`, `iat` now, `exp` in 10 minutes).
    pub fn token(&self, claims: serde_json::Value) -> String {
        let n = now();
        let mut c = serde_json::json!({"sub": "alice", "iat": n, "exp": n + 600});
        if let (Some(m), Some(extra)) = (c.as_object_mut(), claims.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    m.remove(k);
                } else {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        SigningKey::from_text(&self.private, Some(self.alg)).expect("key").sign(Some(&self.kid), &c).expect("sign")
    }

    pub fn token_for(&self, sub: &str) -> String {
        self.token(serde_json::json!({"sub": sub}))
    }
}

pub(crate) fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_fill(&mut b);
    b
}

fn aws_lc_fill(b: &mut [u8]) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().secure_random.fill(b);
}

/// A permissive test policy around `keys`: generous limits, app origins, no missing
/// Origin.
pub fn policy(keys: &[&TestKey]) -> Policy {
    let mut p = Policy::default();
    p.origins.allow = vec!["https://app.example.com".into(), "https://*.example.com".into()];
    p.auth.keys = keys.iter().map(|k| k.doc.clone()).collect();
    p.limits.per_ip.handshakes_per_second = 1000.0;
    p.limits.per_ip.burst = 1000;
    p.limits.per_ip.max_connections = 1000;
    p.limits.per_user.handshakes_per_second = 1000.0;
    p.limits.per_user.burst = 1000;
    p.limits.per_user.max_connections = 1000;
    p
}
