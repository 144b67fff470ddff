//! Revocations (SPEC section 6: `revocations`), compiled for lookup at every check.

use std::collections::{HashMap, HashSet};

/// Revocations compiled for lookup.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    pub subs: HashSet<String>,
    pub jtis: HashSet<String>,
    /// sub -> tokens with `iat` before this (unix seconds) are revoked.
    pub issued_before: HashMap<String, u64>,
}

impl Revocations {
    pub fn is_revoked(&self, sub: &str, jti: Option<&str>, iat: Option<u64>) -> bool {
        if self.subs.contains(sub) {
            return true;
        }
        if jti.is_some_and(|j| self.jtis.contains(j)) {
            return true;
        }
        match self.issued_before.get(sub) {
            // No `iat` cannot prove the token is newer: fail closed.
            Some(t) => iat.is_none_or(|iat| iat < *t),
            None => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.jtis.is_empty() && self.issued_before.is_empty()
    }
}
