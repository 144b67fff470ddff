//! Credential carriers and the query string (`palisade_policy::credentials`, SPEC
//! section 3 step 9). Input: `authorization values \0 subprotocol values \0 query`, the
//! values within a section split at `\x01`.
//!
//! Invariants: what any set of enabled carriers extracts follows from what each carrier
//! finds alone (none, one, or several: ambiguous); a token comes from its carrier's
//! input; the echoed subprotocol is never the token; masking is idempotent, keeps every
//! pair and hides every secret value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::credentials::{
    CarrierInputs, Credential, Extracted, app_protocol, extract, mask_query, offered_protocols, query_pairs,
};
use palisade_policy::model::Carrier;

const ALL: [Carrier; 4] = [Carrier::Header, Carrier::Subprotocol, Carrier::Query, Carrier::Ticket];

/// How many credentials a carrier alone finds: 0, 1, or 2 for "two or more".
fn found(e: &Extracted<'_>) -> usize {
    match e {
        Extracted::None => 0,
        Extracted::One(_) => 1,
        Extracted::Ambiguous => 2,
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut sections = text.splitn(3, '\0');
    let authorization: Vec<&str> = sections.next().unwrap_or_default().split('\x01').collect();
    let protocols: Vec<&str> = sections.next().map(|s| s.split('\x01').collect()).unwrap_or_default();
    let query = sections.next();
    let inputs = CarrierInputs { authorization, protocols, query };

    let alone: Vec<Extracted<'_>> = ALL.iter().map(|c| extract(&inputs, &[*c])).collect();
    for mask in 0u8..16 {
        let enabled: Vec<Carrier> = ALL.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, c)| *c).collect();
        let got = extract(&inputs, &enabled);
        let total: usize = ALL.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(i, _)| found(&alone[i])).sum();
        match total {
            0 => assert_eq!(got, Extracted::None, "{enabled:?}"),
            1 => {
                let one = ALL.iter().enumerate().find(|(i, _)| mask & (1 << i) != 0 && found(&alone[*i]) == 1).map(|(i, _)| &alone[i]);
                assert_eq!(Some(&got), one, "{enabled:?}");
            }
            _ => assert_eq!(got, Extracted::Ambiguous, "{enabled:?}"),
        }
        if let Extracted::One(c) = &got {
            assert!(enabled.contains(&c.carrier()), "a disabled carrier was used");
        }
    }

    match extract(&inputs, &ALL) {
        Extracted::One(Credential::Jwt { carrier: Carrier::Header, token }) => {
            assert_eq!(token.trim(), token.as_ref(), "header token trimmed");
            assert!(
                inputs
                    .authorization
                    .iter()
                    .any(|v| v.trim().get(..7).is_some_and(|p| p.eq_ignore_ascii_case("bearer ")) && v.contains(token.as_ref()))
            );
        }
        Extracted::One(Credential::Jwt { carrier: Carrier::Subprotocol, token }) => {
            assert!(offered_protocols(&inputs.protocols).any(|p| p.strip_prefix("bearer.") == Some(token.as_ref())));
        }
        Extracted::One(Credential::Jwt { carrier: Carrier::Query, token }) => {
            let q = query.expect("a query token has a query");
            assert!(query_pairs(q).any(|(k, v)| (k == "access_token" || k == "token") && v == token));
        }
        Extracted::One(Credential::Ticket(id)) => {
            let q = query.expect("a ticket has a query");
            assert!(query_pairs(q).any(|(k, v)| k == "ticket" && v == id));
        }
        _ => {}
    }

    if let Some(app) = app_protocol(&inputs.protocols) {
        assert!(!app.starts_with("bearer."), "the token would be echoed");
        assert!(offered_protocols(&inputs.protocols).any(|p| p == app));
    }
    assert!(offered_protocols(&inputs.protocols).all(|p| !p.is_empty() && p.trim() == p));

    if let Some(q) = query {
        let masked = mask_query(q);
        assert_eq!(mask_query(&masked), masked, "masking is idempotent");
        assert_eq!(masked.split('&').count(), q.split('&').count(), "every pair kept");
        for (k, v) in query_pairs(&masked) {
            if matches!(k.as_ref(), "access_token" | "token" | "ticket") {
                assert_eq!(v, "***", "a secret value survived masking");
            }
        }
    }
});
