//! Authentication: `Authorization: Bearer <JWT>` (or Vidu's `Token <JWT>`) → a verified `Identity {user, team,
//! roles}`.

mod cache;
pub mod claims;
mod compact;
pub mod crypto;
pub mod jwks;
mod key;
mod keys;
pub mod mint;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, errors::ErrorKind};
use serde_json::Value;

use crate::clock::SharedClock;
use crate::config::AuthSettings;
use crate::metrics::Metrics;
use jwks::Jwks;
pub use key::parse_algorithm;
pub use keys::KeySet;

/// `Authorization` schemes that carry the JWT: the standard one, and Vidu's (`Token <key>`).
const TOKEN_SCHEMES: [&str; 2] = ["Bearer", "Token"];

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Who is calling, as the identity provider vouched for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// `None` only when `auth.require_team = false` and the token has no team.
    pub team: Option<String>,
    pub roles: Vec<String>,
    pub is_admin: bool,
}

/// Why a token was refused: the metric label and the message the caller sees (never key material or the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub reason: &'static str,
    pub message: String,
    /// Whether a token was presented at all (decides `error="invalid_token"`).
    pub token_sent: bool,
}

impl AuthFailure {
    fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            token_sent: true,
        }
    }
}

/// Verifies tokens against the configured keys and maps claims to an `Identity`.
pub struct Authenticator {
    settings: AuthSettings,
    allowed: Vec<Algorithm>,
    keys: KeySet,
    clock: SharedClock,
    cache: cache::VerifiedTokens,
}

/// The time claims of a verified token, re-checked on every use of a cached verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeClaims {
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
}

impl Authenticator {
    /// Parses every key once, at load. With `auth.jwks_url`, the JWKS starts empty: spawn `jwks().run()` on the
    /// server's runtime to fetch it.
    pub fn new(
        settings: &AuthSettings,
        clock: SharedClock,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        Self::with_jwks(settings, clock, metrics, None)
    }

    /// Like `new`, reusing `previous` (keys and fetch loop) when it fetches the same URL at the same interval.
    pub fn with_jwks(
        settings: &AuthSettings,
        clock: SharedClock,
        metrics: &Metrics,
        previous: Option<&Arc<Jwks>>,
    ) -> anyhow::Result<Self> {
        // jsonwebtoken's own `decode`, for other callers in the process, chooses a library as the gateway does.
        crypto::install();
        let allowed = settings
            .algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a))
            .collect();
        let ttl = Duration::from_secs(settings.jwks_refresh_secs);
        let jwks = settings.jwks_url.as_ref().map(|url| match previous {
            Some(p) if p.same_source(url, ttl) => p.clone(),
            _ => Jwks::new(
                url.clone(),
                ttl,
                clock.clone(),
                metrics.jwks_fetches.clone(),
                metrics.jwks_keys.clone(),
            ),
        });
        Ok(Self {
            keys: KeySet::from_settings(settings, jwks)?,
            settings: settings.clone(),
            allowed,
            clock,
            cache: cache::VerifiedTokens::default(),
        })
    }

    /// The fetched JWKS, when `auth.jwks_url` is set.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.keys.jwks()
    }

    /// The token of a request, or why there is none. `Authorization: Bearer <JWT>`, or `Token <JWT>` as Vidu's
    /// clients send their key (a client works after changing only its base URL and key): the same token, the
    /// same checks, the same errors.
    pub fn bearer(authorization: Option<&[u8]>) -> Result<&str, AuthFailure> {
        let missing = |message: &str| AuthFailure {
            reason: "missing_token",
            message: message.into(),
            token_sent: false,
        };
        let value = authorization.ok_or_else(|| {
            missing("missing token: send Authorization: Bearer <token> (or Token <token>)")
        })?;
        let value = std::str::from_utf8(value)
            .ok()
            .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
            .ok_or_else(|| {
                AuthFailure::invalid("malformed", "the Authorization header is not valid ASCII")
            })?;
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !TOKEN_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
            return Err(missing(
                "the Authorization header must use the Bearer or Token scheme: Authorization: Bearer <token> \
                 or Authorization: Token <token>, with the JWT your identity provider issued",
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(missing(
                "empty token: send Authorization: Bearer <token> (or Token <token>)",
            ));
        }
        Ok(token)
    }

    /// Verifies the token of an `Authorization` header value (absent: `None`).
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<Identity, AuthFailure> {
        self.verify(Self::bearer(authorization)?).await
    }

    /// Verifies one token: size, header, algorithm allow-list, key (refetching the JWKS once for an unknown
    /// `kid`), signature, time claims, iss/aud, identity claims.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthFailure> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure::invalid(
                "too_large",
                format!("token is larger than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        let key_version = self.keys.jwks().map_or(0, |j| j.version());
        if let Some((identity, times)) = self.cache.get(token, key_version) {
            self.check_times(&times)?;
            return Ok(identity);
        }
        let (identity, times) = self.verify_uncached(token).await?;
        self.cache.insert(token, key_version, &identity, times);
        Ok(identity)
    }

    /// The full check: signature and every claim. The token is decoded once; each candidate key checks the
    /// signature with its own library, once (auth/crypto.rs).
    async fn verify_uncached(&self, token: &str) -> Result<(Identity, TimeClaims), AuthFailure> {
        let malformed = |why: &str| {
            AuthFailure::invalid(
                "malformed",
                format!("token is not a well-formed JWT: {why}"),
            )
        };
        let jws = compact::Compact::parse(token).map_err(malformed)?;
        if jws.critical {
            return Err(AuthFailure::invalid(
                "critical_header",
                "token header has a `crit` parameter: it lists extensions a recipient must understand, and this \
                 gateway understands none, so the token is refused (RFC 7515, section 4.1.11)",
            ));
        }
        let header = &jws.header;
        if !self.allowed.contains(&header.alg) {
            return Err(AuthFailure::invalid(
                "algorithm_not_allowed",
                format!(
                    "token algorithm {:?} is not allowed (auth.algorithms: {})",
                    header.alg,
                    self.settings.algorithms.join(", ")
                ),
            ));
        }
        if let (Some(kid), Some(jwks)) = (header.kid.as_deref(), self.keys.jwks())
            && !self.keys.knows_kid(kid)
        {
            // Perhaps the IdP rotated its keys: look again (rate-limited), then decide.
            jwks.refresh_for_unknown_kid().await;
            if !self.keys.knows_kid(kid)
                && let Some(why) = jwks.not_ready()
            {
                return Err(AuthFailure::invalid("keys_unavailable", why));
            }
        }
        let mut last = ErrorKind::InvalidSignature;
        let verified = self
            .keys
            .with_candidates(header.alg, header.kid.as_deref(), |key| {
                match key.verify(header.alg, jws.signing_input, &jws.signature) {
                    Ok(()) => Some(()),
                    Err(e) => {
                        last = e;
                        None
                    }
                }
            })
            .map_err(|f| match self.keys.jwks().and_then(|j| j.not_ready()) {
                Some(why) => AuthFailure::invalid("keys_unavailable", why),
                None => f,
            })?;
        if verified.is_some() {
            return self.identity(&jws.claims().map_err(malformed)?);
        }
        Err(match last {
            ErrorKind::InvalidSignature => {
                AuthFailure::invalid("bad_signature", "token signature is invalid")
            }
            ErrorKind::InvalidAlgorithm => AuthFailure::invalid(
                "algorithm_not_allowed",
                "token algorithm does not match the key it names",
            ),
            _ => AuthFailure::invalid("malformed", "token is not a well-formed JWT"),
        })
    }

    /// `exp` (required), `nbf` and `iat` against the clock, with `leeway_secs`.
    fn check_times(&self, t: &TimeClaims) -> Result<(), AuthFailure> {
        let now = self.clock.now().as_second();
        let leeway = i64::try_from(self.settings.leeway_secs).unwrap_or(i64::MAX);
        if now > t.exp.saturating_add(leeway) {
            return Err(AuthFailure::invalid(
                "expired",
                format!("token expired at {}", fmt_ts(t.exp)),
            ));
        }
        if let Some(nbf) = t.nbf
            && now < nbf.saturating_sub(leeway)
        {
            return Err(AuthFailure::invalid(
                "not_yet_valid",
                format!("token is not valid before {}", fmt_ts(nbf)),
            ));
        }
        if let Some(iat) = t.iat
            && now < iat.saturating_sub(leeway)
        {
            return Err(AuthFailure::invalid(
                "not_yet_valid",
                format!("token was issued in the future ({})", fmt_ts(iat)),
            ));
        }
        Ok(())
    }

    /// `auth.max_token_lifetime_secs`: `exp − iat`, or `exp − now` when the token has no `iat` (then with
    /// `leeway_secs`, as the gateway's clock stands in for the issuer's). Checked once per token: neither figure
    /// grows with time, and a reload builds a new `Authenticator` (and cache).
    fn check_lifetime(&self, t: &TimeClaims) -> Result<(), AuthFailure> {
        let Some(max) = self.settings.max_token_lifetime_secs else {
            return Ok(());
        };
        let cap = i64::try_from(max).unwrap_or(i64::MAX);
        let leeway = i64::try_from(self.settings.leeway_secs).unwrap_or(i64::MAX);
        // Messages stay ASCII: they are also the `WWW-Authenticate` error_description.
        let (lifetime, allowed, how) = match t.iat {
            Some(iat) => (t.exp.saturating_sub(iat), cap, "exp - iat"),
            None => (
                t.exp.saturating_sub(self.clock.now().as_second()),
                cap.saturating_add(leeway),
                "exp - now: the token has no `iat`",
            ),
        };
        if lifetime > allowed {
            return Err(AuthFailure::invalid(
                "lifetime_too_long",
                format!(
                    "token lifetime is {lifetime} s ({how}), over auth.max_token_lifetime_secs = {max} s: ask \
                     the identity provider for a shorter-lived token"
                ),
            ));
        }
        Ok(())
    }

    /// Time claims, issuer, audience, then the identity claims.
    fn identity(&self, claims: &Value) -> Result<(Identity, TimeClaims), AuthFailure> {
        let time_claim = |name: &str| -> Result<Option<i64>, AuthFailure> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_i64()
                    .or_else(|| v.as_f64().map(|f| f as i64))
                    .map(Some)
                    .ok_or_else(|| {
                        AuthFailure::invalid("malformed", format!("claim `{name}` is not a number"))
                    }),
            }
        };
        let exp = time_claim("exp")?.ok_or_else(|| {
            AuthFailure::invalid(
                "missing_exp",
                "token has no `exp` claim; tokens must expire",
            )
        })?;
        let times = TimeClaims {
            exp,
            nbf: time_claim("nbf")?,
            iat: time_claim("iat")?,
        };
        self.check_times(&times)?;
        self.check_lifetime(&times)?;
        if !self.settings.issuer.is_empty()
            && claims.get("iss").and_then(Value::as_str) != Some(self.settings.issuer.as_str())
        {
            return Err(AuthFailure::invalid(
                "issuer_mismatch",
                format!("token issuer is not {:?}", self.settings.issuer),
            ));
        }
        if !self.settings.audience.is_empty() {
            let aud = claims::strings(claims.get("aud"));
            if !aud.iter().any(|a| a == &self.settings.audience) {
                return Err(AuthFailure::invalid(
                    "audience_mismatch",
                    format!(
                        "token audience does not include {:?}",
                        self.settings.audience
                    ),
                ));
            }
        }
        let user = claims::strings(claims::lookup(claims, &self.settings.user_claim))
            .into_iter()
            .next()
            .ok_or_else(|| {
                AuthFailure::invalid(
                    "missing_user",
                    format!("token has no user claim `{}`", self.settings.user_claim),
                )
            })?;
        let team = claims::strings(claims::lookup(claims, &self.settings.team_claim))
            .into_iter()
            .next();
        if team.is_none() && self.settings.require_team {
            return Err(AuthFailure::invalid(
                "missing_team",
                format!(
                    "token has no team claim `{}` (auth.require_team = true)",
                    self.settings.team_claim
                ),
            ));
        }
        let roles = claims::strings(claims::lookup(claims, &self.settings.roles_claim));
        let is_admin = roles.iter().any(|r| r == &self.settings.admin_role);
        Ok((
            Identity {
                user,
                team,
                roles,
                is_admin,
            },
            times,
        ))
    }
}

fn fmt_ts(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use futures_util::FutureExt;
    use jsonwebtoken::{EncodingKey, Header};

    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

    fn authenticator(auth: AuthSettings) -> Authenticator {
        Authenticator::new(&auth, Arc::new(SystemClock), &Metrics::new()).unwrap()
    }

    fn signed(alg: Algorithm, private_pem: &str, claims: &Value) -> String {
        crypto::install();
        let pem = std::fs::read(format!("{KEYS}/{private_pem}")).unwrap();
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
    }

    fn tampered(token: &str) -> String {
        let (rest, sig) = token.rsplit_once('.').unwrap();
        let mut sig = sig.as_bytes().to_vec();
        sig[4] = if sig[4] == b'A' { b'B' } else { b'A' };
        format!("{rest}.{}", String::from_utf8(sig).unwrap())
    }

    fn verify_now(auth: &Authenticator, token: &str) -> Result<Identity, AuthFailure> {
        auth.verify(token)
            .now_or_never()
            .expect("no JWKS: nothing to wait for")
    }

    /// Issue 10 item 12: forged tokens must cost no more than valid ones — one signature check, by the library
    /// chosen for the key when it was loaded (ring for 2048+-bit RSA and uncompressed EC points; RustCrypto only
    /// for what ring refuses, such as a 1024-bit RSA key).
    #[test]
    fn a_token_is_checked_once_by_one_library_whether_forged_or_valid() {
        let claims = serde_json::json!({"sub": "ana", "team": "t", "exp": 4_000_000_000u64});
        for (alg, public, private, by_ring) in [
            (Algorithm::RS256, "rsa1.pub.pem", "rsa1.key.pem", true),
            (Algorithm::PS256, "rsa1.pub.pem", "rsa1.key.pem", true),
            (Algorithm::ES256, "ec256.pub.pem", "ec256.key.pem", true),
            (
                Algorithm::RS256,
                "rsa1024.pub.pem",
                "rsa1024.key.pem",
                false,
            ),
        ] {
            let auth = authenticator(AuthSettings {
                algorithms: vec![format!("{alg:?}")],
                public_key_files: vec![format!("{KEYS}/{public}").into()],
                ..AuthSettings::default()
            });
            let valid = signed(alg, private, &claims);
            let expected = if by_ring { (1, 0) } else { (0, 1) };
            crypto::checks::take();
            let refused = verify_now(&auth, &tampered(&valid)).unwrap_err();
            assert_eq!(refused.reason, "bad_signature", "{alg:?} {public}");
            assert_eq!(
                crypto::checks::take(),
                expected,
                "{alg:?} {public}: a forged token, (ring, RustCrypto) checks"
            );
            verify_now(&auth, &valid).unwrap();
            assert_eq!(
                crypto::checks::take(),
                expected,
                "{alg:?} {public}: a valid token, (ring, RustCrypto) checks"
            );
        }
    }
}
