//! Egress accounting of one session's writes (SPEC section 4): the node's meter
//! ([`crate::egress::EgressMeter`]), its alert and, with `action: disconnect`, the close.

/// Accounts `n` bytes sent to a session of `subject`: one alert per window (log event,
/// metric, audit event), and the subject's sessions closed with 4003 when the policy
/// says `action: disconnect`: at the crossing, and again whenever a session of the
/// subject (a reconnect) is sent more in the same window.
pub(super) fn account(node: &crate::state::NodeState, subject: &str, n: u64) {
    // Per write: read the two settings without taking a reference on the policy.
    let Some((threshold, action)) = node.policy.with(|p| p.map(|p| (p.egress_alert_bytes_per_minute, p.egress_action))) else {
        return;
    };
    let minute = crate::handshake::unix_now() / 60;
    let disconnect = action == palisade_policy::model::EgressAction::Disconnect;
    let state = node.egress.add(subject, n, threshold, minute);
    if state == crate::egress::Egress::Crossed {
        node.counters.egress_alerts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            event = "egress_alert",
            node = %node.id,
            enduser.id = %subject,
            threshold_bytes_per_minute = threshold,
            action = if disconnect { "disconnect" } else { "log" },
        );
        node.events.publish(|| crate::events::Event {
            kind: crate::events::kind::EGRESS_ALERT,
            subject: subject.to_string(),
            result: "alert",
            code: if disconnect { "disconnect" } else { "log" }.into(),
            count: threshold,
            ..Default::default()
        });
    }
    if state != crate::egress::Egress::Under && disconnect {
        node.registry.dispatch(
            &crate::registry::Selector::Subject(subject.to_string()),
            crate::registry::Command::Close { code: crate::session::close::REVOKED, reason: "egress limit".into() },
        );
    }
}
