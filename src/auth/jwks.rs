//! The JWKS of `auth.jwks_url`: fetched at start (retrying with backoff while the IdP is down), refreshed every
//! `auth.jwks_refresh_secs`, refetched when a token names an unknown `kid` (at most once per second, so forged
//! kids cannot make the gateway hammer the IdP), the last good key set kept when a fetch fails. Every fetch
//! outcome is counted in `vidu_gateway_jwks_fetches_total{outcome}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::{Either, select};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};

use super::key::{VerifyKey, parse_jwks};
use crate::clock::SharedClock;
use crate::metrics::OutcomeLabels;

/// Least time between two fetches.
pub const REFETCH_COOLDOWN: Duration = Duration::from_secs(1);
/// A fetch that takes longer is abandoned.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest wait between retries while no key set has ever loaded.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Status {
    loaded: bool,
    fetching: bool,
    last_error: Option<String>,
    last_trigger: Option<jiff::Timestamp>,
}

/// Time from `from` to `to` on the clock; none when the clock went back.
fn elapsed(from: jiff::Timestamp, to: jiff::Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

pub struct Jwks {
    url: String,
    ttl: Duration,
    /// What the refetch cooldown is measured on (the app's clock: tests move it instead of waiting).
    clock: SharedClock,
    keys: RwLock<Arc<Vec<VerifyKey>>>,
    status: Mutex<Status>,
    wake: Notify,
    generation: watch::Sender<u64>,
    fetches: Family<OutcomeLabels, Counter>,
    key_count: Gauge,
    stopped: AtomicBool,
    /// Bumped on every successful fetch (cached verifications are redone under a new key set).
    version: std::sync::atomic::AtomicU64,
}

impl Jwks {
    pub fn new(
        url: String,
        ttl: Duration,
        clock: SharedClock,
        fetches: Family<OutcomeLabels, Counter>,
        key_count: Gauge,
    ) -> Arc<Self> {
        Arc::new(Self {
            url,
            ttl,
            clock,
            keys: RwLock::new(Arc::new(Vec::new())),
            status: Mutex::default(),
            wake: Notify::new(),
            generation: watch::Sender::new(0),
            fetches,
            key_count,
            stopped: AtomicBool::new(false),
            version: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The key set's version: changes with every successful fetch.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key set in force (the last good one).
    pub fn current(&self) -> Arc<Vec<VerifyKey>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `None` when a key set has loaded; else why not (for `/readyz` and 401 messages).
    pub fn not_ready(&self) -> Option<String> {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        (!s.loaded).then(|| match &s.last_error {
            Some(e) => format!(
                "identity provider keys not loaded yet from {} ({e}); retrying",
                self.url
            ),
            None => format!("identity provider keys not loaded yet from {}", self.url),
        })
    }

    /// A token named a `kid` we don't hold: ask for a refetch (unless one ran less than a second ago) and wait
    /// for the fetch under way, if any. Returns whether a fetch completed while waiting.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let mut seen = self.generation.subscribe();
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            let now = self.clock.now();
            let cooled = s
                .last_trigger
                .is_none_or(|t| elapsed(t, now) >= REFETCH_COOLDOWN);
            if cooled {
                s.last_trigger = Some(now);
                self.wake.notify_one();
            } else if !s.fetching {
                return false;
            }
        }
        matches!(
            actix_web::rt::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), seen.changed())
                .await,
            Ok(Ok(()))
        )
    }

    /// Ends the fetch loop (a reload replaced this JWKS source).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether this source fetches `url` every `ttl`.
    pub fn same_source(&self, url: &str, ttl: Duration) -> bool {
        self.url == url && self.ttl == ttl
    }

    /// The fetch loop: runs for the life of the server (spawned on its runtime), or until `stop`.
    pub async fn run(self: Arc<Self>) {
        let client = awc::Client::builder().timeout(FETCH_TIMEOUT).finish();
        let mut backoff = REFETCH_COOLDOWN;
        let mut last_start: Option<jiff::Timestamp> = None;
        let mut woken = false;
        while !self.stopped.load(Ordering::Relaxed) {
            // A timed wait is never shorter than the cooldown (the backoff starts at it, `auth.jwks_refresh_secs`
            // is at least 1 s); a wake-up for an unknown kid may come right after a fetch.
            if woken && let Some(t) = last_start {
                let since = elapsed(t, self.clock.now());
                if since < REFETCH_COOLDOWN {
                    actix_web::rt::time::sleep(REFETCH_COOLDOWN - since).await;
                }
            }
            last_start = Some(self.clock.now());
            self.set_fetching(true);
            let ok = self.fetch_once(&client).await;
            self.set_fetching(false);
            self.generation.send_modify(|g| *g += 1);
            let wait = if ok {
                backoff = REFETCH_COOLDOWN;
                self.ttl
            } else if self.is_loaded() {
                // Keep the last good set; try again sooner than the TTL.
                self.ttl.min(MAX_BACKOFF)
            } else {
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            };
            let sleep = std::pin::pin!(actix_web::rt::time::sleep(wait));
            let notified = std::pin::pin!(self.wake.notified());
            woken = matches!(select(sleep, notified).await, Either::Right(_));
            if woken {
                tracing::debug!(url = %self.url, "JWKS refetch requested for an unknown kid");
            }
        }
    }

    fn set_fetching(&self, on: bool) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fetching = on;
    }

    fn is_loaded(&self) -> bool {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).loaded
    }

    async fn fetch_once(&self, client: &awc::Client) -> bool {
        let result = self.fetch(client).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err((o, _)) => o,
        };
        self.fetches.get_or_create(&OutcomeLabels { outcome }).inc();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((keys, skipped)) => {
                for s in skipped {
                    tracing::warn!(url = %self.url, "JWKS {s}");
                }
                tracing::info!(url = %self.url, keys = keys.len(), "JWKS loaded");
                self.key_count
                    .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                status.loaded = true;
                self.version.fetch_add(1, Ordering::Relaxed);
                status.last_error = None;
                true
            }
            Err((_, message)) => {
                tracing::warn!(url = %self.url, error = %message, kept_last_good = status.loaded, "JWKS fetch failed");
                status.last_error = Some(message);
                false
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn fetch(
        &self,
        client: &awc::Client,
    ) -> Result<(Vec<VerifyKey>, Vec<String>), (&'static str, String)> {
        use awc::error::SendRequestError;
        let mut res = client
            .get(&self.url)
            .insert_header(("accept", "application/json"))
            .send()
            .await
            .map_err(|e| match e {
                SendRequestError::Timeout => ("timeout", "timed out".to_owned()),
                other => ("connect_error", other.to_string()),
            })?;
        if !res.status().is_success() {
            return Err(("http_status", format!("HTTP {}", res.status())));
        }
        let body = res
            .body()
            .limit(MAX_JWKS_BYTES)
            .await
            .map_err(|e| match e {
                awc::error::PayloadError::Overflow => {
                    ("too_large", format!("larger than {MAX_JWKS_BYTES} bytes"))
                }
                other => ("connect_error", other.to_string()),
            })?;
        let (keys, skipped) = parse_jwks(&body).map_err(|e| ("invalid", format!("{e:#}")))?;
        if keys.is_empty() {
            return Err(("invalid", "the JWKS holds no usable signing key".into()));
        }
        Ok((keys, skipped))
    }
}
