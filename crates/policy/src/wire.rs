//! The policy document between its two forms: [`Policy`](m::Policy) (YAML/JSON, the model
//! that validates) and `palisade.policy.v1.Policy` (protobuf on the wire), as `From` and
//! `TryFrom`. Field names match one for one; a field unset on the wire keeps the
//! document's default. Enum values on the wire are the serde names of the model (one
//! name table: the model's).

use palisade_proto::policy::v1 as pb;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::PolicyError;
use crate::model as m;

/// The serde name of a unit enum value (`Carrier::Header` -> `header`).
fn name_of<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The unit enum value a serde name stands for.
fn from_name<T: DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

impl From<&m::Policy> for pb::Policy {
    /// Model -> wire: every field set.
    fn from(p: &m::Policy) -> pb::Policy {
        to_proto(p)
    }
}

impl TryFrom<&pb::Policy> for m::Policy {
    type Error = PolicyError;

    /// Wire -> model; see [`from_proto`].
    fn try_from(p: &pb::Policy) -> Result<m::Policy, PolicyError> {
        from_proto(p)
    }
}

fn to_proto(p: &m::Policy) -> pb::Policy {
    let a = &p.auth;
    let l = &p.limits;
    let per = |k: &m::PerKeyDoc| pb::PerKeyLimits {
        max_connections: Some(k.max_connections),
        handshakes_per_second: Some(k.handshakes_per_second),
        burst: Some(k.burst),
        fleet_max_connections: k.fleet_max_connections,
    };
    pb::Policy {
        origins: Some(pb::Origins { allow: p.origins.allow.clone(), allow_missing: p.origins.allow_missing }),
        auth: Some(pb::Auth {
            carriers: a.carriers.iter().map(name_of).collect(),
            issuer: a.issuer.clone(),
            audience: a.audience.clone(),
            leeway_seconds: Some(a.leeway_seconds),
            max_token_lifetime_seconds: a.max_token_lifetime_seconds,
            keys: a
                .keys
                .iter()
                .map(|k| pb::Key {
                    kid: k.kid.clone(),
                    alg: k.alg.clone(),
                    public_key_pem: k.public_key_pem.clone(),
                    secret_base64: k.secret_base64.clone(),
                })
                .collect(),
            jwks_url: a.jwks_url.clone(),
            refresh: Some(pb::Refresh {
                warning_seconds: Some(a.refresh.warning_seconds),
                grace_seconds: Some(a.refresh.grace_seconds),
                interval_seconds: a.refresh.interval_seconds,
            }),
            tickets: Some(pb::Tickets { ttl_seconds: Some(a.tickets.ttl_seconds) }),
            token_cache: Some(pb::TokenCache { max_entries: Some(a.token_cache.max_entries) }),
        }),
        limits: Some(pb::Limits {
            max_connections: Some(l.max_connections),
            per_ip: Some(per(&l.per_ip)),
            per_user: Some(per(&l.per_user)),
            messages: Some(pb::MessageLimits {
                max_bytes: Some(l.messages.max_bytes),
                per_second: Some(l.messages.per_second),
                burst: Some(l.messages.burst),
                max_buffered_bytes: Some(l.messages.max_buffered_bytes),
            }),
            handshake_timeout_ms: Some(l.handshake_timeout_ms),
            idle_timeout_seconds: Some(l.idle_timeout_seconds),
            ping_interval_seconds: Some(l.ping_interval_seconds),
        }),
        egress: Some(pb::Egress { alert_bytes_per_minute: Some(p.egress.alert_bytes_per_minute), action: Some(name_of(&p.egress.action)) }),
        revocations: p
            .revocations
            .iter()
            .map(|r| pb::Revocation {
                sub: r.sub.clone(),
                jti: r.jti.clone(),
                issued_before: r.issued_before.clone(),
                expires: r.expires.clone(),
            })
            .collect(),
        access: p
            .access
            .iter()
            .map(|r| pb::AccessRule {
                route: r.route.clone(),
                claims: r.require.claims.iter().map(|(k, v)| (k.clone(), pb::ClaimValues { values: v.clone() })).collect(),
                scopes: r.require.scopes.clone(),
            })
            .collect(),
    }
}

fn set<T: Copy>(dst: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *dst = v;
    }
}

/// Wire -> model. Unset fields keep the defaults; unknown enum strings are errors naming
/// the field. Validation of values is `Policy::compile`'s job.
fn from_proto(p: &pb::Policy) -> Result<m::Policy, PolicyError> {
    let mut out = m::Policy::default();
    if let Some(o) = &p.origins {
        out.origins = m::Origins { allow: o.allow.clone(), allow_missing: o.allow_missing };
    }
    if let Some(a) = &p.auth {
        let d = &mut out.auth;
        if !a.carriers.is_empty() {
            d.carriers = a
                .carriers
                .iter()
                .enumerate()
                .map(|(i, c)| from_name(c).ok_or_else(|| PolicyError::new(format!("auth.carriers[{i}]"), format!("unknown carrier `{c}`"))))
                .collect::<Result<_, _>>()?;
        }
        d.issuer = a.issuer.clone();
        d.audience = a.audience.clone();
        set(&mut d.leeway_seconds, a.leeway_seconds);
        d.max_token_lifetime_seconds = a.max_token_lifetime_seconds;
        d.keys = a
            .keys
            .iter()
            .map(|k| m::KeyDoc {
                kid: k.kid.clone(),
                alg: k.alg.clone(),
                public_key_pem: k.public_key_pem.clone(),
                secret_base64: k.secret_base64.clone(),
            })
            .collect();
        d.jwks_url = a.jwks_url.clone();
        if let Some(r) = &a.refresh {
            set(&mut d.refresh.warning_seconds, r.warning_seconds);
            set(&mut d.refresh.grace_seconds, r.grace_seconds);
            d.refresh.interval_seconds = r.interval_seconds;
        }
        if let Some(t) = &a.tickets {
            set(&mut d.tickets.ttl_seconds, t.ttl_seconds);
        }
        if let Some(t) = &a.token_cache {
            set(&mut d.token_cache.max_entries, t.max_entries);
        }
    }
    if let Some(l) = &p.limits {
        let d = &mut out.limits;
        set(&mut d.max_connections, l.max_connections);
        for (src, dst) in [(&l.per_ip, &mut d.per_ip), (&l.per_user, &mut d.per_user)] {
            if let Some(s) = src {
                set(&mut dst.max_connections, s.max_connections);
                set(&mut dst.handshakes_per_second, s.handshakes_per_second);
                set(&mut dst.burst, s.burst);
                dst.fleet_max_connections = s.fleet_max_connections;
            }
        }
        if let Some(mm) = &l.messages {
            set(&mut d.messages.max_bytes, mm.max_bytes);
            set(&mut d.messages.per_second, mm.per_second);
            set(&mut d.messages.burst, mm.burst);
            set(&mut d.messages.max_buffered_bytes, mm.max_buffered_bytes);
        }
        set(&mut d.handshake_timeout_ms, l.handshake_timeout_ms);
        set(&mut d.idle_timeout_seconds, l.idle_timeout_seconds);
        set(&mut d.ping_interval_seconds, l.ping_interval_seconds);
    }
    if let Some(e) = &p.egress {
        set(&mut out.egress.alert_bytes_per_minute, e.alert_bytes_per_minute);
        if let Some(a) = e.action.as_deref() {
            out.egress.action =
                from_name(a).ok_or_else(|| PolicyError::new("egress.action", format!("must be `log` or `disconnect`, not `{a}`")))?;
        }
    }
    out.revocations = p
        .revocations
        .iter()
        .map(|r| m::Revocation {
            sub: r.sub.clone(),
            jti: r.jti.clone(),
            issued_before: r.issued_before.clone(),
            expires: r.expires.clone(),
        })
        .collect();
    out.access = p
        .access
        .iter()
        .map(|r| crate::access::AccessRule {
            route: r.route.clone(),
            require: crate::access::Require {
                claims: r.claims.iter().map(|(k, v)| (k.clone(), v.values.clone())).collect(),
                scopes: r.scopes.clone(),
            },
        })
        .collect();
    Ok(out)
}

/// The document a `VersionedPolicy` carries: its `yaml` text when set (grpcurl users can
/// send the YAML/JSON document as a string), else its `policy` message.
pub fn document(v: &pb::VersionedPolicy) -> Result<m::Policy, PolicyError> {
    if !v.yaml.trim().is_empty() {
        return m::Policy::from_yaml_or_json(&v.yaml);
    }
    match &v.policy {
        Some(p) => from_proto(p),
        None => Err(PolicyError::new("policy", "a policy message or a yaml document is required")),
    }
}

pub fn versioned(version: u64, p: &m::Policy) -> pb::VersionedPolicy {
    pb::VersionedPolicy { version, policy: Some(to_proto(p)), yaml: String::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_full_document() {
        let yaml = r#"
origins: { allow: ["https://app.example.com", "https://*.example.com"], allow_missing: true }
auth:
  carriers: [header, ticket]
  issuer: https://auth.example.com
  audience: [palisade]
  leeway_seconds: 10
  max_token_lifetime_seconds: 3600
  keys:
    - { kid: "legacy", alg: HS256, secret_base64: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=" }
  refresh: { warning_seconds: 30, grace_seconds: 5, interval_seconds: 600 }
  tickets: { ttl_seconds: 20 }
  token_cache: { max_entries: 50 }
limits:
  max_connections: 10
  per_ip:   { max_connections: 5, handshakes_per_second: 1.5, burst: 3 }
  per_user: { max_connections: 2, handshakes_per_second: 0.5, burst: 1 }
  messages: { max_bytes: 1000, per_second: 5, burst: 10, max_buffered_bytes: 4096 }
  handshake_timeout_ms: 1000
  idle_timeout_seconds: 30
  ping_interval_seconds: 10
egress: { alert_bytes_per_minute: 1000, action: disconnect }
revocations:
  - { sub: "user-42", issued_before: "2026-11-25T10:00:00Z" }
  - { jti: "b1946ac9", expires: "2026-11-26T10:00:00Z" }
access:
  - { route: /admin, require: { claims: { role: [admin, ops] }, scopes: ["ws:admin"] } }
  - { route: /ops, require: { scopes: [a, b] } }
"#;
        let doc = m::Policy::from_yaml_or_json(yaml).expect("yaml");
        assert_eq!(from_proto(&to_proto(&doc)).expect("back"), doc);
    }

    #[test]
    fn unset_fields_keep_defaults() {
        let p = pb::Policy { limits: Some(pb::Limits { max_connections: Some(7), ..Default::default() }), ..Default::default() };
        let doc = from_proto(&p).expect("ok");
        assert_eq!(doc.limits.max_connections, 7);
        assert_eq!(doc.limits.idle_timeout_seconds, 60);
        assert_eq!(doc.auth.carriers.len(), 4);
    }

    #[test]
    fn enum_names_are_the_serde_names() {
        for c in [m::Carrier::Header, m::Carrier::Subprotocol, m::Carrier::Query, m::Carrier::Ticket] {
            assert_eq!(name_of(&c), c.as_str());
            assert_eq!(from_name::<m::Carrier>(c.as_str()), Some(c));
        }
        assert_eq!(name_of(&m::EgressAction::Disconnect), "disconnect");
        let p = pb::Policy {
            auth: Some(pb::Auth { carriers: vec!["query".into(), "smoke".into()], ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(m::Policy::try_from(&p).map(|_| ()).map_err(|e| e.field), Err("auth.carriers[1]".to_string()));
    }

    #[test]
    fn bad_enums_name_the_field() {
        let p = pb::Policy { egress: Some(pb::Egress { action: Some("explode".into()), ..Default::default() }), ..Default::default() };
        assert_eq!(from_proto(&p).map(|_| ()).map_err(|e| e.field), Err("egress.action".to_string()));
    }
}
