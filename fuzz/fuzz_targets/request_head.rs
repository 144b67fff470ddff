//! The request head (`http.rs`) and the gate's steps that read only the head
//! (`handshake.rs`, SPEC section 3 steps 4-9, and the ticket endpoint's CORS). The head
//! ends at the first CRLFCRLF within 8 KiB, as `read_head` finds it.
//!
//! Invariants: a parsed head has no bare LF and parses the same when written back; an
//! accepted upgrade is a GET over HTTP/1.1 with one 16-byte key and the right accept
//! value; the echoed subprotocol is never the token; the client address of an untrusted
//! peer is the peer, and a trusted proxy's is what the policy crate reads from the same
//! headers; an Origin let through is one the policy allows; a route found is the path.
#![no_main]

use std::net::IpAddr;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use palisade_node::fuzzing::{
    Head, MAX_HEAD, MAX_HEADERS, accept_key, carrier, client_address, cors_origin, origin, parse_head, route, subprotocols, valid_upgrade,
};
use palisade_policy::credentials::{Credential, mask_query};
use palisade_policy::model::Carrier;

const ALL: [Carrier; 4] = [Carrier::Header, Carrier::Subprotocol, Carrier::Query, Carrier::Ticket];

/// The head written back the way a client would send it.
fn write_back(h: &Head<'_>) -> Vec<u8> {
    let mut out = format!("{} {}", h.method, h.path).into_bytes();
    if let Some(q) = h.query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(format!(" HTTP/1.{}\r\n", h.minor_version).as_bytes());
    for hd in h.headers {
        out.extend_from_slice(hd.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(hd.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn same(a: &Head<'_>, b: &Head<'_>) -> bool {
    (a.method, a.path, a.query, a.minor_version) == (b.method, b.path, b.query, b.minor_version)
        && a.headers.len() == b.headers.len()
        && a.headers.iter().zip(b.headers).all(|(x, y)| x.name == y.name && x.value == y.value)
}

fuzz_target!(|data: &[u8]| {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else { return };
    if end > MAX_HEAD {
        return;
    }
    let bytes = &data[..end];
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(head) = parse_head(bytes, &mut storage) else { return };
    assert!(bytes.iter().enumerate().all(|(i, b)| *b != b'\n' || (i > 0 && bytes[i - 1] == b'\r')), "a bare LF got through");

    let again = write_back(&head);
    let mut storage2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let reparsed = parse_head(&again, &mut storage2).unwrap_or_else(|e| panic!("written back, the head is refused: {e:?}"));
    assert!(same(&head, &reparsed), "the head parses differently when written back");

    for h in head.headers {
        if let Ok(v) = std::str::from_utf8(h.value) {
            assert!(head.count(h.name) >= 1 && head.all(h.name).any(|x| x == v));
        }
    }

    if let Ok(accept) = valid_upgrade(&head) {
        assert_eq!((head.method, head.minor_version), ("GET", 1));
        assert_eq!(head.count("sec-websocket-key"), 1);
        let key = head.header("sec-websocket-key").expect("key").trim();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).map(|k| k.len()).ok(), Some(16));
        assert_eq!(accept, accept_key(key));
        assert!(head.has_token("upgrade", "websocket") && head.has_token("connection", "upgrade"));
    }

    let (app, offered) = subprotocols(&head);
    assert!(app.as_deref().is_none_or(|p| !p.starts_with("bearer.")));
    assert!(offered.iter().all(|p| !p.starts_with("bearer.")));

    if let Ok(c) = carrier(&head, &ALL) {
        match c {
            Credential::Jwt { carrier: Carrier::Header, .. } => assert!(head.count("authorization") >= 1),
            Credential::Jwt { carrier: Carrier::Subprotocol, .. } => assert!(head.count("sec-websocket-protocol") >= 1),
            _ => assert!(head.query.is_some()),
        }
    }

    let state = palisade_fuzz::node();
    let xff: Vec<&[u8]> = head.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")).map(|h| h.value).collect();
    for peer in ["203.0.113.7", "10.0.0.1", "2001:db8::1"] {
        let peer: IpAddr = peer.parse().expect("ip");
        let got = client_address(&state, &head, peer).ok();
        let want = palisade_fuzz::trusted().client_addr_checked(peer, xff.iter().copied()).ok();
        assert_eq!(got, want, "client address from {peer}");
        if peer.to_string() == "203.0.113.7" {
            assert_eq!(got, Some(peer));
        }
    }

    let policy = palisade_fuzz::policy();
    if origin(policy, &head).is_ok() {
        assert!(head.count("origin") <= 1 && policy.origins.allows(head.header("origin")));
    }
    if let Ok(Some(o)) = cors_origin(policy, &head) {
        assert_eq!(Some(o.as_str()), head.header("origin"));
        assert!(policy.origins.allows(Some(&o)));
    }
    if let Ok(r) = route(&state, &head) {
        assert_eq!(r.path, head.path);
    }
    if let Some(q) = head.query {
        let masked = mask_query(q);
        assert_eq!(mask_query(&masked), masked);
    }
});
