//! `Secret`: a configuration value that is never printed, logged or serialised in clear.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a set secret looks like in `check-config` output and in `/gateway/v1/config`.
pub const REDACTED: &str = "<redacted>";

/// A secret string. `""` means unset (an empty inline value, env override or file counts as not given). `Debug`, `Display` and `Serialize` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    /// The value, for the one place that needs it (signing, the upstream `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_set() { REDACTED } else { "\"\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.is_set() { REDACTED } else { "" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_secret_never_shows_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn an_empty_secret_is_unset() {
        assert!(!Secret::new("").is_set());
        assert_eq!(serde_json::to_string(&Secret::default()).unwrap(), "\"\"");
    }
}
