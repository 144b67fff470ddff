//! Per-route authorization (SPEC section 3 step 10a, section 7 `access`): a rule names a
//! route and requires claims (a claim whose value, a string or an array, contains one of
//! the listed values) and/or scopes (every listed scope present in the space-separated
//! `scope` claim or the `scp` array). A route without a rule accepts any valid token.
//!
//! Claims are read from the verified token's payload (`Claims::claims_b64`) only when a
//! rule applies, so sessions keep no claim map in memory.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::PolicyError;

/// One rule of the document's `access` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    pub route: String,
    pub require: Require,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Require {
    /// Claim name -> accepted values (one of them must be present).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, Vec<String>>,
    /// Every one of these must be granted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// Why a rule refused a token (for the audit record; never sent to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// The rule's index in the document's `access` list.
    pub rule: usize,
    pub reason: &'static str,
}

/// The compiled rules, by route.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    by_route: HashMap<String, (usize, Require)>,
}

impl AccessRules {
    /// Validates the document's rules, naming the field of the first bad one.
    pub fn compile(rules: &[AccessRule]) -> Result<AccessRules, PolicyError> {
        let mut by_route = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            let f = format!("access[{i}]");
            if !r.route.starts_with('/') || r.route.contains(['?', '#', ' ']) {
                return Err(PolicyError::new(format!("{f}.route"), "must be a path starting with /"));
            }
            if r.require.claims.is_empty() && r.require.scopes.is_empty() {
                return Err(PolicyError::new(format!("{f}.require"), "must require at least one claim or scope"));
            }
            for (name, values) in &r.require.claims {
                if name.is_empty() {
                    return Err(PolicyError::new(format!("{f}.require.claims"), "claim names must not be empty"));
                }
                if values.is_empty() {
                    return Err(PolicyError::new(format!("{f}.require.claims.{name}"), "must list at least one value"));
                }
                if let Some(j) = values.iter().position(String::is_empty) {
                    return Err(PolicyError::new(format!("{f}.require.claims.{name}[{j}]"), "must not be empty"));
                }
            }
            let mut seen = HashSet::new();
            for (j, s) in r.require.scopes.iter().enumerate() {
                if s.is_empty() || s.contains(char::is_whitespace) {
                    return Err(PolicyError::new(format!("{f}.require.scopes[{j}]"), "must be a non-empty scope without spaces"));
                }
                if !seen.insert(s) {
                    return Err(PolicyError::new(format!("{f}.require.scopes[{j}]"), format!("`{s}` is listed twice")));
                }
            }
            if by_route.insert(r.route.clone(), (i, r.require.clone())).is_some() {
                return Err(PolicyError::new(format!("{f}.route"), format!("`{}` has two rules", r.route)));
            }
        }
        Ok(AccessRules { by_route })
    }

    pub fn is_empty(&self) -> bool {
        self.by_route.is_empty()
    }

    /// The routes that have a rule.
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.by_route.keys().map(String::as_str)
    }

    /// Checks the token whose payload is `claims_b64` (base64url JSON) against the rule of
    /// `route`, if it has one.
    pub fn check(&self, route: &str, claims_b64: &str) -> Result<(), Denied> {
        let Some((rule, require)) = self.by_route.get(route) else { return Ok(()) };
        let deny = |reason| Denied { rule: *rule, reason };
        let claims: serde_json::Map<String, serde_json::Value> = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims_b64.trim_end_matches('='))
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(deny("claims_unreadable"))?;
        for (name, accepted) in &require.claims {
            if !claims.get(name).is_some_and(|v| holds_one_of(v, accepted)) {
                return Err(deny("claim_missing"));
            }
        }
        if !require.scopes.is_empty() {
            let granted = granted_scopes(&claims);
            if !require.scopes.iter().all(|s| granted.contains(s.as_str())) {
                return Err(deny("scope_missing"));
            }
        }
        Ok(())
    }
}

/// Whether a claim's value (a string, or an array of them) holds one of `accepted`.
/// Numbers and booleans compare by their JSON text.
fn holds_one_of(v: &serde_json::Value, accepted: &[String]) -> bool {
    let matches = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => accepted.iter().any(|a| a == s),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => accepted.contains(&v.to_string()),
        _ => false,
    };
    match v {
        serde_json::Value::Array(items) => items.iter().any(matches),
        other => matches(other),
    }
}

/// The scopes a token grants: the space-separated `scope` claim (RFC 8693) and the `scp`
/// array (or string) that some issuers use.
fn granted_scopes(claims: &serde_json::Map<String, serde_json::Value>) -> HashSet<&str> {
    let mut out = HashSet::new();
    for key in ["scope", "scp"] {
        match claims.get(key) {
            Some(serde_json::Value::String(s)) => out.extend(s.split_whitespace()),
            Some(serde_json::Value::Array(a)) => out.extend(a.iter().filter_map(|v| v.as_str())),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn rules(yaml: &str) -> Result<AccessRules, PolicyError> {
        let doc: Vec<AccessRule> = serde_yaml_ng::from_str(yaml).expect("yaml");
        AccessRules::compile(&doc)
    }

    #[test]
    fn claims_as_string_or_array_and_scopes_as_scope_or_scp() {
        let r = rules("- { route: /admin, require: { claims: { role: [admin, ops] }, scopes: ['ws:admin'] } }").expect("valid");
        let ok = |v| r.check("/admin", &b64(v));
        assert_eq!(ok(serde_json::json!({"role": "admin", "scope": "read ws:admin"})), Ok(()));
        assert_eq!(ok(serde_json::json!({"role": ["user", "ops"], "scp": ["ws:admin"]})), Ok(()));
        assert_eq!(ok(serde_json::json!({"role": "user", "scope": "ws:admin"})), Err(Denied { rule: 0, reason: "claim_missing" }));
        assert_eq!(ok(serde_json::json!({"role": "admin", "scope": "ws:adminx"})), Err(Denied { rule: 0, reason: "scope_missing" }));
        assert_eq!(ok(serde_json::json!({"scope": "ws:admin"})), Err(Denied { rule: 0, reason: "claim_missing" }));
        assert_eq!(r.check("/chat", &b64(serde_json::json!({}))), Ok(()), "a route without a rule takes any valid token");
        assert_eq!(r.check("/admin", "!!!"), Err(Denied { rule: 0, reason: "claims_unreadable" }));
    }

    #[test]
    fn every_scope_is_required_and_numbers_compare_as_text() {
        let r =
            rules("- { route: /a, require: { scopes: [x, y] } }\n- { route: /b, require: { claims: { level: ['3'], admin: ['true'] } } }")
                .expect("valid");
        assert!(r.check("/a", &b64(serde_json::json!({"scope": "x"}))).is_err());
        assert!(r.check("/a", &b64(serde_json::json!({"scope": "y x"}))).is_ok());
        assert_eq!(r.check("/b", &b64(serde_json::json!({"level": 3, "admin": true}))), Ok(()));
        assert_eq!(r.check("/b", &b64(serde_json::json!({"level": 3, "admin": false}))).map_err(|d| d.rule), Err(1));
    }

    #[test]
    fn malformed_rules_name_their_field() {
        let field = |y: &str| rules(y).map(|_| ()).map_err(|e| e.field);
        assert_eq!(field("- { route: admin, require: { scopes: [x] } }"), Err("access[0].route".into()));
        assert_eq!(field("- { route: /a, require: {} }"), Err("access[0].require".into()));
        assert_eq!(field("- { route: /a, require: { claims: { role: [] } } }"), Err("access[0].require.claims.role".into()));
        assert_eq!(field("- { route: /a, require: { claims: { role: [''] } } }"), Err("access[0].require.claims.role[0]".into()));
        assert_eq!(field("- { route: /a, require: { scopes: ['a b'] } }"), Err("access[0].require.scopes[0]".into()));
        assert_eq!(field("- { route: /a, require: { scopes: [x, x] } }"), Err("access[0].require.scopes[1]".into()));
        assert_eq!(
            field("- { route: /a, require: { scopes: [x] } }\n- { route: /a, require: { scopes: [y] } }"),
            Err("access[1].route".into())
        );
    }
}
