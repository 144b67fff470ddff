//! Which sessions an operator command targets (SPEC section 6): one of connection id,
//! subject, session (`jti`), client address, all.

use std::net::IpAddr;

use palisade_proto::node::v1 as pb;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Conn(String),
    Subject(String),
    Session(String),
    Client(IpAddr),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector.client_address: not an IP address")]
pub struct BadSelector;

impl Selector {
    /// The wire selector; an empty one (or `all: false`) is `None`.
    pub fn from_proto(s: Option<&pb::Selector>) -> Result<Option<Selector>, BadSelector> {
        use pb::selector::Target;
        Ok(match s.and_then(|s| s.target.as_ref()) {
            None | Some(Target::All(false)) => None,
            Some(Target::ConnId(c)) => Some(Selector::Conn(c.clone())),
            Some(Target::Subject(s)) => Some(Selector::Subject(s.clone())),
            Some(Target::Session(j)) => Some(Selector::Session(j.clone())),
            // IPv4-mapped IPv6 names the IPv4 client: sessions record client addresses so.
            Some(Target::ClientAddress(a)) => {
                Some(Selector::Client(a.parse::<std::net::IpAddr>().map_err(|_| BadSelector)?.to_canonical()))
            }
            Some(Target::All(true)) => Some(Selector::All),
        })
    }
}

impl From<BadSelector> for tonic::Status {
    fn from(e: BadSelector) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::selector::Target;

    fn sel(t: Target) -> pb::Selector {
        pb::Selector { target: Some(t) }
    }

    #[test]
    fn every_wire_selector_converts() {
        assert_eq!(Selector::from_proto(None), Ok(None));
        assert_eq!(Selector::from_proto(Some(&sel(Target::All(false)))), Ok(None));
        assert_eq!(Selector::from_proto(Some(&sel(Target::All(true)))), Ok(Some(Selector::All)));
        assert_eq!(Selector::from_proto(Some(&sel(Target::Subject("u".into())))), Ok(Some(Selector::Subject("u".into()))));
        assert_eq!(Selector::from_proto(Some(&sel(Target::ConnId("c".into())))), Ok(Some(Selector::Conn("c".into()))));
        assert_eq!(Selector::from_proto(Some(&sel(Target::Session("j".into())))), Ok(Some(Selector::Session("j".into()))));
        assert_eq!(
            Selector::from_proto(Some(&sel(Target::ClientAddress("::1".into())))),
            Ok(Some(Selector::Client("::1".parse().expect("ip"))))
        );
        assert_eq!(
            Selector::from_proto(Some(&sel(Target::ClientAddress("::ffff:10.0.0.1".into())))),
            Ok(Some(Selector::Client("10.0.0.1".parse().expect("ip")))),
            "IPv4-mapped is the IPv4 address"
        );
        assert_eq!(Selector::from_proto(Some(&sel(Target::ClientAddress("nope".into())))), Err(BadSelector));
    }
}
