//! Policy documents in YAML (`Policy::from_yaml_or_json`, then `Policy::compile`), as
//! operators and `ApplyPolicy`'s `yaml` field send them. Invariant: `check_document`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = Policy::from_yaml_or_json(text) {
        palisade_fuzz::policy::check_document(&p);
    }
});
