//! Handshake refusals: each knows its HTTP status and code (SPEC section 3's table). The
//! body is `{"error":"<code>"}` and never says which claim or key failed.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadHandshake,
    UpgradeRequired,
    HeadersTooLarge,
    NotFound,
    RateLimited {
        retry_after: Duration,
    },
    TooManyConnections,
    OriginNotAllowed,
    CredentialsMissing,
    AmbiguousCredentials,
    TokenInvalid,
    TokenExpired,
    TokenRevoked,
    /// The route's access rule is not met (step 10a).
    Forbidden,
    TicketInvalid,
    UpstreamUnavailable,
    Unavailable {
        retry_after: Duration,
    },
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadHandshake | Refusal::AmbiguousCredentials => 400,
            Refusal::UpgradeRequired => 426,
            Refusal::HeadersTooLarge => 431,
            Refusal::NotFound => 404,
            Refusal::RateLimited { .. } | Refusal::TooManyConnections => 429,
            Refusal::OriginNotAllowed
            | Refusal::TokenInvalid
            | Refusal::TokenExpired
            | Refusal::TokenRevoked
            | Refusal::Forbidden
            | Refusal::TicketInvalid => 403,
            Refusal::CredentialsMissing => 401,
            Refusal::UpstreamUnavailable => 502,
            Refusal::Unavailable { .. } => 503,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Refusal::BadHandshake => "bad_handshake",
            Refusal::UpgradeRequired => "upgrade_required",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::NotFound => "not_found",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::OriginNotAllowed => "origin_not_allowed",
            Refusal::CredentialsMissing => "credentials_missing",
            Refusal::AmbiguousCredentials => "ambiguous_credentials",
            Refusal::TokenInvalid => "token_invalid",
            Refusal::TokenExpired => "token_expired",
            Refusal::TokenRevoked => "token_revoked",
            Refusal::Forbidden => "forbidden",
            Refusal::TicketInvalid => "ticket_invalid",
            Refusal::UpstreamUnavailable => "upstream_unavailable",
            Refusal::Unavailable { .. } => "unavailable",
        }
    }

    pub fn body(self) -> String {
        format!(r#"{{"error":"{}"}}"#, self.code())
    }

    /// Extra response headers.
    pub fn headers(self) -> Vec<(&'static str, String)> {
        match self {
            Refusal::RateLimited { retry_after } | Refusal::Unavailable { retry_after } => {
                // Whole seconds, rounded up, at least 1.
                let secs = retry_after.as_millis().div_ceil(1000).max(1);
                vec![("Retry-After", secs.to_string())]
            }
            Refusal::UpgradeRequired => vec![("Sec-WebSocket-Version", "13".into()), ("Upgrade", "websocket".into())],
            Refusal::CredentialsMissing => vec![("WWW-Authenticate", "Bearer".into())],
            _ => Vec::new(),
        }
    }
}

impl From<palisade_policy::TokenError> for Refusal {
    fn from(e: palisade_policy::TokenError) -> Self {
        match e {
            palisade_policy::TokenError::Invalid(_) => Refusal::TokenInvalid,
            palisade_policy::TokenError::Expired => Refusal::TokenExpired,
            palisade_policy::TokenError::Revoked => Refusal::TokenRevoked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        let r = Refusal::RateLimited { retry_after: Duration::from_millis(1200) };
        assert_eq!(r.headers(), vec![("Retry-After", "2".to_string())]);
        assert_eq!(r.status(), 429);
        assert_eq!(r.body(), r#"{"error":"rate_limited"}"#);
    }
}
