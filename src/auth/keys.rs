//! The configured key set: the HS secret, PEM public keys, a JWKS file, and the JWKS fetched from `auth.jwks_url`.
//! Keys are matched by algorithm family, so an HS token is never checked against RSA/EC public material (no HS/RS
//! confusion), and by `kid`: a token with a `kid` is checked against the JWKS key of that `kid` only, else against
//! the keys without a `kid` of its family.

use std::sync::Arc;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthFailure;
use super::crypto::LoadedKey;
use super::jwks::Jwks;
use super::key::{VerifyKey, key_from_pem, parse_jwks};
use crate::config::AuthSettings;

/// Every configured key: the static ones, and the JWKS fetched over HTTP when `auth.jwks_url` is set.
pub struct KeySet {
    static_keys: Vec<VerifyKey>,
    jwks: Option<Arc<Jwks>>,
}

impl KeySet {
    pub fn from_settings(settings: &AuthSettings, jwks: Option<Arc<Jwks>>) -> anyhow::Result<Self> {
        let mut static_keys = Vec::new();
        if settings.hs256_secret.is_set() {
            static_keys.push(VerifyKey::new(
                DecodingKey::from_secret(settings.hs256_secret.expose().as_bytes()),
                None,
                None,
                false,
            ));
        }
        for path in &settings.public_key_files {
            static_keys.push(key_from_pem(path).context("auth.public_key_files")?);
        }
        if let Some(path) = &settings.jwks_file {
            let bytes = std::fs::read(path)
                .with_context(|| format!("auth.jwks_file: cannot read {}", path.display()))?;
            let (keys, skipped) = parse_jwks(&bytes)
                .with_context(|| format!("auth.jwks_file: {}", path.display()))?;
            for s in skipped {
                tracing::warn!(file = %path.display(), "{s}");
            }
            static_keys.extend(keys);
        }
        Ok(Self { static_keys, jwks })
    }

    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Verifies with the keys allowed for this `alg` and `kid`: a `kid` found among JWKS keys selects
    /// that key only; a `kid` found nowhere falls back to the keys without a `kid` (PEM, secret); no `kid`: every
    /// key of the family. Returns `None` when no key applies.
    pub fn with_candidates<T>(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        mut f: impl FnMut(&LoadedKey) -> Option<T>,
    ) -> Result<Option<T>, AuthFailure> {
        let fetched = self.jwks.as_ref().map(|j| j.current());
        let fetched_keys: &[VerifyKey] = fetched.as_deref().map(Vec::as_slice).unwrap_or(&[]);
        let all = || self.static_keys.iter().chain(fetched_keys.iter());
        let with_kid: Vec<&VerifyKey> = match kid {
            Some(kid) => all().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => Vec::new(),
        };
        let chosen: Vec<&VerifyKey> = match kid {
            Some(_) if !with_kid.is_empty() => with_kid,
            Some(_) => all().filter(|k| !k.from_jwks && k.kid.is_none()).collect(),
            None => all().collect(),
        };
        let usable: Vec<&VerifyKey> = chosen.into_iter().filter(|k| k.accepts(alg)).collect();
        if usable.is_empty() {
            return Err(match kid {
                Some(kid) if self.jwks.is_some() || !fetched_keys.is_empty() => {
                    AuthFailure::invalid(
                        "unknown_kid",
                        format!(
                            "unknown key id {kid:?}: no configured key verifies {alg:?} tokens with it"
                        ),
                    )
                }
                Some(kid) => AuthFailure::invalid(
                    "unknown_kid",
                    format!(
                        "unknown key id {kid:?} and no key without an id verifies {alg:?} tokens"
                    ),
                ),
                None => AuthFailure::invalid(
                    "no_key",
                    format!("no configured key verifies {alg:?} tokens"),
                ),
            });
        }
        Ok(usable.into_iter().find_map(|k| f(&k.key)))
    }

    /// Whether `kid` names a key we hold now (static or fetched).
    pub fn knows_kid(&self, kid: &str) -> bool {
        self.static_keys
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid))
            || self
                .jwks
                .as_ref()
                .is_some_and(|j| j.current().iter().any(|k| k.kid.as_deref() == Some(kid)))
    }
}
