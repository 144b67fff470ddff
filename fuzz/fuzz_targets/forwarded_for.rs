//! X-Forwarded-For (`palisade_policy::client_addr`, SPEC section 3 step 5). Input: a
//! byte picking the TCP peer, then the header values (raw bytes) one per line.
//!
//! Invariants: an untrusted peer's headers are ignored; when the strict reading succeeds
//! the lenient one agrees; the address found is canonical and is untrusted unless every
//! hop was trusted; rate keys are idempotent.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use palisade_policy::client_addr::{TrustedProxies, rate_key};

const PEERS: [&str; 6] = ["10.1.2.3", "127.0.0.1", "2001:db8::7", "::ffff:10.9.9.9", "203.0.113.7", "2001:db9::1"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let trusted = TrustedProxies::new(["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"].iter().map(|n| n.parse().expect("net")).collect());
    let peer: IpAddr = PEERS[usize::from(pick) % PEERS.len()].parse().expect("ip");
    let values: Vec<&[u8]> = if rest.is_empty() { Vec::new() } else { rest.split(|b| *b == b'\n').collect() };
    let strict = trusted.client_addr_checked(peer, values.iter().copied());
    if !trusted.contains(peer) {
        assert_eq!(strict, Ok(peer), "an untrusted peer's header was read");
    }
    if let Ok(ip) = strict {
        if let IpAddr::V6(v6) = ip {
            assert!(v6.to_ipv4_mapped().is_none(), "{ip} not canonical");
        }
        let texts: Option<Vec<&str>> = values.iter().map(|v| std::str::from_utf8(v).ok()).collect();
        if let Some(texts) = texts {
            assert_eq!(trusted.client_addr(peer, texts.iter().copied()), ip, "strict and lenient readings differ");
        }
        for len in [0u8, 48, 64, 128, 200] {
            let k = rate_key(ip, len);
            assert_eq!(rate_key(k, len), k);
        }
    }
});
