//! The policy targets' invariant: a document that compiles comes back equal from each of
//! its other forms (YAML, JSON, protobuf, a `VersionedPolicy`) and compiles again to
//! the same limits.

use palisade_policy::Policy;
use palisade_policy::wire;
use palisade_proto::policy::v1 as pb;
use prost::Message as _;

pub fn check_document(p: &Policy) {
    let Ok(compiled) = p.compile(7) else { return };
    assert_eq!(&compiled.document, p, "the compiled policy keeps its document");

    let yaml = p.to_yaml();
    let back = Policy::from_yaml_or_json(&yaml).unwrap_or_else(|e| panic!("to_yaml does not parse back: {e}\n{yaml}"));
    assert_eq!(&back, p, "YAML round trip:\n{yaml}");

    let json = serde_json::to_string(p).expect("a policy serialises to JSON");
    let back = Policy::from_yaml_or_json(&json).unwrap_or_else(|e| panic!("JSON does not parse back: {e}\n{json}"));
    assert_eq!(&back, p, "JSON round trip:\n{json}");

    let wire_form = pb::Policy::from(p);
    let bytes = wire_form.encode_to_vec();
    let decoded = pb::Policy::decode(bytes.as_slice()).expect("our own encoding decodes");
    assert_eq!(decoded, wire_form, "protobuf round trip");
    let back = Policy::try_from(&decoded).unwrap_or_else(|e| panic!("wire -> model refused our own message: {e}"));
    assert_eq!(&back, p, "model -> wire -> model");
    assert_eq!(wire::document(&wire::versioned(7, p)).as_ref(), Ok(p), "VersionedPolicy");

    let again = back.compile(7).unwrap_or_else(|e| panic!("a round-tripped document no longer compiles: {e}"));
    assert_eq!(again.limits, compiled.limits);
    assert_eq!(again.carriers, compiled.carriers);
}
