//! Palisade's control-plane protocol (SPEC section 6): the code generated from
//! `proto/palisade/**` by tonic and prost, and the file descriptor set that the
//! reflection services register.
//!
//! - [`policy::v1`]: the policy document on the wire (`palisade.policy.v1`).
//! - [`node::v1`]: the node service `NodeControl` (`palisade.node.v1`).
//! - [`controller::v1`]: the fleet service `FleetControl` (`palisade.controller.v1`).

#![forbid(unsafe_code)]

/// `palisade.policy.v1`: the policy document and its version.
pub mod policy {
    /// Generated from `proto/palisade/policy/v1/policy.proto`.
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, clippy::unwrap_used, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("palisade.policy.v1");
    }
}

/// `palisade.node.v1`: the `NodeControl` service of every edge node.
pub mod node {
    /// Generated from `proto/palisade/node/v1/node.proto`.
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, clippy::unwrap_used, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("palisade.node.v1");
    }
}

/// `palisade.controller.v1`: the `FleetControl` service of the controller.
pub mod controller {
    /// Generated from `proto/palisade/controller/v1/controller.proto`.
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, clippy::unwrap_used, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("palisade.controller.v1");
    }
}

/// Encoded `FileDescriptorSet` of all three packages, for `tonic-reflection`
/// (`register_encoded_file_descriptor_set`, for both the `v1` and `v1alpha` services).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/palisade_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn descriptor_set_names_all_services() {
        let text = String::from_utf8_lossy(FILE_DESCRIPTOR_SET);
        for name in ["palisade.policy.v1", "palisade.node.v1", "palisade.controller.v1", "NodeControl", "FleetControl"] {
            assert!(text.contains(name), "descriptor set lacks {name}");
        }
    }

    #[test]
    fn unset_optional_fields_stay_unset_on_the_wire() {
        let limits = policy::v1::Limits { max_connections: Some(0), ..Default::default() };
        let back = policy::v1::Limits::decode(limits.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back.max_connections, Some(0), "an explicit 0 survives");
        assert_eq!(back.idle_timeout_seconds, None, "an unset field stays unset");
    }

    #[test]
    fn selector_is_a_oneof() {
        let s = node::v1::Selector { target: Some(node::v1::selector::Target::Subject("user-42".into())) };
        let req = controller::v1::DisconnectRequest { selector: Some(s), code: 0, reason: String::new(), node_id: String::new() };
        let back = controller::v1::DisconnectRequest::decode(req.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(back, req);
    }
}
