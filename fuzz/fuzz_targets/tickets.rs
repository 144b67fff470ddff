//! Ticket ids and what surrounds them (SPEC section 5): the `?ticket=` id from a query
//! string, `plausible_id` (the only check before an id becomes an etcd key), the store's
//! `consume`, tickets read back from etcd, and the `POST /v1/tickets` body.
//!
//! Invariants: a plausible id is one path segment under the tickets prefix; a minted id
//! is plausible and consumed once; an id that was never minted consumes nothing; a stored
//! ticket re-encodes to itself; a ticket body's origin is stored normalised.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_node::fuzzing::{MemoryTickets, TicketRecord, new_ticket_id, plausible_id, stored_ticket, ticket_request_origin};
use palisade_policy::Claims;
use palisade_policy::credentials::{CarrierInputs, Credential, Extracted, extract};
use palisade_policy::model::Carrier;
use palisade_policy::origin::Origin;

fn store() -> &'static MemoryTickets {
    static S: OnceLock<MemoryTickets> = OnceLock::new();
    S.get_or_init(MemoryTickets::default)
}

fn record() -> TicketRecord {
    let claims = Claims { sub: "u".into(), exp: 2_000_000_000, iat: None, jti: None, kid: None, claims_b64: "e30".into() };
    TicketRecord { claims, origin: Some("https://app.example.com".into()) }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let inputs = CarrierInputs { query: Some(&text), ..Default::default() };
    let ids: Vec<String> = match extract(&inputs, &[Carrier::Ticket]) {
        Extracted::One(Credential::Ticket(id)) => vec![id.into_owned(), text.to_string()],
        _ => vec![text.to_string()],
    };
    let keys = palisade_plane::etcd::Keys::new("default");
    for id in &ids {
        if plausible_id(id) {
            let key = keys.ticket(id);
            assert_eq!(key.strip_prefix("/palisade/default/tickets/"), Some(id.as_str()));
            assert!(!id.contains(['/', '.', '%']) && !id.is_empty(), "{id:?} is not one key segment");
        }
        assert_eq!(store().consume(id), None, "an id never minted consumed a ticket");
    }
    let minted = store().mint(record(), Duration::from_secs(60)).expect("room for a ticket");
    assert!(plausible_id(&minted) && plausible_id(&new_ticket_id()));
    assert_eq!(store().consume(&minted), Some(record()));
    assert_eq!(store().consume(&minted), None, "a ticket consumed twice");

    if let Some((rec, expires, again)) = stored_ticket(data) {
        assert_eq!(stored_ticket(&again), Some((rec, expires, again.clone())), "a stored ticket re-encodes to itself");
    }
    if let Ok(Some(o)) = ticket_request_origin(data) {
        assert_eq!(Origin::parse(&o).map(|p| p.normalized()), Some(o.clone()), "ticket origin {o:?} not normalised");
    }
});
