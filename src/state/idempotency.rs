//! What the store keeps for `Idempotency-Key` on creates: a claim on a caller's key while its request runs (a
//! lease), then the answer that request got, replayed to a retry that repeats it. Each backend decides a claim
//! in one atomic step (memory: under its lock; Redis: one script), so two requests with the same key never both
//! go on, on one replica or on several.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// A key as a caller sent it, scoped to the caller (the same key from two users is two keys).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdemKey {
    pub user: String,
    pub key: String,
}

impl IdemKey {
    /// The record's name in a backend: hex SHA-256 of user, NUL, key — any user id and key make a safe Redis key
    /// or SQLite value, and neither is stored as such.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.user.as_bytes());
        h.update([0]);
        h.update(self.key.as_bytes());
        hex(&h.finalize())
    }
}

/// One request's claim on a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdemClaim {
    pub key: IdemKey,
    /// Unique per request (a UUID): only the claim's holder may abandon it or store its answer, so a request whose
    /// lease ran out cannot undo the claim of the request that took the key after it.
    pub token: String,
    /// SHA-256 of the request body: the same key with another body is a different request.
    pub body_hash: [u8; 32],
    /// How long the claim holds without an answer: a replica stopped mid-request frees the key after it.
    pub lease_ms: u64,
}

impl IdemClaim {
    /// A claim with a new token for a request with `body`.
    pub fn new(key: IdemKey, body: &[u8], lease_ms: u64) -> Self {
        Self::hashed(key, Sha256::digest(body).into(), lease_ms)
    }

    /// A claim for a request whose body's SHA-256 is `body_hash` (hashed as it arrived).
    pub fn hashed(key: IdemKey, body_hash: [u8; 32], lease_ms: u64) -> Self {
        Self {
            key,
            token: uuid::Uuid::new_v4().simple().to_string(),
            body_hash,
            lease_ms,
        }
    }

    /// The body hash as stored (hex).
    pub fn hash_hex(&self) -> String {
        hex(&self.body_hash)
    }
}

/// The answer a request got, replayed byte for byte to a retry with the same key and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    /// The gateway's headers on the answer (content type, credits, rate limits, off-peak), in order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl StoredAnswer {
    /// The headers as stored (a JSON array of pairs).
    pub fn headers_json(&self) -> String {
        serde_json::to_string(&self.headers).unwrap_or_else(|_| "[]".into())
    }

    /// Headers read back from [`headers_json`](Self::headers_json) (none when unreadable).
    pub fn headers_from_json(text: &str) -> Vec<(String, String)> {
        serde_json::from_str(text).unwrap_or_default()
    }
}

/// What a claim answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's now: forward it, then store its answer or abandon the claim.
    Claimed,
    /// Another request with the same key and body holds it, for at most `lease_left_ms` more.
    InFlight { lease_left_ms: u64 },
    /// The key's record (in flight or stored) has another body.
    Reused,
    /// The answer stored for this key and body.
    Replay(StoredAnswer),
    /// The backend could not answer and `state.on_unavailable = "fail_open"`: go on without idempotency (nothing
    /// is held, nothing will be stored).
    Unchecked,
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_separates_user_from_key() {
        let a = IdemKey {
            user: "ab".into(),
            key: "c".into(),
        };
        let b = IdemKey {
            user: "a".into(),
            key: "bc".into(),
        };
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
    }

    #[test]
    fn headers_survive_their_json() {
        let a = StoredAnswer {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(b"{}"),
        };
        assert_eq!(
            StoredAnswer::headers_from_json(&a.headers_json()),
            a.headers
        );
    }
}
