//! Policy documents on the wire: `palisade.policy.v1.Policy` and `VersionedPolicy` bytes
//! (prost), to the model (`TryFrom`, `wire::document`), then `Policy::compile`, as
//! `NodeControl.ApplyPolicy` and the etcd watch read them. Invariant: `check_document`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::{Policy, wire};
use palisade_proto::policy::v1 as pb;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = pb::Policy::decode(data)
        && let Ok(p) = Policy::try_from(&msg)
    {
        palisade_fuzz::policy::check_document(&p);
    }
    if let Ok(v) = pb::VersionedPolicy::decode(data)
        && let Ok(p) = wire::document(&v)
    {
        palisade_fuzz::policy::check_document(&p);
    }
});
