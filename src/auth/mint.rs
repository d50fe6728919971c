//! Minting tokens (`vidu-gateway token`; development, tests and benchmarks): with the configured HS secret, or
//! with a PEM private key for gateways that verify public keys.

use std::path::Path;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use super::parse_algorithm;
use crate::config::AuthSettings;

/// What goes into a minted token.
pub struct Claims<'a> {
    pub sub: &'a str,
    pub team: Option<&'a str>,
    pub roles: &'a [String],
    /// Seconds from `now` to `exp`; negative mints an already expired token (for tests).
    pub ttl_secs: i64,
    pub now: jiff::Timestamp,
}

/// Signs with the configured HS secret.
pub fn mint(auth: &AuthSettings, claims: &Claims<'_>) -> anyhow::Result<String> {
    if !auth.hs256_secret.is_set() {
        anyhow::bail!(
            "no HS secret is configured (auth.hs256_secret or auth.hs256_secret_file): the gateway only verifies \
             tokens from your identity provider's public keys, so get a token from the identity provider \
             (or pass --private-key with a key whose public half the gateway trusts)"
        );
    }
    let alg = auth
        .algorithms
        .iter()
        .filter(|a| a.starts_with("HS"))
        .find_map(|a| parse_algorithm(a))
        .ok_or_else(|| anyhow::anyhow!("auth.algorithms allows no HS algorithm to sign with"))?;
    let key = EncodingKey::from_secret(auth.hs256_secret.expose().as_bytes());
    Ok(jsonwebtoken::encode(
        &Header::new(alg),
        &claims_value(auth, claims)?,
        &key,
    )?)
}

/// Signs with a PEM private key; the algorithm follows the key type.
pub fn mint_with_key(
    auth: &AuthSettings,
    claims: &Claims<'_>,
    pem: &Path,
    kid: Option<&str>,
) -> anyhow::Result<String> {
    let bytes = std::fs::read(pem).with_context(|| format!("cannot read {}", pem.display()))?;
    let alg = private_key_algorithm(&bytes).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not a PKCS#8 PEM private key (RSA, EC P-256/P-384 or Ed25519)",
            pem.display()
        )
    })?;
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&bytes)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&bytes)?,
        _ => EncodingKey::from_ec_pem(&bytes)?,
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    Ok(jsonwebtoken::encode(
        &header,
        &claims_value(auth, claims)?,
        &key,
    )?)
}

/// The signing algorithm of a PEM private key, from the algorithm identifiers in its DER.
fn private_key_algorithm(pem: &[u8]) -> Option<Algorithm> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).ok()?;
    if !text.contains("PRIVATE KEY-----") {
        return None;
    }
    if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
        return Some(Algorithm::RS256);
    }
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    if has(RSA) {
        Some(Algorithm::RS256)
    } else if has(P256) {
        Some(Algorithm::ES256)
    } else if has(P384) {
        Some(Algorithm::ES384)
    } else if has(ED25519) {
        Some(Algorithm::EdDSA)
    } else {
        None
    }
}

/// The claims of a token, refusing one the gateway itself would refuse for want of a team.
fn claims_value(auth: &AuthSettings, c: &Claims<'_>) -> anyhow::Result<Value> {
    if auth.require_team && c.team.is_none_or(str::is_empty) {
        anyhow::bail!(
            "--team is required: auth.require_team = true, so the gateway refuses tokens without a team \
             (the {:?} claim); pass --team <team>",
            auth.team_claim
        );
    }
    let iat = c.now.as_second();
    let mut claims = Value::Object(Map::new());
    set_path(&mut claims, &auth.user_claim, Value::from(c.sub));
    if let Some(team) = c.team {
        set_path(&mut claims, &auth.team_claim, Value::from(team));
    }
    if !c.roles.is_empty() {
        set_path(
            &mut claims,
            &auth.roles_claim,
            Value::from(c.roles.to_vec()),
        );
    }
    set_path(&mut claims, "iat", Value::from(iat));
    set_path(
        &mut claims,
        "exp",
        Value::from(iat.saturating_add(c.ttl_secs)),
    );
    if !auth.issuer.is_empty() {
        set_path(&mut claims, "iss", Value::from(auth.issuer.as_str()));
    }
    if !auth.audience.is_empty() {
        set_path(&mut claims, "aud", Value::from(auth.audience.as_str()));
    }
    Ok(claims)
}

fn set_path(claims: &mut Value, path: &str, value: Value) {
    let mut cur = claims;
    let mut parts = super::claims::segments(path).peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = cur else { return };
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        cur = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}
