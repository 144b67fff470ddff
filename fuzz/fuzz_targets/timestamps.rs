//! Times and durations: RFC 3339 timestamps (`parse_rfc3339`: revocations'
//! `issued_before` and `expires`) and `palisade token mint --ttl` durations
//! (`parse_ttl`: `90s`, `15m`, `2h`, `1d`, plain seconds). JWT NumericDates are in the
//! `jwt_claims` target.
//!
//! Invariants: a parsed time is within year 9999 and comes back from its own RFC 3339
//! form; a revocation compiles exactly when its time parses; a duration is positive and
//! exactly its number times its unit.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_policy::model::Revocation;
use palisade_policy::{Policy, parse_rfc3339};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn base() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let doc = r#"{"auth": {"keys": [{"kid": "k1", "alg": "HS256", "secret_base64": "cGFsaXNhZGUtZnV6ei1zZWNyZXQtMDEyMzQ1Njc4OWFi"}]}}"#;
        let p = Policy::from_yaml_or_json(doc).expect("base policy");
        p.compile(1).expect("the base policy compiles");
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let parsed = parse_rfc3339(&s);
    if let Some(t) = parsed {
        assert!(t <= palisade_policy::jwt::MAX_UNIX, "{s:?} is {t}");
        let text = OffsetDateTime::from_unix_timestamp(t as i64).expect("in range").format(&Rfc3339).expect("formats");
        assert_eq!(parse_rfc3339(&text), Some(t), "{s:?} -> {text:?}");
    }
    let mut doc = base().clone();
    doc.revocations = vec![Revocation { sub: Some("u".into()), jti: None, issued_before: Some(s.to_string()), expires: None }];
    assert_eq!(doc.compile(1).is_ok(), parsed.is_some(), "issued_before {s:?}");
    doc.revocations = vec![Revocation { sub: None, jti: Some("j".into()), issued_before: None, expires: Some(s.to_string()) }];
    assert_eq!(doc.compile(1).is_ok(), parsed.is_some(), "expires {s:?}");

    if let Ok(n) = palisade::token::parse_ttl(&s) {
        let t = s.trim();
        let (num, unit) = match t.as_bytes().last() {
            Some(b's') => (&t[..t.len() - 1], 1u128),
            Some(b'm') => (&t[..t.len() - 1], 60),
            Some(b'h') => (&t[..t.len() - 1], 3600),
            Some(b'd') => (&t[..t.len() - 1], 86_400),
            _ => (t, 1),
        };
        let want = num.parse::<u128>().expect("a duration's number") * unit;
        assert!(n > 0);
        assert_eq!(u128::from(n), want, "{s:?}");
    }
});
