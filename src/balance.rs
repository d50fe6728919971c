//! The balance watch: reads the Vidu account (`GET /ent/v2/credits`) every `balance.poll_secs`, exports the
//! balance, Vidu's concurrency figures, the burn rate (credits charged per hour over the last 24 h, from the
//! gateway's own ledger) and the runway, logs a WARN under `balance.warn_below`, and keeps the last reading for
//! admins (`GET /gateway/v1/usage`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::http::Method;
use serde::Serialize;
use serde_json::Value;

use crate::clock::SharedClock;
use crate::config::LiveConfig;
use crate::forward::upstream::{Endpoint, Upstream, UpstreamRequest};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::state::Store;

/// How often the watch looks again at a `balance.poll_secs` of 0 (a reload may turn it on).
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// The Vidu account as last read, with the burn rate and runway.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = ViduBalance)]
pub struct Balance {
    /// Credits left (the sum of `remains[].credit_remain`).
    pub credits_remaining: u64,
    pub concurrency_limit: Option<u64>,
    pub current_concurrency: Option<u64>,
    pub queue_count: Option<u64>,
    /// Credits charged per hour over the last 24 h (tasks created through the gateway, refunds netted).
    pub burn_per_hour: f64,
    /// Hours until the balance runs out at that rate; `None` while nothing is being spent.
    pub runway_hours: Option<f64>,
    /// When it was read (RFC 3339).
    pub read_at: String,
}

/// What Vidu's `GET /ent/v2/credits` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    pub credits: u64,
    pub concurrency_limit: Option<u64>,
    pub current_concurrency: Option<u64>,
    pub queue_count: Option<u64>,
}

/// The account from Vidu's `GET /ent/v2/credits` answer: the balance summed over `remains[]`, and the concurrency
/// figures from the first entry that has them (or the top level).
pub fn parse_account(body: &[u8]) -> Option<Account> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let remains = v.get("remains")?.as_array()?;
    let number = |x: &Value| x.as_u64().or_else(|| x.as_f64().map(|f| f.max(0.0) as u64));
    let credits = remains
        .iter()
        .filter_map(|r| r.get("credit_remain").and_then(number))
        .fold(0u64, u64::saturating_add);
    let figure = |name: &str| {
        remains
            .iter()
            .chain(std::iter::once(&v))
            .find_map(|r| r.get(name).and_then(number))
    };
    Some(Account {
        credits,
        concurrency_limit: figure("concurrency_limit"),
        current_concurrency: figure("current_concurrency"),
        queue_count: figure("queue_count"),
    })
}

/// Hours of runway at `burn_per_hour`; `None` when nothing is spent.
pub fn runway(credits: u64, burn_per_hour: f64) -> Option<f64> {
    (burn_per_hour > 0.0).then(|| credits as f64 / burn_per_hour)
}

pub struct BalanceWatch {
    latest: RwLock<Option<Balance>>,
}

impl Default for BalanceWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl BalanceWatch {
    pub fn new() -> Self {
        Self {
            latest: RwLock::new(None),
        }
    }

    /// The last reading (`None` before the first, or with the watch off).
    pub fn latest(&self) -> Option<Balance> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One reading: ask Vidu, compute the burn rate from the store, set the metrics, warn when low.
    pub async fn poll(
        &self,
        upstream: &Upstream,
        store: &dyn Store,
        metrics: &Metrics,
        config: &LiveConfig,
        clock: &SharedClock,
    ) -> Result<Balance, String> {
        let result = self.read(upstream, store, metrics, clock).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics
            .balance
            .polls
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        let balance = result?;
        let m = &metrics.balance;
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.credits_remaining.set(gauge(balance.credits_remaining));
        for (g, v) in [
            (&m.concurrency_limit, balance.concurrency_limit),
            (&m.current_concurrency, balance.current_concurrency),
            (&m.queue_count, balance.queue_count),
        ] {
            if let Some(v) = v {
                g.set(gauge(v));
            }
        }
        m.burn_per_hour.set(balance.burn_per_hour);
        m.runway_hours
            .set(balance.runway_hours.unwrap_or(f64::INFINITY));
        let warn_below = config.current().settings.balance.warn_below;
        if balance.credits_remaining < warn_below {
            tracing::warn!(
                credits_remaining = balance.credits_remaining,
                warn_below,
                burn_per_hour = balance.burn_per_hour,
                runway_hours = balance.runway_hours,
                "the Vidu balance is below balance.warn_below: top the account up before creates fail with \
                 Vidu's CreditInsufficient"
            );
        }
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(balance.clone());
        Ok(balance)
    }

    async fn read(
        &self,
        upstream: &Upstream,
        store: &dyn Store,
        metrics: &Metrics,
        clock: &SharedClock,
    ) -> Result<Balance, String> {
        let call = UpstreamRequest {
            endpoint: Endpoint::Credits,
            method: Method::GET,
            path: "/ent/v2/credits".into(),
            body: bytes::Bytes::new(),
            request_id: format!("balance-{}", uuid::Uuid::new_v4().simple()),
        };
        let answer = upstream
            .send(call, metrics)
            .await
            .map_err(|e| e.to_string())?;
        if !answer.status.is_success() {
            return Err(format!("Vidu answered {}", answer.status));
        }
        let account = parse_account(&answer.body)
            .ok_or_else(|| "the answer has no remains[] with credit_remain".to_owned())?;
        let now = clock.now();
        let since = now
            .checked_sub(jiff::SignedDuration::from_hours(24))
            .unwrap_or(now);
        let charged = store
            .charged_since(since)
            .await
            .map_err(|e| format!("the burn rate could not be read: {e}"))?;
        let burn_per_hour = charged as f64 / 24.0;
        Ok(Balance {
            credits_remaining: account.credits,
            concurrency_limit: account.concurrency_limit,
            current_concurrency: account.current_concurrency,
            queue_count: account.queue_count,
            burn_per_hour,
            runway_hours: runway(account.credits, burn_per_hour),
            read_at: crate::clock::stamp(now),
        })
    }

    /// Reads every `balance.poll_secs` (read again from the config in force each time; `every` instead, when
    /// given) until the process stops. The first reading is at once.
    pub async fn run(
        self: Arc<Self>,
        upstream: Upstream,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        config: Arc<LiveConfig>,
        clock: SharedClock,
        every: Option<Duration>,
    ) {
        loop {
            let poll_secs = config.current().settings.balance.poll_secs;
            if poll_secs == 0 {
                tokio::time::sleep(IDLE_RECHECK).await;
                continue;
            }
            if let Err(e) = self
                .poll(&upstream, store.as_ref(), &metrics, &config, &clock)
                .await
            {
                tracing::warn!(error = %e, "the Vidu balance could not be read (GET /ent/v2/credits)");
            }
            tokio::time::sleep(every.unwrap_or(Duration::from_secs(poll_secs))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_is_read_from_remains() {
        let body = br#"{"remains":[{"type":"a","credit_remain":1200,"concurrency_limit":5,"current_concurrency":2,"queue_count":1},{"type":"b","credit_remain":300}]}"#;
        let account = |credits, limit, current, queued| Account {
            credits,
            concurrency_limit: limit,
            current_concurrency: current,
            queue_count: queued,
        };
        assert_eq!(
            parse_account(body),
            Some(account(1500, Some(5), Some(2), Some(1)))
        );
        let top = br#"{"remains":[{"credit_remain":10.0}],"concurrency_limit":8}"#;
        assert_eq!(parse_account(top), Some(account(10, Some(8), None, None)));
        assert_eq!(parse_account(br#"{"credits":5}"#), None);
        assert_eq!(parse_account(b"nope"), None);
    }

    #[test]
    fn runway_is_the_balance_over_the_burn_rate() {
        assert_eq!(runway(480, 20.0), Some(24.0));
        assert_eq!(runway(480, 0.0), None);
    }
}
