use super::*;

#[test]
fn jwks_urls() {
    for ok in
        ["https://auth.example.com/jwks.json", "http://127.0.0.1:8080/jwks", "http://localhost/k", "http://[::1]:9/k", "http://127.1.2.3/k"]
    {
        assert!(jwks_url_allowed(ok), "{ok}");
    }
    for bad in [
        "http://localhost.evil.example/k",
        "http://example.com/k",
        "ftp://x/k",
        "https://",
        "http://user@127.0.0.1/k",
        "http://127.0.0.1.nip.io/k",
    ] {
        assert!(!jwks_url_allowed(bad), "{bad}");
    }
}

#[test]
fn rfc3339() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_rfc3339("2026-11-25T10:00:00Z"), Some(1_795_600_800));
    assert_eq!(parse_rfc3339("2026-11-25T11:00:00.123+01:00"), Some(1_795_600_800));
    assert_eq!(parse_rfc3339("2026-11-25"), None);
    assert_eq!(parse_rfc3339("2026-13-25T10:00:00Z"), None);
    assert_eq!(parse_rfc3339("2026-11-25t10:00:00z"), Some(1_795_600_800));
    assert_eq!(parse_rfc3339("2026-11-25T04:30:00-05:30"), Some(1_795_600_800));
    assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Some(crate::jwt::MAX_UNIX));
    assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None, "before the epoch");
    // Regression (fuzz target timestamps): 9999 west of UTC is year 10000 in UTC, past
    // the last second JWT dates keep; it parsed to 253402304399.
    assert_eq!(parse_rfc3339("9999-12-31T23:59:59-01:00"), None);
    assert_eq!(parse_rfc3339("9999-12-31T23:59:59+01:00"), Some(crate::jwt::MAX_UNIX - 3600));
    assert_eq!(parse_rfc3339("1970-01-01T00:30:00+01:00"), None, "before the epoch in UTC");
}

#[test]
fn rfc3339_refuses_what_is_not_a_time() {
    for bad in [
        "2026-11-25T10:00:00+0\u{e9}00",
        "2026-11-25T10:00:00+\u{e9}:00",
        "2026-11-25T10:00:00.\u{e9}Z",
        "\u{e9}026-11-25T10:00:00Z",
        "2026-11-25T10:00:\u{e9}Z",
        "2026-11-25T10:00:00\u{e9}",
        "2026-11-25T10:00:00\u{1F600}\u{1F600}",
        "2026-02-31T10:00:00Z",
        "2026-11-25T24:00:00Z",
        "2026-11-25T10:00:00+24:00",
        "2026-11-25T10:00:00",
        "2026-11-25T10:00:00.Z",
        " 2026-11-25T10:00:00Z",
        "",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
    }
}

#[test]
fn bad_revocation_times_name_the_field() {
    use crate::model::{KeyDoc, Revocation};
    let mut p = Policy::default();
    p.auth.keys = vec![KeyDoc { kid: "h".into(), alg: "HS256".into(), public_key_pem: None, secret_base64: Some("a".repeat(44)) }];
    let rev = |issued_before: Option<&str>, expires: Option<&str>| Revocation {
        sub: Some("u".into()),
        jti: None,
        issued_before: issued_before.map(str::to_owned),
        expires: expires.map(str::to_owned),
    };
    p.revocations = vec![rev(Some("2026-11-25T10:00:00Z"), Some("2026-11-26T10:00:00Z"))];
    assert!(p.compile(1).is_ok());
    p.revocations = vec![rev(Some("2026-11-25T10:00:00+0\u{e9}00"), None)];
    let e = p.compile(1).map(|_| ()).expect_err("refused");
    assert_eq!(e.field, "revocations[0].issued_before");
    p.revocations = vec![rev(None, Some("2026-11-26T10:00:00+0\u{e9}00"))];
    let e = p.compile(1).map(|_| ()).expect_err("refused");
    assert_eq!(e.field, "revocations[0].expires");
}

#[test]
fn message_size_fits_the_buffer() {
    use crate::model::KeyDoc;
    let mut p = Policy::default();
    p.auth.keys = vec![KeyDoc { kid: "h".into(), alg: "HS256".into(), public_key_pem: None, secret_base64: Some("a".repeat(44)) }];
    p.limits.messages.max_bytes = 2 * 1024 * 1024;
    p.limits.messages.max_buffered_bytes = 1024 * 1024;
    let e = p.compile(1).map(|_| ()).expect_err("refused");
    assert_eq!(e.field, "limits.messages.max_bytes");
    assert!(e.message.contains("max_buffered_bytes"), "{}", e.message);
    p.limits.messages.max_bytes = 1024 * 1024;
    assert!(p.compile(1).is_ok(), "equal is fine");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    #[test]
    fn rfc3339_never_panics(s in "(?s).{0,40}") {
        let _ = parse_rfc3339(&s);
    }

    /// Valid times with a few characters inserted, removed or replaced (ASCII and
    /// multi-byte), where a parser slicing at byte offsets breaks.
    #[test]
    fn rfc3339_near_misses_never_panic(
        base in proptest::sample::select(vec!["2026-11-25T10:00:00Z", "2026-11-25T11:00:00.123+01:00", "2026-11-25T04:30:00-05:30"]),
        edits in proptest::collection::vec((0usize..40, 0u8..3, proptest::sample::select(vec!['\u{e9}', '\u{1F600}', '\u{80}', '0', '9', ':', '+', '-', '.', 'Z', 'T'])), 1..4),
    ) {
        let mut chars: Vec<char> = base.chars().collect();
        for (at, op, c) in edits {
            let at = at % (chars.len() + 1);
            match op {
                0 => chars.insert(at, c),
                1 if at < chars.len() => { chars.remove(at); }
                _ if at < chars.len() => chars[at] = c,
                _ => chars.push(c),
            }
        }
        let s: String = chars.into_iter().collect();
        let _ = parse_rfc3339(&s);
    }

    /// A valid date and time followed by a mangled offset.
    #[test]
    fn rfc3339_mangled_offsets_never_panic(frac in "(\\.[0-9]{1,3})?", offset in "[-+zZ.\u{e9}][0-9:\u{e9}\u{1F600}]{0,5}") {
        let _ = parse_rfc3339(&format!("2026-11-25T10:00:00{frac}{offset}"));
    }

    #[test]
    fn rfc3339_round_trips(t in 0u64..=crate::jwt::MAX_UNIX) {
        let dt = time::OffsetDateTime::from_unix_timestamp(t as i64).expect("in range");
        let text = dt.format(&time::format_description::well_known::Rfc3339).expect("format");
        proptest::prop_assert_eq!(parse_rfc3339(&text), Some(t));
    }
}

#[test]
fn the_fleet_wide_user_cap_is_per_user_only_and_bounded() {
    let base = crate::Policy::from_yaml_or_json(
        r#"{"auth":{"keys":[{"kid":"k","alg":"HS256","secret_base64":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="}]}}"#,
    )
    .expect("doc");
    let mut p = base.clone();
    p.limits.per_user.fleet_max_connections = Some(3);
    assert_eq!(p.compile(1).expect("valid").limits.per_user_fleet_max_connections, Some(3));
    let mut p = base.clone();
    p.limits.per_user.fleet_max_connections = Some(0);
    assert_eq!(p.compile(1).map(|_| ()).map_err(|e| e.field), Err("limits.per_user.fleet_max_connections".to_string()));
    let mut p = base;
    p.limits.per_ip.fleet_max_connections = Some(3);
    assert_eq!(p.compile(1).map(|_| ()).map_err(|e| e.field), Err("limits.per_ip.fleet_max_connections".to_string()));
}
