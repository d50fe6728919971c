//! One verification key: parsed once at load from the HS secret, a PEM public key or a JWK, with the algorithms it
//! may verify and the signature library chosen for it (auth/crypto.rs). A leaf: both the configured key set
//! (`keys`) and the fetched JWKS (`jwks`) build on it.

use std::path::Path;

use anyhow::Context;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::crypto::LoadedKey;

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
    pub fn new(
        key: DecodingKey,
        kid: Option<String>,
        alg: Option<Algorithm>,
        from_jwks: bool,
    ) -> Self {
        Self {
            kid,
            alg,
            key: LoadedKey::new(key),
            from_jwks,
        }
    }

    pub fn accepts(&self, alg: Algorithm) -> bool {
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
pub fn key_from_pem(path: &Path) -> anyhow::Result<VerifyKey> {
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
