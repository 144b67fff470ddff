//! In-band control messages (`palisade_policy::control_msg`, read from every text
//! message of a session): a message classified as `ping` or `auth` is a JSON object
//! whose `type` (and `token`) say so; nothing over 16 KiB is ever parsed. Inputs are
//! UTF-8, as text messages are by then (the session's reader refuses others with 1007;
//! serde_json does not check the UTF-8 of values it skips).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::control_msg::{ControlMessage, MAX_CONTROL_BYTES, parse};

fuzz_target!(|data: &[u8]| {
    if std::str::from_utf8(data).is_err() {
        return;
    }
    let Some(msg) = parse(data) else { return };
    assert!(data.len() <= MAX_CONTROL_BYTES);
    // serde_json skips the values of other members without reading them whole: a number
    // beyond f64 there (`1e555`, valid JSON) is skipped, but no `Value` holds it.
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let obj = v.as_object().expect("a control message is an object");
    let ty = obj.get("type").and_then(|t| t.as_str());
    match msg {
        ControlMessage::Ping => assert_eq!(ty, Some("ping")),
        ControlMessage::Auth(token) => {
            assert_eq!(ty, Some("auth"));
            assert_eq!(token.as_deref(), obj.get("token").and_then(|t| t.as_str()));
        }
    }
});
