//! Verification keys, parsed once at load and grouped by algorithm family so an HS token can never be checked
//! against RSA/EC public material (no HS/RS confusion).

use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthFailure;
use crate::config::AuthSettings;

/// Which keys an algorithm may be verified with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
    /// An algorithm this build does not know: no key ever matches it.
    Other,
}

impl Family {
    pub fn of(alg: Algorithm) -> Family {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => Family::Hmac,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
            ES256 | ES384 => Family::Ec,
            EdDSA => Family::Ed,
            #[allow(unreachable_patterns)]
            _ => Family::Other,
        }
    }
}

pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    name.parse().ok()
}

struct VerifyKey {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// Every configured key.
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    pub fn from_settings(settings: &AuthSettings) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        if settings.hs256_secret.is_set() {
            keys.push(VerifyKey {
                kid: None,
                family: Family::Hmac,
                key: DecodingKey::from_secret(settings.hs256_secret.expose().as_bytes()),
            });
        }
        Ok(Self { keys })
    }

    /// The keys a token with this algorithm (and `kid`, if any) may be verified with.
    pub fn candidates(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<&DecodingKey>, AuthFailure> {
        let family = Family::of(alg);
        let of_family = self.keys.iter().filter(|k| k.family == family);
        let found: Vec<&DecodingKey> = match kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => of_family
                .filter(|k| k.kid.as_deref() == Some(kid))
                .map(|k| &k.key)
                .collect(),
            Some(_) => of_family
                .filter(|k| k.kid.is_none())
                .map(|k| &k.key)
                .collect(),
            None => of_family.map(|k| &k.key).collect(),
        };
        if found.is_empty() {
            return Err(AuthFailure::invalid(
                if kid.is_some() {
                    "unknown_kid"
                } else {
                    "no_key"
                },
                match kid {
                    Some(kid) => format!("no key with id {kid:?} for algorithm {alg:?}"),
                    None => format!("no key is configured for algorithm {alg:?}"),
                },
            ));
        }
        Ok(found)
    }
}
