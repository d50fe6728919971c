//! Verified tokens, remembered: clients reuse a token for its whole lifetime, so the signature (tens to hundreds
//! of microseconds for RS256/ES256) is checked once per token, not once per request. A hit still re-checks
//! `exp`/`nbf`/`iat` against the clock; an entry verified under an older JWKS key set is verified again (a key
//! the IdP removed stops verifying at its next fetch); failures are never cached. Keyed by the SHA-256 of the
//! whole token, bounded in size.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{Identity, TimeClaims};

/// Entries kept before the cache is emptied and starts over (one per active token).
const MAX_ENTRIES: usize = 50_000;

struct Entry {
    identity: Identity,
    times: TimeClaims,
    key_version: u64,
}

#[derive(Default)]
pub struct VerifiedTokens {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokens {
    /// The identity of a token verified before under the same key set.
    pub fn get(&self, token: &str, key_version: u64) -> Option<(Identity, TimeClaims)> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key(token))
            .filter(|e| e.key_version == key_version)
            .map(|e| (e.identity.clone(), e.times))
    }

    pub fn insert(&self, token: &str, key_version: u64, identity: &Identity, times: TimeClaims) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(
            key(token),
            Entry {
                identity: identity.clone(),
                times,
                key_version,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            user: "u".into(),
            team: Some("t".into()),
            roles: vec![],
            is_admin: false,
        }
    }

    #[test]
    fn a_hit_needs_the_same_token_and_key_version() {
        let c = VerifiedTokens::default();
        let times = TimeClaims {
            exp: 10,
            nbf: None,
            iat: None,
        };
        c.insert("a.b.c", 1, &id(), times);
        assert_eq!(c.get("a.b.c", 1), Some((id(), times)));
        assert_eq!(c.get("a.b.c", 2), None, "a new key set verifies again");
        assert_eq!(c.get("a.b.d", 1), None);
    }
}
