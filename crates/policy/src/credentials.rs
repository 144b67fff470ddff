//! Credential carriers (SPEC section 3, step 9): exactly one of `Authorization: Bearer`,
//! a `bearer.<jwt>` subprotocol entry, `?access_token=`/`?token=`, or `?ticket=`.
//! Carriers the policy disables are ignored, as if absent.

use crate::model::Carrier;

/// What the client presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    Jwt { carrier: Carrier, token: std::borrow::Cow<'a, str> },
    Ticket(std::borrow::Cow<'a, str>),
}

impl Credential<'_> {
    pub fn carrier(&self) -> Carrier {
        match self {
            Credential::Jwt { carrier, .. } => *carrier,
            Credential::Ticket(_) => Carrier::Ticket,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted<'a> {
    None,
    One(Credential<'a>),
    /// Two or more carriers (or one carrier twice): 400 `ambiguous_credentials`.
    Ambiguous,
}

/// The inputs of extraction, borrowed from the request head.
#[derive(Debug, Default, Clone)]
pub struct CarrierInputs<'a> {
    pub authorization: Vec<&'a str>,
    pub protocols: Vec<&'a str>,
    pub query: Option<&'a str>,
}

const QUERY_TOKEN_KEYS: [&str; 2] = ["access_token", "token"];
const SECRET_QUERY_KEYS: [&str; 3] = ["access_token", "token", "ticket"];

pub fn extract<'a>(inputs: &CarrierInputs<'a>, enabled: &[Carrier]) -> Extracted<'a> {
    let on = |c: Carrier| enabled.contains(&c);
    let mut found: Option<Credential<'a>> = None;
    let mut count = 0usize;
    let mut push = |c: Credential<'a>| {
        count += 1;
        found = Some(c);
    };

    if on(Carrier::Header) {
        for value in &inputs.authorization {
            let v = value.trim();
            if let Some(tok) = strip_prefix_ci(v, "bearer ") {
                push(Credential::Jwt { carrier: Carrier::Header, token: tok.trim().into() });
            }
        }
    }
    if on(Carrier::Subprotocol) {
        for entry in offered_protocols(&inputs.protocols) {
            if let Some(tok) = entry.strip_prefix("bearer.") {
                push(Credential::Jwt { carrier: Carrier::Subprotocol, token: tok.into() });
            }
        }
    }
    if let Some(q) = inputs.query {
        for (k, v) in query_pairs(q) {
            if QUERY_TOKEN_KEYS.contains(&k.as_ref()) && on(Carrier::Query) {
                push(Credential::Jwt { carrier: Carrier::Query, token: v });
            } else if k == "ticket" && on(Carrier::Ticket) {
                push(Credential::Ticket(v));
            }
        }
    }
    match (count, found) {
        (0, _) | (_, None) => Extracted::None,
        (1, Some(c)) => Extracted::One(c),
        _ => Extracted::Ambiguous,
    }
}

/// The subprotocol entries the client offered, in order, across header repetitions.
pub fn offered_protocols<'a>(values: &[&'a str]) -> impl Iterator<Item = &'a str> {
    values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|s| !s.is_empty())
}

/// The application subprotocol to echo: the first offered entry that is not a token.
/// The `bearer.` entry is never echoed.
pub fn app_protocol<'a>(values: &[&'a str]) -> Option<&'a str> {
    offered_protocols(values).find(|p| !p.starts_with("bearer."))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s.is_char_boundary(prefix.len()) && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// `application/x-www-form-urlencoded` pairs (the `form_urlencoded` crate): `+` is a
/// space, `%XX` escapes decoded, invalid escapes kept as is, invalid UTF-8 replaced with
/// U+FFFD, empty pairs skipped, a key without `=` has an empty value.
pub fn query_pairs(q: &str) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    form_urlencoded::parse(q.as_bytes())
}

/// One raw (still encoded) key, decoded as `query_pairs` would.
fn decode_key(raw: &str) -> std::borrow::Cow<'_, str> {
    form_urlencoded::parse(raw.as_bytes()).next().map(|(k, _)| k).unwrap_or_default()
}

/// The query string with the values of `access_token`, `token` and `ticket` masked, for
/// logs and spans.
pub fn mask_query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if SECRET_QUERY_KEYS.contains(&decode_key(key).as_ref()) {
            out.push_str(key);
            out.push_str("=***");
        } else {
            out.push_str(pair);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Carrier; 4] = [Carrier::Header, Carrier::Subprotocol, Carrier::Query, Carrier::Ticket];

    fn jwt(c: Carrier, t: &str) -> Extracted<'_> {
        Extracted::One(Credential::Jwt { carrier: c, token: t.into() })
    }

    #[test]
    fn each_carrier() {
        let i = CarrierInputs { authorization: vec!["Bearer abc"], ..Default::default() };
        assert_eq!(extract(&i, &ALL), jwt(Carrier::Header, "abc"));
        let i = CarrierInputs { protocols: vec!["chat.v1, bearer.abc"], ..Default::default() };
        assert_eq!(extract(&i, &ALL), jwt(Carrier::Subprotocol, "abc"));
        let i = CarrierInputs { query: Some("x=1&access_token=abc"), ..Default::default() };
        assert_eq!(extract(&i, &ALL), jwt(Carrier::Query, "abc"));
        let i = CarrierInputs { query: Some("token=abc"), ..Default::default() };
        assert_eq!(extract(&i, &ALL), jwt(Carrier::Query, "abc"));
        let i = CarrierInputs { query: Some("ticket=t1"), ..Default::default() };
        assert_eq!(extract(&i, &ALL), Extracted::One(Credential::Ticket("t1".into())));
    }

    #[test]
    fn ambiguous_and_disabled() {
        let i = CarrierInputs { authorization: vec!["Bearer a"], query: Some("access_token=b"), ..Default::default() };
        assert_eq!(extract(&i, &ALL), Extracted::Ambiguous);
        assert_eq!(extract(&i, &[Carrier::Header]), jwt(Carrier::Header, "a"));
        let i = CarrierInputs { query: Some("access_token=a&token=b"), ..Default::default() };
        assert_eq!(extract(&i, &ALL), Extracted::Ambiguous);
        let i = CarrierInputs { authorization: vec!["Basic a"], ..Default::default() };
        assert_eq!(extract(&i, &ALL), Extracted::None);
        let i = CarrierInputs { query: Some("access_token=a"), ..Default::default() };
        assert_eq!(extract(&i, &[Carrier::Header]), Extracted::None);
    }

    #[test]
    fn app_protocol_never_the_token() {
        assert_eq!(app_protocol(&["bearer.abc, chat.v1"]), Some("chat.v1"));
        assert_eq!(app_protocol(&["bearer.abc"]), None);
    }

    #[test]
    fn masking() {
        assert_eq!(mask_query("a=1&access_token=sek&token=x&ticket=y&b"), "a=1&access_token=***&token=***&ticket=***&b");
        assert_eq!(mask_query("access%5Ftoken=sek"), "access%5Ftoken=***");
        assert_eq!(mask_query("tic%6Bet=sek&&token"), "tic%6Bet=***&&token=***");
        assert_eq!(mask_query("x=%zz&%E9=1&to+ken=2"), "x=%zz&%E9=1&to+ken=2");
        assert_eq!(mask_query(""), "");
    }

    #[test]
    fn percent_decoding() {
        let pairs: Vec<_> = query_pairs("a=%41%2x&b=c+d&e=%").collect();
        assert_eq!(pairs[0].1, "A%2x");
        assert_eq!(pairs[1].1, "c d");
        assert_eq!(pairs[2].1, "%");
        let pairs: Vec<_> = query_pairs("&&access%5Ftoken=a%2Bb%20c&x&%e9=%C3%A9&+k+=%ff&t=%4").collect();
        let want: [(&str, &str); 5] = [("access_token", "a+b c"), ("x", ""), ("\u{fffd}", "\u{e9}"), (" k ", "\u{fffd}"), ("t", "%4")];
        assert_eq!(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect::<Vec<_>>(), want);
        // A percent-encoded key is the same carrier.
        let i = CarrierInputs { query: Some("access%5Ftoken=a%2Eb"), ..Default::default() };
        assert_eq!(extract(&i, &ALL), jwt(Carrier::Query, "a.b"));
        let i = CarrierInputs { query: Some("access_token=a&access_token=b"), ..Default::default() };
        assert_eq!(extract(&i, &ALL), Extracted::Ambiguous, "a carrier twice is ambiguous");
        let i = CarrierInputs { query: Some("ticket=a&ticket=b"), ..Default::default() };
        assert_eq!(extract(&i, &ALL), Extracted::Ambiguous);
    }

    proptest! {
        #[test]
        fn never_panics(a in ".{0,60}", p in ".{0,60}", q in ".{0,60}") {
            let i = CarrierInputs { authorization: vec![&a], protocols: vec![&p], query: Some(&q) };
            let _ = extract(&i, &ALL);
            let masked = mask_query(&q);
            prop_assert!(!masked.is_empty() || q.is_empty());
        }
    }
}
