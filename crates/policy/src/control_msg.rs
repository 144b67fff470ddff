//! In-band control messages of a session (SPEC section 4): JSON text frames whose `type`
//! is `ping` or `auth`. Everything else is application traffic and passes untouched.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    Ping,
    /// A refresh; `None` when the `token` field is missing or not a string.
    Auth(Option<String>),
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[serde(default)]
    token: Option<serde_json::Value>,
}

/// Largest text frame inspected for control messages; larger ones are application data.
pub const MAX_CONTROL_BYTES: usize = 16 * 1024;

/// Classifies a text frame. Cheap for application traffic: a frame that does not start
/// with `{` or never mentions `"type"` is not parsed.
pub fn parse(text: &[u8]) -> Option<ControlMessage> {
    if text.len() > MAX_CONTROL_BYTES {
        return None;
    }
    let start = text.iter().position(|b| !b.is_ascii_whitespace())?;
    if text[start] != b'{' || !contains(text, b"\"type\"") {
        return None;
    }
    let probe: Probe<'_> = serde_json::from_slice(text).ok()?;
    match probe.ty.as_ref() {
        "ping" => Some(ControlMessage::Ping),
        "auth" => Some(ControlMessage::Auth(match probe.token {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        })),
        _ => None,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn pong() -> &'static str {
    r#"{"type":"pong"}"#
}

pub fn auth_expiring(exp: u64) -> String {
    format!(r#"{{"type":"auth_expiring","exp":{exp}}}"#)
}

pub fn auth_ok(exp: u64) -> String {
    format!(r#"{{"type":"auth_ok","exp":{exp}}}"#)
}

/// `code` is one of our own refusal codes (plain identifiers), never client input.
pub fn auth_error(code: &'static str) -> String {
    format!(r#"{{"type":"auth_error","error":"{code}"}}"#)
}

pub fn schema_violation() -> &'static str {
    r#"{"type":"error","error":"schema_violation"}"#
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies() {
        assert_eq!(parse(br#"{"type":"ping"}"#), Some(ControlMessage::Ping));
        assert_eq!(parse(br#" {"type":"auth","token":"a.b.c"}"#), Some(ControlMessage::Auth(Some("a.b.c".into()))));
        assert_eq!(parse(br#"{"type":"auth","token":5}"#), Some(ControlMessage::Auth(None)));
        assert_eq!(parse(br#"{"type":"chat","text":"hi"}"#), None);
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(br#"{"type":"ping""#), None);
    }

    proptest! {
        #[test]
        fn never_panics(s in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&s);
        }
    }
}
