//! `palisade token mint` and `token check`: dev and test helpers.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use palisade_policy::mint::SigningKey;

/// Parses `90s`, `15m`, `2h`, `1d` or plain seconds.
pub fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("`{s}` is not a duration (like 90s, 15m, 2h)"))?;
    if n == 0 {
        bail!("the ttl must be positive");
    }
    n.checked_mul(mult).with_context(|| format!("`{s}` is too long a duration"))
}

pub struct MintArgs<'a> {
    pub key_text: &'a str,
    pub alg: Option<&'a str>,
    pub kid: Option<&'a str>,
    pub sub: &'a str,
    pub ttl_seconds: u64,
    pub aud: Option<&'a str>,
    pub iss: Option<&'a str>,
    pub jti: Option<&'a str>,
}

pub fn mint(a: &MintArgs<'_>) -> anyhow::Result<String> {
    let key = SigningKey::from_text(a.key_text, a.alg)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({"sub": a.sub, "iat": now, "exp": now + a.ttl_seconds});
    if let Some(aud) = a.aud {
        claims["aud"] = aud.into();
    }
    if let Some(iss) = a.iss {
        claims["iss"] = iss.into();
    }
    let jti = a.jti.map(str::to_owned).unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    claims["jti"] = jti.into();
    Ok(key.sign(a.kid, &claims)?)
}

/// Decodes a token for display; with a policy, verifies it as a node would.
/// Decodes `token`; with a policy, verifies it as a node would and, with a `route`,
/// applies that route's access rule: `verification` is `valid`, `forbidden`, or the
/// refusal code.
pub fn check(token: &str, policy: Option<&palisade_policy::Policy>, route: Option<&str>) -> anyhow::Result<serde_json::Value> {
    use base64::Engine as _;
    let parts: Vec<&str> = token.trim().split('.').collect();
    if parts.len() != 3 {
        bail!("not a compact JWS (three dot-separated parts)");
    }
    let dec = |s: &str| -> anyhow::Result<serde_json::Value> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).context("bad base64url")?;
        serde_json::from_slice(&raw).context("not JSON")
    };
    let header = dec(parts[0])?;
    let claims = dec(parts[1])?;
    let mut out = serde_json::json!({"header": header, "claims": claims});
    if let Some(p) = policy {
        let compiled = p.compile(1)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        out["verification"] = match compiled.verifier.verify(token.trim(), now) {
            Ok(claims) => match route.map(|r| compiled.access.check(r, &claims.claims_b64)) {
                Some(Err(d)) => {
                    out["access"] = serde_json::json!({"rule": d.rule, "reason": d.reason});
                    "forbidden".into()
                }
                _ => "valid".into(),
            },
            Err(e) => format!("{} ({})", e.code(), e.reason()).into(),
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90s").ok(), Some(90));
        assert_eq!(parse_ttl(" 15m ").ok(), Some(900));
        assert_eq!(parse_ttl("2h").ok(), Some(7200));
        assert_eq!(parse_ttl("1d").ok(), Some(86_400));
        assert_eq!(parse_ttl("3600").ok(), Some(3600));
        assert_eq!(parse_ttl("18446744073709551615").ok(), Some(u64::MAX));
        for bad in ["", "0s", "-1", "1w", "d", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_ttl_too_long_for_u64_is_an_error() {
        // Regression (fuzz target timestamps): the unit multiplied with overflow, a panic
        // with overflow checks and a wrapped, short ttl without.
        for s in ["1844674407370955161d", "213503982334602d", "5124095576030432h", "307445734561825861m"] {
            assert!(parse_ttl(s).is_err(), "{s}");
        }
        assert_eq!(parse_ttl("213503982334601d").ok(), Some(213_503_982_334_601 * 86_400));
    }
}
