//! Validation and compilation: `Policy` (the document) -> `CompiledPolicy` (the snapshot
//! the hot path reads). Every error names the field. Nothing here is parsed again per
//! request.

use std::collections::HashSet;

use crate::PolicyError;
use crate::jwt::{self, Key, Revocations, Verifier};
use crate::model::{Carrier, EgressAction, Policy};
use crate::origin::OriginMatcher;

/// A token-bucket quota. Compared bitwise, so limiter state can be kept per quota across
/// policy swaps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSpec {
    pub per_second: f64,
    pub burst: u64,
}

impl Eq for RateSpec {}
impl std::hash::Hash for RateSpec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.per_second.to_bits().hash(state);
        self.burst.hash(state);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    pub max_bytes: usize,
    pub rate: RateSpec,
    pub max_buffered_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u64,
    pub per_ip_max_connections: u64,
    pub per_ip_rate: RateSpec,
    pub per_user_max_connections: u64,
    pub per_user_rate: RateSpec,
    /// `limits.per_user.fleet_max_connections`: the cap across the fleet.
    pub per_user_fleet_max_connections: Option<u64>,
    pub messages: MessageLimits,
    pub handshake_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub ping_interval: std::time::Duration,
}

/// The compiled policy. Immutable; replaced whole by an atomic swap.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub version: u64,
    pub origins: OriginMatcher,
    pub carriers: Vec<Carrier>,
    pub verifier: Verifier,
    pub limits: Limits,
    pub refresh_warning_seconds: u64,
    pub refresh_grace_seconds: u64,
    /// `auth.refresh.interval_seconds`: the longest a session may go without presenting
    /// a fresh token.
    pub refresh_interval_seconds: Option<u64>,
    /// Per-route authorization (step 10a).
    pub access: crate::access::AccessRules,
    pub ticket_ttl_seconds: u64,
    pub egress_alert_bytes_per_minute: u64,
    pub egress_action: EgressAction,
    /// The document this was compiled from, for `GetPolicy`.
    pub document: Policy,
}

impl CompiledPolicy {
    pub fn carrier_enabled(&self, c: Carrier) -> bool {
        self.carriers.contains(&c)
    }
}

fn err(field: impl Into<String>, msg: impl Into<String>) -> PolicyError {
    PolicyError::new(field, msg)
}

fn rate(field: &str, per_second: f64, burst: u64) -> Result<RateSpec, PolicyError> {
    if !(per_second.is_finite() && per_second > 0.0 && per_second <= 1e9) {
        return Err(err(format!("{field}.handshakes_per_second"), "must be a positive number"));
    }
    if burst == 0 {
        return Err(err(format!("{field}.burst"), "must be at least 1"));
    }
    Ok(RateSpec { per_second, burst })
}

fn range(field: &str, v: u64, lo: u64, hi: u64) -> Result<u64, PolicyError> {
    if v < lo || v > hi {
        return Err(err(field, format!("must be between {lo} and {hi}, got {v}")));
    }
    Ok(v)
}

impl Policy {
    /// Validates and compiles. The first problem found is returned, with its field.
    pub fn compile(&self, version: u64) -> Result<CompiledPolicy, PolicyError> {
        let origins = OriginMatcher::new(&self.origins.allow, self.origins.allow_missing)
            .map_err(|(i, e)| err(format!("origins.allow[{i}]"), e.0))?;

        let a = &self.auth;
        if a.carriers.is_empty() {
            return Err(err("auth.carriers", "at least one carrier must be enabled"));
        }
        let mut seen = HashSet::new();
        for (i, c) in a.carriers.iter().enumerate() {
            if !seen.insert(*c) {
                return Err(err(format!("auth.carriers[{i}]"), format!("`{}` is listed twice", c.as_str())));
            }
        }
        if a.issuer.as_deref().is_some_and(str::is_empty) {
            return Err(err("auth.issuer", "must not be empty when set"));
        }
        if let Some(i) = a.audience.iter().position(String::is_empty) {
            return Err(err(format!("auth.audience[{i}]"), "must not be empty"));
        }
        let leeway = range("auth.leeway_seconds", a.leeway_seconds, 0, 300)?;
        if let Some(m) = a.max_token_lifetime_seconds {
            range("auth.max_token_lifetime_seconds", m, 1, 366 * 86_400)?;
        }
        if a.keys.is_empty() && a.jwks_url.is_none() {
            return Err(err("auth.keys", "at least one key (or auth.jwks_url) is required"));
        }
        if let Some(url) = &a.jwks_url
            && !jwks_url_allowed(url)
        {
            return Err(err("auth.jwks_url", "must be an https:// URL (plain http only to 127.0.0.1, [::1] or localhost)"));
        }
        let mut keys = Vec::with_capacity(a.keys.len());
        let mut kids = HashSet::new();
        for (i, k) in a.keys.iter().enumerate() {
            let f = format!("auth.keys[{i}]");
            if k.kid.is_empty() || k.kid.len() > 256 {
                return Err(err(format!("{f}.kid"), "must be 1 to 256 characters"));
            }
            if !kids.insert(k.kid.as_str()) {
                return Err(err(format!("{f}.kid"), format!("`{}` is used by two keys", k.kid)));
            }
            let alg = jwt::parse_alg(&k.alg).ok_or_else(|| {
                err(format!("{f}.alg"), "must be one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA")
            })?;
            let key = jwt::decoding_key(alg, k.public_key_pem.as_deref(), k.secret_base64.as_deref()).map_err(|m| {
                err(if k.secret_base64.is_some() { format!("{f}.secret_base64") } else { format!("{f}.public_key_pem") }, m)
            })?;
            keys.push(Key::new(k.kid.clone(), alg, key));
        }
        let refresh_warning = range("auth.refresh.warning_seconds", a.refresh.warning_seconds, 0, 86_400)?;
        let refresh_grace = range("auth.refresh.grace_seconds", a.refresh.grace_seconds, 0, 3_600)?;
        let ticket_ttl = range("auth.tickets.ttl_seconds", a.tickets.ttl_seconds, 1, 3_600)?;
        let refresh_interval = match a.refresh.interval_seconds {
            Some(i) => Some(range("auth.refresh.interval_seconds", i, 10, 366 * 86_400)?),
            None => None,
        };
        if let Some(i) = refresh_interval
            && a.refresh.warning_seconds >= i
        {
            return Err(err("auth.refresh.warning_seconds", "must be below auth.refresh.interval_seconds"));
        }
        let access = crate::access::AccessRules::compile(&self.access)?;

        let l = &self.limits;
        range("limits.max_connections", l.max_connections, 1, 10_000_000)?;
        range("limits.per_ip.max_connections", l.per_ip.max_connections, 1, 10_000_000)?;
        range("limits.per_user.max_connections", l.per_user.max_connections, 1, 10_000_000)?;
        let per_ip_rate = rate("limits.per_ip", l.per_ip.handshakes_per_second, l.per_ip.burst)?;
        let per_user_rate = rate("limits.per_user", l.per_user.handshakes_per_second, l.per_user.burst)?;
        if l.per_ip.fleet_max_connections.is_some() {
            return Err(err("limits.per_ip.fleet_max_connections", "only per_user has a fleet-wide cap"));
        }
        if let Some(f) = l.per_user.fleet_max_connections {
            range("limits.per_user.fleet_max_connections", f, 1, 100_000)?;
        }
        let m = &l.messages;
        range("limits.messages.max_bytes", m.max_bytes, 1, 64 * 1024 * 1024)?;
        if !(m.per_second.is_finite() && m.per_second > 0.0) {
            return Err(err("limits.messages.per_second", "must be a positive number"));
        }
        range("limits.messages.burst", m.burst, 1, 1_000_000)?;
        range("limits.messages.max_buffered_bytes", m.max_buffered_bytes, 1024, 1024 * 1024 * 1024)?;
        if m.max_bytes > m.max_buffered_bytes {
            // One message must fit in the outbound buffer, or it could never be delivered.
            return Err(err(
                "limits.messages.max_bytes",
                format!("must not exceed limits.messages.max_buffered_bytes ({}), got {}", m.max_buffered_bytes, m.max_bytes),
            ));
        }
        range("limits.handshake_timeout_ms", l.handshake_timeout_ms, 100, 60_000)?;
        range("limits.idle_timeout_seconds", l.idle_timeout_seconds, 1, 86_400)?;
        range("limits.ping_interval_seconds", l.ping_interval_seconds, 1, 86_400)?;
        if l.ping_interval_seconds >= l.idle_timeout_seconds {
            return Err(err("limits.ping_interval_seconds", "must be less than limits.idle_timeout_seconds"));
        }
        range("egress.alert_bytes_per_minute", self.egress.alert_bytes_per_minute, 1, u64::MAX)?;

        let mut rev = Revocations::default();
        for (i, r) in self.revocations.iter().enumerate() {
            let f = format!("revocations[{i}]");
            if let Some(e) = &r.expires {
                parse_rfc3339(e).ok_or_else(|| err(format!("{f}.expires"), "must be an RFC 3339 time"))?;
            }
            match (&r.sub, &r.jti, &r.issued_before) {
                (Some(sub), None, None) if !sub.is_empty() => {
                    rev.subs.insert(sub.clone());
                }
                (Some(sub), None, Some(t)) if !sub.is_empty() => {
                    let t = parse_rfc3339(t).ok_or_else(|| err(format!("{f}.issued_before"), "must be an RFC 3339 time"))?;
                    let e = rev.issued_before.entry(sub.clone()).or_insert(t);
                    *e = (*e).max(t);
                }
                (None, Some(jti), None) if !jti.is_empty() => {
                    rev.jtis.insert(jti.clone());
                }
                (None, Some(_), Some(_)) => return Err(err(format!("{f}.issued_before"), "applies to `sub` revocations only")),
                _ => return Err(err(f, "needs exactly one non-empty `sub` or `jti`")),
            }
        }

        let cached = range("auth.token_cache.max_entries", a.token_cache.max_entries, 0, 1_000_000)?;
        let verifier = Verifier::new(keys, a.issuer.clone(), a.audience.clone(), leeway, a.max_token_lifetime_seconds, rev)
            .with_token_cache(cached as usize);
        Ok(CompiledPolicy {
            version,
            origins,
            carriers: a.carriers.clone(),
            verifier,
            limits: Limits {
                max_connections: l.max_connections,
                per_ip_max_connections: l.per_ip.max_connections,
                per_ip_rate,
                per_user_max_connections: l.per_user.max_connections,
                per_user_rate,
                per_user_fleet_max_connections: l.per_user.fleet_max_connections,
                messages: MessageLimits {
                    max_bytes: m.max_bytes as usize,
                    rate: RateSpec { per_second: m.per_second, burst: m.burst },
                    max_buffered_bytes: m.max_buffered_bytes as usize,
                },
                handshake_timeout: std::time::Duration::from_millis(l.handshake_timeout_ms),
                idle_timeout: std::time::Duration::from_secs(l.idle_timeout_seconds),
                ping_interval: std::time::Duration::from_secs(l.ping_interval_seconds),
            },
            refresh_warning_seconds: refresh_warning,
            refresh_grace_seconds: refresh_grace,
            refresh_interval_seconds: refresh_interval,
            access,
            ticket_ttl_seconds: ticket_ttl,
            egress_alert_bytes_per_minute: self.egress.alert_bytes_per_minute,
            egress_action: self.egress.action,
            document: self.clone(),
        })
    }
}

/// `https://host/...`, or plain `http://` to a loopback host only (the authority is
/// compared whole, so `http://localhost.evil.example` is refused).
fn jwks_url_allowed(url: &str) -> bool {
    let (secure, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => return false,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return false;
    }
    if secure {
        return true;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { authority }),
    };
    matches!(host, "localhost" | "::1") || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parses an RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`, with
/// the `time` crate) to unix seconds, fractions truncated. `None` for anything else,
/// including times before 1970 and after 9999-12-31T23:59:59Z ([`jwt::MAX_UNIX`], the
/// last second JWT dates keep; a local time in 9999 west of UTC is already year 10000);
/// never panics.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok().filter(|t| *t <= jwt::MAX_UNIX)
}

#[cfg(test)]
mod tests;
