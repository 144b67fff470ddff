use std::fmt;

/// A refused policy: which field, and why. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// Dotted path of the offending field (`auth.keys[1].alg`), or `document` for a parse
    /// error that serde located by line.
    pub field: String,
    pub message: String,
}

impl PolicyError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError { field: field.into(), message: message.into() }
    }

    pub(crate) fn parse(message: String) -> Self {
        // serde_yaml_ng/serde_json messages name the unknown or mistyped field and the line.
        PolicyError { field: "document".into(), message }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid policy: {}: {}", self.field, self.message)
    }
}
