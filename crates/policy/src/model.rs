//! The policy document as operators write it (YAML or JSON), SPEC section 7.
//!
//! Every struct denies unknown fields, so a typo is an error naming the field instead of
//! a silently ignored setting. Defaults are the safe ones of the SPEC.

use serde::{Deserialize, Serialize};

use crate::PolicyError;

/// The whole policy document. `version` is not part of the document: the control plane
/// (or etcd's revision) carries it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub origins: Origins,
    pub auth: Auth,
    pub limits: LimitsDoc,
    pub egress: Egress,
    pub revocations: Vec<Revocation>,
    /// Per-route authorization rules (SPEC section 7 `access`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<crate::access::AccessRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Origins {
    pub allow: Vec<String>,
    pub allow_missing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carrier {
    Header,
    Subprotocol,
    Query,
    Ticket,
}

impl Carrier {
    pub fn as_str(self) -> &'static str {
        match self {
            Carrier::Header => "header",
            Carrier::Subprotocol => "subprotocol",
            Carrier::Query => "query",
            Carrier::Ticket => "ticket",
        }
    }
}

fn default_carriers() -> Vec<Carrier> {
    vec![Carrier::Header, Carrier::Subprotocol, Carrier::Query, Carrier::Ticket]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub carriers: Vec<Carrier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    pub leeway_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime_seconds: Option<u64>,
    pub keys: Vec<KeyDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    pub refresh: Refresh,
    pub tickets: Tickets,
    pub token_cache: TokenCache,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            carriers: default_carriers(),
            issuer: None,
            audience: Vec::new(),
            leeway_seconds: 30,
            max_token_lifetime_seconds: None,
            keys: Vec::new(),
            jwks_url: None,
            refresh: Refresh::default(),
            tickets: Tickets::default(),
            token_cache: TokenCache::default(),
        }
    }
}

/// One verification key. Exactly one of `public_key_pem` (asymmetric algorithms) and
/// `secret_base64` (HMAC) is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDoc {
    pub kid: String,
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_base64: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Refresh {
    pub warning_seconds: u64,
    pub grace_seconds: u64,
    /// A session must present a fresh token at least this often, whatever its token's
    /// `exp` (optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
}

impl Default for Refresh {
    fn default() -> Self {
        Refresh { warning_seconds: 60, grace_seconds: 30, interval_seconds: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tickets {
    pub ttl_seconds: u64,
}

impl Default for Tickets {
    fn default() -> Self {
        Tickets { ttl_seconds: 30 }
    }
}

/// Verified tokens remembered per node, so that a reconnect with the same token skips the
/// signature check (expiry and revocations are checked again at every use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenCache {
    /// Tokens remembered at most; 0 turns the cache off.
    pub max_entries: u64,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache { max_entries: 10_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsDoc {
    pub max_connections: u64,
    pub per_ip: PerKeyDoc,
    pub per_user: PerKeyDoc,
    pub messages: MessagesDoc,
    pub handshake_timeout_ms: u64,
    pub idle_timeout_seconds: u64,
    pub ping_interval_seconds: u64,
}

impl Default for LimitsDoc {
    fn default() -> Self {
        LimitsDoc {
            max_connections: 50_000,
            per_ip: PerKeyDoc { max_connections: 50, handshakes_per_second: 10.0, burst: 20, fleet_max_connections: None },
            per_user: PerKeyDoc { max_connections: 10, handshakes_per_second: 2.0, burst: 5, fleet_max_connections: None },
            messages: MessagesDoc::default(),
            handshake_timeout_ms: 5_000,
            idle_timeout_seconds: 60,
            ping_interval_seconds: 25,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerKeyDoc {
    pub max_connections: u64,
    pub handshakes_per_second: f64,
    pub burst: u64,
    /// `per_user` only: the cap across the whole fleet (slots in etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_max_connections: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesDoc {
    pub max_bytes: u64,
    pub per_second: f64,
    pub burst: u64,
    pub max_buffered_bytes: u64,
}

impl Default for MessagesDoc {
    fn default() -> Self {
        MessagesDoc { max_bytes: 65_536, per_second: 50.0, burst: 100, max_buffered_bytes: 1_048_576 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EgressAction {
    #[default]
    Log,
    Disconnect,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Egress {
    pub alert_bytes_per_minute: u64,
    pub action: EgressAction,
}

impl Default for Egress {
    fn default() -> Self {
        Egress { alert_bytes_per_minute: 10 * 1024 * 1024, action: EgressAction::Log }
    }
}

/// One revocation: by subject (optionally only tokens issued before a time), or by `jti`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// RFC 3339; with `sub`: only tokens whose `iat` is before this are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<String>,
    /// RFC 3339; after this the entry may be garbage-collected (the token has expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl Policy {
    /// Parses a YAML or JSON document (JSON is YAML). Errors name the field.
    pub fn from_yaml_or_json(text: &str) -> Result<Policy, PolicyError> {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            serde_json::from_str(text).map_err(|e| PolicyError::parse(e.to_string()))
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| PolicyError::parse(e.to_string()))
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_name_the_field_and_line() {
        let e = Policy::from_yaml_or_json("limits:\n  max_conections: 5\n").expect_err("typo refused");
        assert_eq!(e.field, "document");
        assert!(e.message.contains("unknown field `max_conections`") && e.message.contains("line 2"), "{}", e.message);
        let e = Policy::from_yaml_or_json("limits:\n  max_connections: many\n").expect_err("type refused");
        assert!(e.message.contains("limits.max_connections: invalid type"), "{}", e.message);
        let e = Policy::from_yaml_or_json("a: 1\n---\nb: 2\n").expect_err("two documents refused");
        assert_eq!(e.field, "document");
    }

    #[test]
    fn yaml_round_trips() {
        let mut p = Policy::default();
        p.origins.allow = vec!["https://app.example.com".into(), "https://*.example.com".into()];
        p.auth.issuer = Some("https://auth.example.com".into());
        p.auth.keys =
            vec![KeyDoc { kid: "2026-11".into(), alg: "HS256".into(), public_key_pem: None, secret_base64: Some("c2VjcmV0: yes".into()) }];
        p.revocations =
            vec![Revocation { sub: Some("no".into()), jti: None, issued_before: Some("2026-11-25T10:00:00Z".into()), expires: None }];
        let text = p.to_yaml();
        assert_eq!(Policy::from_yaml_or_json(&text), Ok(p.clone()), "{text}");
        let json = serde_json::to_string(&p).expect("json");
        assert_eq!(Policy::from_yaml_or_json(&json), Ok(p));
    }
}
