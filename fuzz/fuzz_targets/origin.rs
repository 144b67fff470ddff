//! Origin (`palisade_policy::origin`, SPEC section 3 step 8, and the ticket's Origin
//! binding). Input lines: allow-list patterns, then the header value last; a first byte
//! with bit 0 set allows a missing Origin.
//!
//! Invariants: a parsed origin's normalised form parses back to itself and is the same
//! origin; `same_origin` is symmetric; an allow-list allows every exact origin it lists
//! and every subdomain of a wildcard (and, alone, not the bare domain), allows only what parses, and a missing Origin only
//! when told to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::origin::{Origin, OriginMatcher, same_origin};

fn check_one(s: &str) {
    if let Some(o) = Origin::parse(s) {
        let n = o.normalized();
        assert_eq!(Origin::parse(&n).as_ref(), Some(&o), "{s:?} -> {n:?}");
        assert!(same_origin(s, &n) && same_origin(&n, s), "{s:?} vs {n:?}");
        assert_eq!(n, n.to_ascii_lowercase());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let header = lines.pop().unwrap_or_default();
    for l in &lines {
        check_one(l);
    }
    check_one(header);
    if let Some(first) = lines.first() {
        assert_eq!(same_origin(first, header), same_origin(header, first));
    }

    let allow_missing = flags & 1 != 0;
    let Ok(m) = OriginMatcher::new(&lines, allow_missing) else { return };
    assert_eq!(m.allows(None), allow_missing);
    if m.allows(Some(header)) {
        assert!(Origin::parse(header.trim()).is_some(), "allowed an Origin that does not parse: {header:?}");
    }
    for p in &lines {
        match p.split_once("://*.") {
            None => {
                let o = Origin::parse(p).expect("an exact pattern that compiled parses");
                assert!(m.allows(Some(p)) && m.allows(Some(&o.normalized())), "{p:?} not allowed by itself");
            }
            Some((scheme, rest)) => {
                let sub = format!("{scheme}://fz.{rest}");
                if Origin::parse(&sub).is_some() {
                    assert!(m.allows(Some(&sub)), "{sub:?} not allowed by {p:?}");
                }
                let bare = format!("{scheme}://{rest}");
                if lines.len() == 1 {
                    assert!(!m.allows(Some(&bare)), "{bare:?} allowed by the wildcard {p:?} alone");
                }
            }
        }
    }
});
