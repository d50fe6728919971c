//! `Idempotency-Key` on `POST /ent/v2/img2video` (IETF draft-ietf-httpapi-idempotency-key-header): a create
//! retried with the same key and body gets the first one's answer back instead of creating a second task.
//!
//! The key is claimed in the store after the body is read and before admission (one atomic decision; on Redis,
//! across replicas). A request refused before it is forwarded gives the claim back, so the caller can fix it and
//! retry with the same key. Once the request has left for Vidu, its answer — whatever it is, a timeout's 504
//! included — is stored by the forwarding task, which outlives a caller who hangs up, before the caller gets it.
//! A create without the header costs nothing here.

use std::sync::Arc;

use crate::config::Settings;
use crate::forward::upstream::{UpstreamError, UpstreamResponse};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::state::{Claim, IdemClaim, IdemKey, Store, StoreError, StoredAnswer};

/// The request header (lower case, as HTTP/2 and actix name it).
pub const HEADER: &str = "idempotency-key";
/// The response header on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// The `Retry-After` of a 409: most creates are answered within a second or two.
pub const IN_FLIGHT_RETRY_AFTER_SECS: u64 = 1;

/// The caller's key from the header's values: `None` without the header; else 1–255 visible ASCII characters
/// (0x21–0x7E) in one header, or what is wrong with it (the key itself is not echoed).
pub fn key_of<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<Option<String>, String> {
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let problem = if values.next().is_some() {
        "was sent more than once".to_owned()
    } else if value.is_empty() {
        "is empty".to_owned()
    } else if value.len() > MAX_KEY_LEN {
        format!("is {} characters long", value.len())
    } else if !value.iter().all(|b| (0x21..=0x7e).contains(b)) {
        "holds a character that is not visible ASCII (a space, a control character or a non-ASCII byte)"
            .to_owned()
    } else {
        return Ok(Some(String::from_utf8_lossy(value).into_owned()));
    };
    Err(format!(
        "the Idempotency-Key header {problem}: send one Idempotency-Key of 1 to {MAX_KEY_LEN} visible ASCII \
         characters (no spaces), e.g. a UUID, or none"
    ))
}

/// Why a create with a key does not go on.
#[derive(Debug)]
pub enum Stopped {
    /// The answer stored for this key and body: replay it.
    Replay(StoredAnswer),
    /// Another request with this key and body is still running (it gives the key up within `lease_left_ms` at
    /// the latest).
    InFlight { lease_left_ms: u64 },
    /// This key was used with another body.
    Reused,
    /// The store could not answer (`state.on_unavailable = "fail_closed"`).
    Unavailable(StoreError),
}

/// Claims `key` for `user`'s request whose body hashes to `body_hash()` (asked for only with a key): `Ok(None)` without a key (or when the store cannot answer under
/// `fail_open`: the request goes on without idempotency), `Ok(Some(held))` when the key is this request's now.
pub async fn begin(
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
    settings: &Settings,
    user: &str,
    key: Option<String>,
    body_hash: impl FnOnce() -> [u8; 32],
) -> Result<Option<Held>, Stopped> {
    let Some(key) = key else {
        return Ok(None);
    };
    // A claim outlives its request's longest wait for Vidu, like an in-flight slot.
    let lease_ms = settings.upstream.request_timeout_ms.saturating_add(10_000);
    let key = IdemKey {
        user: user.to_owned(),
        key,
    };
    let claim = IdemClaim::hashed(key, body_hash(), lease_ms);
    let (outcome, begun) = match store.claim(&claim).await {
        Ok(Claim::Claimed) => {
            let holding = Holding {
                store: store.clone(),
                metrics: metrics.clone(),
                claim,
                ttl_secs: settings.idempotency.ttl_secs,
            };
            let held = Held {
                holding: Some(holding),
            };
            ("claimed", Ok(Some(held)))
        }
        Ok(Claim::Unchecked) => ("unavailable", Ok(None)),
        Ok(Claim::InFlight { lease_left_ms }) => {
            ("in_flight", Err(Stopped::InFlight { lease_left_ms }))
        }
        Ok(Claim::Reused) => ("reused", Err(Stopped::Reused)),
        Ok(Claim::Replay(answer)) => ("replayed", Err(Stopped::Replay(answer))),
        Err(e) => {
            // The claim may have been made even though its answer was lost (a slow backend): give it back, best
            // effort, so a retry is not kept waiting for the lease.
            let (store, claim) = (store.clone(), claim);
            actix_web::rt::spawn(async move {
                let _ = store.abandon(&claim).await;
            });
            ("unavailable", Err(Stopped::Unavailable(e)))
        }
    };
    count(metrics, outcome);
    begun
}

fn count(metrics: &Metrics, outcome: &'static str) {
    metrics
        .idempotency
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

/// A claim this request holds, until it is given back ([`Held::abandon`]) or handed to the forwarding task
/// ([`Held::keeper`]). Dropped without either (the caller hung up before the request was forwarded), it is given
/// back on a task of its own.
pub struct Held {
    holding: Option<Holding>,
}

struct Holding {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    claim: IdemClaim,
    ttl_secs: u64,
}

impl Holding {
    async fn abandon(self) {
        match self.store.abandon(&self.claim).await {
            Ok(()) => count(&self.metrics, "abandoned"),
            // The lease frees the key in time; meanwhile a retry is answered 409.
            Err(e) => tracing::warn!(
                error = %e,
                "the state backend could not give back an Idempotency-Key claim; it lapses with its lease"
            ),
        }
    }

    async fn keep(self, answer: &StoredAnswer) {
        // Storing is safe to repeat (guarded by the claim's token): a backend that did not answer is asked again
        // before the answer is given up, since without it a retry after the lease is forwarded a second time.
        let mut result = self.store.keep(&self.claim, answer, self.ttl_secs).await;
        for wait_ms in [50, 200, 1000] {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
            result = self.store.keep(&self.claim, answer, self.ttl_secs).await;
        }
        match result {
            Ok(true) => count(&self.metrics, "stored"),
            Ok(false) => {
                count(&self.metrics, "not_stored");
                tracing::warn!(
                    status = answer.status,
                    "a create's answer was not stored for its Idempotency-Key: its claim lapsed and another \
                     request holds the key"
                );
            }
            Err(e) => {
                count(&self.metrics, "not_stored");
                tracing::error!(
                    error = %e,
                    status = answer.status,
                    "the state backend could not store a create's answer for its Idempotency-Key: a retry after \
                     the claim lapses is forwarded again"
                );
            }
        }
    }
}

impl Held {
    /// The request was refused before it was forwarded: the key is free again (awaited, so that a retry right
    /// after the refusal finds it free).
    pub async fn abandon(mut self) {
        if let Some(holding) = self.holding.take() {
            holding.abandon().await;
        }
    }

    /// The claim, handed to the forwarding task with the way to render the answer as the caller gets it.
    pub fn keeper(mut self, render: Render) -> Option<Keeper> {
        self.holding
            .take()
            .map(|holding| Keeper { holding, render })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(holding) = self.holding.take()
            && actix_web::rt::System::try_current().is_some()
        {
            actix_web::rt::spawn(holding.abandon());
        }
    }
}

/// Renders an upstream outcome as the caller gets it: status, the gateway's headers, the body byte for byte.
pub type Render = Box<dyn FnOnce(&Result<UpstreamResponse, UpstreamError>) -> StoredAnswer>;

/// The claim of a forwarded request. Once the request may have reached Vidu, the claim is never given back: a
/// keeper dropped without an answer (a panic) leaves it to lapse with its lease.
pub struct Keeper {
    holding: Holding,
    render: Render,
}

impl Keeper {
    /// In the forwarding task, before the caller gets the answer: stores it (a timeout's 504, a connection broken
    /// after sending, Vidu's errors included: the task may exist), or gives the key back when not one byte reached
    /// Vidu (nothing was created: the caller may retry with the same key).
    pub async fn answered(self, result: &Result<UpstreamResponse, UpstreamError>) {
        match result {
            Err(UpstreamError::Connect(_)) => self.holding.abandon().await,
            _ => {
                let answer = (self.render)(result);
                self.holding.keep(&answer).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &[u8]) -> Result<Option<String>, String> {
        key_of(std::iter::once(v))
    }

    #[test]
    fn a_key_is_one_header_of_1_to_255_visible_ascii_characters() {
        assert_eq!(key_of(std::iter::empty()), Ok(None));
        assert_eq!(key(b"a").unwrap().as_deref(), Some("a"));
        let longest = "k".repeat(255);
        assert_eq!(key(longest.as_bytes()).unwrap(), Some(longest));
        assert_eq!(
            key(b"\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")
                .unwrap()
                .as_deref(),
            Some("\"8e03978e-40d5-43e8-bc93-6894a57f9324\""),
            "the draft's quoted form is a key too, compared as sent"
        );
        for (bad, says) in [
            (b"".to_vec(), "is empty"),
            ("k".repeat(256).into_bytes(), "is 256 characters long"),
            (b"a b".to_vec(), "not visible ASCII"),
            (b"tab\t".to_vec(), "not visible ASCII"),
            ("clé".as_bytes().to_vec(), "not visible ASCII"),
        ] {
            let e = key(&bad).unwrap_err();
            assert!(
                e.contains("Idempotency-Key") && e.contains(says) && e.contains("1 to 255"),
                "{e}"
            );
        }
        let twice = key_of([b"a".as_slice(), b"b".as_slice()].into_iter()).unwrap_err();
        assert!(twice.contains("more than once"), "{twice}");
    }

    #[test]
    fn the_ttl_is_checked_at_load_naming_the_key() {
        let load = |ttl: &str| {
            crate::config::load_from_str(
                &format!(
                    "[auth]\nalgorithms = [\"HS256\"]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n\
                     [idempotency]\nttl_secs = {ttl}\n"
                ),
                crate::config::Origin::Builtin,
                Default::default(),
            )
        };
        for bad in ["0", "2592001"] {
            let e = load(bad).map(|_| ()).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "idempotency.ttl_secs = {bad} must be between 1 and 2592000"
                )),
                "{e}"
            );
        }
        assert_eq!(load("3600").unwrap().settings.idempotency.ttl_secs, 3600);
        assert_eq!(Settings::default().idempotency.ttl_secs, 86_400);
    }
}
