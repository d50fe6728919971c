//! Verification keys, parsed once at load: the HS secret, PEM public keys, a JWKS file, and the JWKS fetched from
//! `auth.jwks_url`. Keys are matched by algorithm family, so an HS token is never checked against RSA/EC public
//! material (no HS/RS confusion), and by `kid` (DESIGN §9).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::AuthFailure;
use super::crypto::LoadedKey;
use super::jwks::Jwks;
use crate::config::AuthSettings;

pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    name.parse().ok()
}

/// One key: where it came from (for `kid` rules), which algorithms it may verify, and the library that checks its
/// signatures (chosen here, once: auth/crypto.rs).
pub struct VerifyKey {
    pub kid: Option<String>,
    /// Set when a JWK names its algorithm: then only that one.
    pub alg: Option<Algorithm>,
    pub key: LoadedKey,
    pub from_jwks: bool,
}

impl VerifyKey {
    fn new(key: DecodingKey, kid: Option<String>, alg: Option<Algorithm>, from_jwks: bool) -> Self {
        Self {
            kid,
            alg,
            key: LoadedKey::new(key),
            from_jwks,
        }
    }

    fn accepts(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// A JWK as a verification key, or why it is skipped (encryption keys, symmetric keys, unknown types).
pub fn key_from_jwk(jwk: &Jwk) -> Result<VerifyKey, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use = enc)".into());
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(
            parse_algorithm(&a.to_string())
                .ok_or_else(|| format!("an unsupported algorithm {a}"))?,
        ),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unreadable: {e}"))?;
    if key.family() == AlgorithmFamily::Hmac {
        return Err("a symmetric (oct) key: only public keys are taken from a JWKS".into());
    }
    Ok(VerifyKey::new(key, jwk.common.key_id.clone(), alg, true))
}

/// Parses a JWKS document, keeping every usable key; fails only when the document itself is unreadable.
pub fn parse_jwks(bytes: &[u8]) -> anyhow::Result<(Vec<VerifyKey>, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc =
        serde_json::from_slice(bytes).context("not a JWKS document ({\"keys\": [...]})")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        let kid = raw
            .get("kid")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        match serde_json::from_value::<Jwk>(raw)
            .map_err(|e| format!("unreadable: {e}"))
            .and_then(|jwk| key_from_jwk(&jwk))
        {
            Ok(k) => keys.push(k),
            Err(why) => skipped.push(format!("key #{i} (kid {kid:?}) skipped: {why}")),
        }
    }
    Ok((keys, skipped))
}

/// A PEM public key (RSA, EC P-256/P-384, Ed25519), its type read from the key itself.
fn key_from_pem(path: &Path) -> anyhow::Result<VerifyKey> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| {
            anyhow::anyhow!(
                "{} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519, \"-----BEGIN PUBLIC KEY-----\")",
                path.display()
            )
        })?;
    Ok(VerifyKey::new(key, None, None, false))
}

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

    /// Verifies with the keys DESIGN §9 allows for this `alg` and `kid`: a `kid` found among JWKS keys selects
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
