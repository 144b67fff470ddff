//! Policy documents in JSON (`Policy::from_yaml_or_json` takes a document that starts
//! with `{` as JSON), then `Policy::compile`. Invariant: `check_document`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if !text.trim_start().starts_with('{') {
        return;
    }
    if let Ok(p) = Policy::from_yaml_or_json(text) {
        palisade_fuzz::policy::check_document(&p);
    }
});
