//! Minting tokens with the configured HS secret (`vidu-gateway token`; development and tests).

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Map, Value};

use super::parse_algorithm;
use crate::config::AuthSettings;

/// Builds the claims at the configured claim paths (dotted paths become nested objects) and signs them.
pub fn mint(
    auth: &AuthSettings,
    sub: &str,
    team: Option<&str>,
    roles: &[String],
    ttl_secs: u64,
    now: jiff::Timestamp,
) -> anyhow::Result<String> {
    if !auth.hs256_secret.is_set() {
        anyhow::bail!(
            "no HS secret is configured (auth.hs256_secret or auth.hs256_secret_file): the gateway only verifies \
             tokens from your identity provider's public keys, so get a token from the identity provider"
        );
    }
    let alg = auth
        .algorithms
        .iter()
        .filter(|a| a.starts_with("HS"))
        .find_map(|a| parse_algorithm(a))
        .ok_or_else(|| anyhow::anyhow!("auth.algorithms allows no HS algorithm to sign with"))?;
    let iat = now.as_second();
    let mut claims = Value::Object(Map::new());
    set_path(&mut claims, &auth.user_claim, Value::from(sub));
    if let Some(team) = team {
        set_path(&mut claims, &auth.team_claim, Value::from(team));
    }
    if !roles.is_empty() {
        set_path(&mut claims, &auth.roles_claim, Value::from(roles.to_vec()));
    }
    set_path(&mut claims, "iat", Value::from(iat));
    set_path(
        &mut claims,
        "exp",
        Value::from(iat.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2))),
    );
    if !auth.issuer.is_empty() {
        set_path(&mut claims, "iss", Value::from(auth.issuer.as_str()));
    }
    if !auth.audience.is_empty() {
        set_path(&mut claims, "aud", Value::from(auth.audience.as_str()));
    }
    let key = EncodingKey::from_secret(auth.hs256_secret.expose().as_bytes());
    Ok(jsonwebtoken::encode(&Header::new(alg), &claims, &key)?)
}

fn set_path(claims: &mut Value, path: &str, value: Value) {
    let mut cur = claims;
    let mut parts = path.split('.').peekable();
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
