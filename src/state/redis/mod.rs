//! The `redis` backend (several replicas): every piece of shared state in Redis, so any replica answers the same
//! and limits hold exactly across all of them. Each decision is one server-side script, run with EVALSHA (re-loaded
//! on NOSCRIPT): `admit.lua` checks the plan, slots, budgets and rates and then takes all or nothing; `finish.lua`
//! frees a grant's slots and settles its reservation; `usage.lua` reads a report. One round trip per call, each
//! bounded by `state.redis_timeout_ms`; nothing is read by the replica and then written back.
//!
//! Keys (all under one hash tag, `{<state.key_prefix>}`, so the scripts are valid on Redis Cluster too; subjects
//! and task ids are percent-encoded where they meet a `:`):
//! - `b:<scope>:<period>:<period key>:<subject>`: credits used in a budget (settled + reserved + unknown);
//! - `s:<scope>:<subject>`: in-flight leases, a sorted set of grant ids scored by expiry (ms);
//! - `r:<scope>:<per minute>:<burst>:<subject>`: a GCRA cell (`tat`, `since`), expiring once full again;
//! - `g:<grant id>`: an open reservation (and, once `unknown`, the record of one);
//! - `t:<task id>`: who created a task; `u:<day>:<team>:<user>`: usage counters; `days`, `m:<day>`: their index.

use std::sync::Arc;
use std::time::Duration;

use ::redis::Script;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use futures_util::future::FutureExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;
use crate::clock::SharedClock;
use crate::config::StateSettings;

pub mod server;

const ADMIT: &str = include_str!("admit.lua");
const FINISH: &str = include_str!("finish.lua");
const RUNNING: &str = include_str!("running.lua");
const BURN: &str = include_str!("burn.lua");
const AUDIT: &str = include_str!("audit.lua");
const USAGE: &str = include_str!("usage.lua");
const HEARTBEAT: &str = include_str!("heartbeat.lua");
const RECORD: &str = include_str!("record.lua");
const OBSERVE: &str = include_str!("observe.lua");
const CLAIM_DUE: &str = include_str!("claim_due.lua");
const RELAYS: &str = include_str!("relays.lua");
const RESERVATIONS: &str = include_str!("reservations.lua");
const TASKS: &str = include_str!("tasks.lua");
/// Every script, as the heartbeat loads them.
const SCRIPTS: [&str; 11] = [
    idempotency::SOURCE,
    ADMIT,
    FINISH,
    USAGE,
    HEARTBEAT,
    RECORD,
    OBSERVE,
    CLAIM_DUE,
    RELAYS,
    RESERVATIONS,
    TASKS,
];

mod admission;
mod audit;
mod idempotency;
mod lifecycle;

/// The SHA1 of the scripts the background loops run (the reconciler's claims, the relay outbox, the reservation
/// list): Redis traffic that belongs to no request (tests that count a request's round trips leave it out).
pub fn background_script_hashes() -> Vec<String> {
    [CLAIM_DUE, RELAYS, RESERVATIONS, RUNNING, BURN, AUDIT]
        .into_iter()
        .map(|src| Script::new(src).get_hash().to_owned())
        .collect()
}

/// A replica not heard of for this long is no longer counted among the live ones.
const REPLICA_STALE_MS: u64 = 30_000;

/// How long a day's budget counter lives from its first reservation (a month's: from its first reservation in the
/// month), so well past its period: long enough for every settlement of the period to arrive, short enough that
/// Redis does not keep every period forever.
const DAY_BUDGET_TTL_SECS: u64 = 3 * 86_400;
const MONTH_BUDGET_TTL_SECS: u64 = 63 * 86_400;

/// A budget counter's expiry, set when its period's first reservation creates it.
fn budget_ttl_secs(k: &BudgetKey) -> u64 {
    match k.period {
        Period::Month => MONTH_BUDGET_TTL_SECS,
        _ => DAY_BUDGET_TTL_SECS,
    }
}

pub struct RedisStore {
    /// The request path's connection. Lazy: its driver task runs on the runtime that first uses it — an actix
    /// worker, since the background loops use `side` — so a round trip wakes no other thread (one worker).
    conn: ConnectionManager,
    /// The heartbeat's connection (it runs on the main runtime from the start).
    side: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    /// An in-flight slot's lease: `upstream.request_timeout_ms` + 10 s.
    lease_ms: u64,
    retention_secs: u64,
    /// Tests on a manual clock pass its time to the scripts; production uses Redis's `TIME`.
    clock: Option<SharedClock>,
    admit: Script,
    finish: Script,
    running: Script,
    burn: Script,
    audit: Script,
    usage: Script,
    heartbeat: Script,
    record: Script,
    observe: Script,
    claim_due: Script,
    relays: Script,
    reservations: Script,
    tasks: Script,
    /// The deployment's epoch as this replica last saw it (`None` before the first heartbeat).
    epoch: std::sync::Mutex<Option<String>>,
}

/// Key names of one deployment.
#[derive(Clone, Debug)]
struct Keys {
    /// `{prefix}`
    tag: String,
}

/// `:` separates key parts: a subject that holds one (or `%`) is percent-encoded.
fn enc(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([':', '%', '\n']) {
        s.replace('%', "%25")
            .replace(':', "%3A")
            .replace('\n', "%0A")
            .into()
    } else {
        s.into()
    }
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            tag: format!("{{{prefix}}}"),
        }
    }

    fn budget(&self, k: &BudgetKey) -> String {
        let period = match k.period {
            Period::Day => "day",
            Period::Month => "month",
            Period::ImmediateDay => "immediate",
        };
        format!(
            "{}:b:{}:{period}:{}:{}",
            self.tag,
            k.scope.as_str(),
            k.period_key,
            enc(&k.subject)
        )
    }

    fn slot(&self, s: &SlotSpec) -> String {
        format!("{}:s:{}:{}", self.tag, s.scope.as_str(), enc(&s.subject))
    }

    /// Running-task slots of a scope: a sorted set of holders (a grant, then its task) by when they are freed
    /// without news (ms).
    fn running(&self, scope: Scope, subject: &str) -> String {
        format!("{}:rt:{}:{}", self.tag, scope.as_str(), enc(subject))
    }

    /// The audit trail (a sorted set read by lex: `<at>|<id>|<entry>`).
    fn audit(&self) -> String {
        format!("{}:audit", self.tag)
    }

    /// When each fair-share group last asked for a running-task slot (a hash: `t:<team>` or `pool` → ms).
    fn share_asked(&self) -> String {
        format!("{}:rt:asked", self.tag)
    }

    fn rate(&self, r: &RateSpec) -> String {
        format!(
            "{}:r:{}:{}:{}:{}",
            self.tag,
            r.scope.as_str(),
            r.per_minute,
            r.burst,
            enc(&r.subject)
        )
    }

    fn grant(&self, id: GrantId) -> String {
        format!("{}:g:{id}", self.tag)
    }

    fn task(&self, id: &str) -> String {
        format!("{}:t:{}", self.tag, enc(id))
    }

    fn days(&self) -> String {
        format!("{}:days", self.tag)
    }

    fn members_prefix(&self) -> String {
        format!("{}:m:", self.tag)
    }

    /// Marks a spooled admission as recorded.
    fn spooled(&self, id: GrantId) -> String {
        format!("{}:spooled:{id}", self.tag)
    }

    fn epoch(&self) -> String {
        format!("{}:epoch", self.tag)
    }

    fn config_versions(&self) -> String {
        format!("{}:config_versions", self.tag)
    }

    fn usage_prefix(&self) -> String {
        format!("{}:u:", self.tag)
    }

    /// Open and `unknown` grants, by the time they were made.
    fn grants(&self) -> String {
        format!("{}:grants", self.tag)
    }

    /// A task list, newest first: everyone's, a team's or a user's.
    fn task_list(&self, team: Option<&str>, user: Option<&str>) -> String {
        match (team, user) {
            (_, Some(u)) => format!("{}:tl:u:{}", self.tag, enc(u)),
            (Some(t), None) => format!("{}:tl:t:{}", self.tag, enc(t)),
            (None, None) => format!("{}:tl:a", self.tag),
        }
    }

    fn task_prefix(&self) -> String {
        format!("{}:t:", self.tag)
    }

    /// Unfinished tasks, scored by when they were last heard of (ms).
    fn live(&self) -> String {
        format!("{}:live", self.tag)
    }

    /// Tasks a callback made due, scored by when (ms).
    fn due(&self) -> String {
        format!("{}:due", self.tag)
    }

    fn reconcile_lease(&self) -> String {
        format!("{}:reconciler", self.tag)
    }

    fn reconcile_queries(&self) -> String {
        format!("{}:reconciler:queries", self.tag)
    }

    fn nonce(&self, nonce: &str) -> String {
        format!("{}:nonce:{}", self.tag, enc(nonce))
    }

    fn outbox_prefix(&self) -> String {
        format!("{}:o:", self.tag)
    }

    /// A task's relay jobs, in order (`<prefix><task id>`).
    fn outbox_order_prefix(&self) -> String {
        format!("{}:ot:", self.tag)
    }

    fn outbox_due(&self) -> String {
        format!("{}:outbox", self.tag)
    }

    fn member(team: &str, user: &str) -> String {
        format!("{}:{}", enc(team), enc(user))
    }
}

/// The client for `state.redis_url`, with the password from `state.redis_password_file` and, for `rediss://`, the
/// CAs of `state.redis_ca_file` (else the public web roots). Errors never quote the URL: it may hold a password.
fn client(state: &StateSettings) -> anyhow::Result<::redis::Client> {
    use ::redis::IntoConnectionInfo;
    let not_a_url = || {
        anyhow::anyhow!(
            "state.redis_url is not a Redis URL: use redis://[:password@]host:port/db, or rediss://… for TLS (the \
             value is not shown: it may hold a password)"
        )
    };
    let mut info = state
        .redis_url
        .expose()
        .into_connection_info()
        .map_err(|_| not_a_url())?;
    if state.redis_password.is_set() {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(state.redis_password.expose());
        info = info.set_redis_settings(settings);
    }
    match &state.redis_ca_file {
        None => ::redis::Client::open(info).map_err(|_| not_a_url()),
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!("state.redis_ca_file: cannot read {}: {e}", ca.display())
            })?;
            ::redis::Client::build_with_tls(
                info,
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| {
                anyhow::anyhow!("state.redis_ca_file: {} is not usable: {e}", ca.display())
            })
        }
    }
}

impl RedisStore {
    /// Connects lazily: the first call connects, and the connection manager reconnects by itself after a failure.
    /// Call from within the server's runtime.
    pub fn open(state: &StateSettings, request_timeout_ms: u64) -> anyhow::Result<Self> {
        let client = client(state)?;
        let timeout = Duration::from_millis(state.redis_timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| anyhow::anyhow!("state.redis_url: {e}"))?;
        let side = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("state.redis_url: {e}"))?;
        Ok(Self {
            conn,
            side,
            keys: Keys::new(&state.key_prefix),
            timeout,
            lease_ms: request_timeout_ms.saturating_add(10_000),
            retention_secs: u64::from(state.task_retention_days) * 86_400,
            clock: None,
            admit: Script::new(ADMIT),
            finish: Script::new(FINISH),
            running: Script::new(RUNNING),
            burn: Script::new(BURN),
            audit: Script::new(AUDIT),
            usage: Script::new(USAGE),
            heartbeat: Script::new(HEARTBEAT),
            record: Script::new(RECORD),
            observe: Script::new(OBSERVE),
            claim_due: Script::new(CLAIM_DUE),
            relays: Script::new(RELAYS),
            reservations: Script::new(RESERVATIONS),
            tasks: Script::new(TASKS),
            epoch: std::sync::Mutex::new(None),
        })
    }

    /// Scripts read `clock` instead of Redis's `TIME` (tests on a manual clock; never in production, where
    /// replicas' clocks differ).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// One round trip on the request path's connection, bounded by `state.redis_timeout_ms`.
    async fn call<T>(
        &self,
        what: &'static str,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> ::redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.call_on(&self.conn, what, f).await
    }

    /// One round trip on `conn`, bounded by `state.redis_timeout_ms`.
    async fn call_on<T>(
        &self,
        conn: &ConnectionManager,
        what: &'static str,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> ::redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        // A grant dropped while the runtime shuts down has nothing to run its timer on.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::Unreachable(format!(
                "redis ({what}): the runtime is shutting down"
            )));
        }
        let mut conn = conn.clone();
        match tokio::time::timeout(self.timeout, f(&mut conn)).await {
            Err(_) => Err(StoreError::Timeout {
                what,
                ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
            Ok(Err(e)) => Err(StoreError::Unreachable(format!("redis ({what}): {e}"))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    fn counting(&self, record: &RequestRecord, off_peak: bool) -> Value {
        BudgetKey::counting(record, off_peak)
            .iter()
            .map(|k| json!({"key": self.keys.budget(k), "ttl_s": budget_ttl_secs(k)}))
            .collect()
    }

    /// Where a request's day of usage is counted.
    fn usage_json(&self, r: &RequestRecord) -> Value {
        let member = Keys::member(&r.team, &r.user);
        json!({
            "hash": format!("{}{}:{member}", self.keys.usage_prefix(), r.day),
            "days": self.keys.days(),
            "members": format!("{}{}", self.keys.members_prefix(), r.day),
            "day": r.day,
            "member": member,
        })
    }

    fn unaccounted_json(&self, e: &Unaccounted) -> String {
        let (kind, amount, task) = match &e.settlement {
            Settlement::Charged { credits, task } => ("charged", *credits, task.as_ref()),
            Settlement::Released => ("released", 0, None),
            Settlement::Unknown => ("unknown", e.run.estimate, None),
        };
        let task_id = task.map(|t| t.task_id.as_str());
        let r = &e.record;
        json!({
            "once_key": self.keys.spooled(e.id),
            "grant_key": self.keys.grant(e.id),
            "retention_s": self.retention_secs,
            "kind": kind,
            "amount": amount,
            "estimate": e.run.estimate,
            "off_peak": e.run.off_peak,
            "counting": self.counting(r, e.run.off_peak),
            "usage": self.usage_json(r),
            "task_key": task_id.map(|t| self.keys.task(t)).unwrap_or_default(),
            "task": task.map(|t| self.task_start_json(t, self.now())),
            "request_id": r.request_id,
            "grants": self.keys.grants(),
            "once_key_id": e.id.to_string(),
            "created_ms": e.admitted_at.parse::<jiff::Timestamp>().map(|t| t.as_millisecond()).unwrap_or(0),
            "user": r.user, "team": r.team, "model": r.model, "created_at": e.admitted_at,
        })
        .to_string()
    }
}

/// The admission script's answer.
#[derive(Deserialize)]
struct Answered {
    run: Option<RunJson>,
    imm_used: Option<f64>,
    #[serde(default)]
    granted: Option<GrantedJson>,
    #[serde(default)]
    refusal: Option<RefusalJson>,
}

#[derive(Deserialize)]
struct RunJson {
    off_peak: bool,
    estimate: f64,
}

#[derive(Deserialize)]
struct GrantedJson {
    remaining: Option<f64>,
    team_remaining: Option<f64>,
    rate: Option<RateJson>,
    /// What shadow limits would have refused.
    #[serde(default)]
    shadow: Vec<RefusalJson>,
}

#[derive(Deserialize)]
struct ShareJson {
    running: f64,
    free: f64,
    owed: f64,
}

#[derive(Deserialize)]
struct RateJson {
    i: usize,
    remaining: f64,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RefusalJson {
    Norun,
    Slot {
        i: usize,
    },
    /// `i`: a cap of `running.limits`, or -1 for the global one (with `share` when a free slot was kept).
    Running {
        i: i64,
        running: f64,
        #[serde(default)]
        share: Option<ShareJson>,
    },
    Budget {
        i: usize,
        used: f64,
    },
    Rate {
        i: usize,
        wait_us: f64,
        per_minute: bool,
    },
}

/// Lua numbers are doubles; every figure here is a whole number of credits, seconds or tokens.
fn whole(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

fn bad_answer(what: &str) -> StoreError {
    StoreError::Unreachable(format!(
        "redis: the {what} script answered something unexpected"
    ))
}

impl RedisStore {
    fn decision(
        &self,
        req: &AdmissionRequest,
        mode: Mode,
        grant: GrantId,
        answered: Answered,
    ) -> Result<Decision, StoreError> {
        let run = answered.run.map(|r| Run {
            off_peak: r.off_peak,
            estimate: whole(r.estimate),
        });
        let immediate_budget = match (&req.plan, run) {
            (Plan::Fallback(f), Some(r)) if !r.off_peak => Some(&f.immediate_budget),
            _ => None,
        };
        let outcome = match (answered.granted, answered.refusal) {
            (Some(g), None) => Ok(Granted {
                shadowed: g
                    .shadow
                    .into_iter()
                    .map(|r| self.refusal_of(req, immediate_budget, r))
                    .collect::<Result<_, _>>()?,
                grant: (mode == Mode::Take).then(|| Grant::new(grant)),
                remaining_credits: g.remaining.map(whole),
                team_remaining_credits: g.team_remaining.map(whole),
                rate: match g.rate {
                    None => None,
                    Some(r) => {
                        let spec = req.rates.get(r.i).ok_or_else(|| bad_answer("admission"))?;
                        let remaining = u32::try_from(whole(r.remaining)).unwrap_or(u32::MAX);
                        Some(RateStatus {
                            scope: spec.scope,
                            per_minute: spec.per_minute.get(),
                            burst: spec.burst.get(),
                            remaining,
                            reset_secs: if remaining > 0 {
                                0
                            } else {
                                60u64.div_ceil(u64::from(spec.per_minute.get()))
                            },
                        })
                    }
                },
            }),
            (None, Some(r)) => Err(self.refusal_of(req, immediate_budget, r)?),
            _ => return Err(bad_answer("admission")),
        };
        Ok(Decision {
            run,
            immediate_used: answered.imm_used.map(whole),
            outcome,
        })
    }

    /// A refusal the admission script reported (enforced, or a shadow limit's).
    fn refusal_of(
        &self,
        req: &AdmissionRequest,
        immediate_budget: Option<&BudgetSpec>,
        r: RefusalJson,
    ) -> Result<Refusal, StoreError> {
        Ok(match r {
            RefusalJson::Norun => Refusal::NoRun,
            RefusalJson::Slot { i } => {
                let s = req.slots.get(i).ok_or_else(|| bad_answer("admission"))?;
                Refusal::Concurrency {
                    scope: s.scope,
                    max: s.max,
                    source: s.source.clone(),
                }
            }
            RefusalJson::Running { i, running, share } => {
                let running = u32::try_from(whole(running)).unwrap_or(u32::MAX);
                let limit = usize::try_from(i)
                    .ok()
                    .map(|i| {
                        req.running
                            .limits
                            .get(i)
                            .ok_or_else(|| bad_answer("admission"))
                    })
                    .transpose()?;
                match (limit, &req.running.share) {
                    (Some(l), _) => Refusal::Running {
                        scope: l.scope,
                        subject: l.subject.clone(),
                        max: l.max,
                        running,
                        source: l.source.clone(),
                        share: None,
                    },
                    (None, Some(sh)) => Refusal::Running {
                        scope: Scope::Global,
                        subject: String::new(),
                        max: sh.max,
                        running,
                        source: sh.source.clone(),
                        share: share.map(|s| ShareRefusal {
                            group: sh.group.clone(),
                            running: u32::try_from(whole(s.running)).unwrap_or(u32::MAX),
                            guarantee: sh.guarantee,
                            guarantee_source: sh.guarantee_source.clone(),
                            free: u32::try_from(whole(s.free)).unwrap_or(u32::MAX),
                            owed: u32::try_from(whole(s.owed)).unwrap_or(u32::MAX),
                        }),
                    },
                    (None, None) => return Err(bad_answer("admission")),
                }
            }
            RefusalJson::Budget { i, used } => {
                let b = req
                    .budgets
                    .iter()
                    .chain(immediate_budget)
                    .nth(i)
                    .ok_or_else(|| bad_answer("admission"))?;
                Refusal::Budget {
                    key: b.key.clone(),
                    limit: b.limit,
                    used: whole(used),
                    retry_after_secs: b.secs_to_reset,
                    source: b.source.clone(),
                }
            }
            RefusalJson::Rate {
                i,
                wait_us,
                per_minute,
            } => {
                let r = req.rates.get(i).ok_or_else(|| bad_answer("admission"))?;
                Refusal::Rate {
                    scope: r.scope,
                    per_minute: r.per_minute.get(),
                    burst: r.burst.get(),
                    exhausted: if per_minute {
                        rate::Exhausted::PerMinute
                    } else {
                        rate::Exhausted::Burst
                    },
                    retry_after_secs: (wait_us.max(0.0) / 1e6).ceil().max(1.0) as u64,
                    source: r.source.clone(),
                }
            }
        })
    }
}

impl Admissions for RedisStore {
    fn admit_as<'a>(
        &'a self,
        request: &'a AdmissionRequest,
        mode: Mode,
        grant: GrantId,
    ) -> Answer<'a, Decision> {
        async move {
            let invocation = self.admission_args(&self.admit, request, mode, grant);
            let text: String = self
                .call("admission", async |c| invocation.invoke_async(c).await)
                .await?;
            let answered: Answered =
                serde_json::from_str(&text).map_err(|_| bad_answer("admission"))?;
            self.decision(request, mode, grant, answered)
        }
        .boxed()
    }

    fn record_unaccounted<'a>(&'a self, entry: &'a Unaccounted) -> Answer<'a, ()> {
        self.record_spooled(entry).boxed()
    }

    fn finish(&self, grant: Grant, settlement: Settlement) -> Answer<'_, ()> {
        async move {
            let (kind, credits, created) = match settlement {
                Settlement::Charged { credits, task } => ("charged", credits, task),
                Settlement::Released => ("released", 0, None),
                Settlement::Unknown => ("unknown", 0, None),
            };
            let task_id = created.as_ref().map(|t| t.task_id.clone());
            let mut invocation = self.finish.prepare_invoke();
            invocation
                .arg(self.keys.grant(grant.id()))
                .arg(grant.id().to_string())
                .arg(kind)
                .arg(credits)
                .arg(task_id.as_deref().map(|t| self.keys.task(t)).unwrap_or_default())
                .arg(self.retention_secs)
                .arg(self.keys.grants())
                .arg(
                    self.clock
                        .as_ref()
                        .map(|c| c.now().as_millisecond().to_string())
                        .unwrap_or_default(),
                );
            if let Some(t) = &created {
                self.task_start_args(&mut invocation, t, self.now());
            }
            let answer: i64 = self
                .call("settlement", async |c| invocation.invoke_async(c).await)
                .await?;
            if answer == 2 {
                tracing::warn!(
                    task_id = task_id.as_deref().unwrap_or(""),
                    "Vidu returned a task id the gateway had already recorded; its first owner keeps it"
                );
            }
            Ok(())
        }
        .boxed()
    }
}

impl RedisStore {
    async fn record_spooled(&self, entry: &Unaccounted) -> Result<(), StoreError> {
        let arg = self.unaccounted_json(entry);
        let recorded: i64 = self
            .call("spool write-back", async |c| {
                self.record.arg(&arg).invoke_async(c).await
            })
            .await?;
        // Recorded before (a write-back cut short), or admitted by Redis itself after the replica stopped waiting:
        // the grant, if Redis holds it, is settled the normal way (at most once).
        if recorded != 1 {
            self.finish(Grant::new(entry.id), entry.settlement.clone())
                .await?;
        }
        Ok(())
    }
}

impl Records for RedisStore {
    fn record_rejection(&self, rejection: RejectionRecord) -> Answer<'_, ()> {
        async move {
            let member = Keys::member(&rejection.team, &rejection.user);
            let hash = format!("{}{}:{member}", self.keys.usage_prefix(), rejection.day);
            let members = format!("{}{}", self.keys.members_prefix(), rejection.day);
            let mut pipe = ::redis::pipe();
            pipe.atomic()
                .hincr(&hash, format!("rej:{}", rejection.reason), 1)
                .ignore()
                .sadd(self.keys.days(), &rejection.day)
                .ignore()
                .sadd(members, member)
                .ignore();
            self.call("rejection", async |c| pipe.query_async::<()>(c).await)
                .await
        }
        .boxed()
    }

    fn task<'a>(&'a self, task_id: &'a str) -> Answer<'a, Option<TaskRecord>> {
        async move {
            let key = self.keys.task(task_id);
            let fields: std::collections::HashMap<String, String> = self
                .call("task lookup", async |c| {
                    ::redis::cmd("HGETALL").arg(&key).query_async(c).await
                })
                .await?;
            if fields.is_empty() {
                return Ok(None);
            }
            Ok(Some(lifecycle::task_of(task_id.to_owned(), &fields)))
        }
        .boxed()
    }
}

#[derive(Deserialize)]
struct UsageDay {
    day: String,
    admitted: f64,
    reserved: f64,
    settled: f64,
    released: f64,
    unknown: f64,
    #[serde(default)]
    refunded: f64,
    off_peak: f64,
    #[serde(default)]
    rejected: Option<std::collections::BTreeMap<String, f64>>,
}

impl Reports for RedisStore {
    fn used<'a>(&'a self, keys: &'a [BudgetKey]) -> Answer<'a, Vec<u64>> {
        async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let names: Vec<String> = keys.iter().map(|k| self.keys.budget(k)).collect();
            let values: Vec<Option<i64>> = self
                .call("budget read", async |c| {
                    ::redis::cmd("MGET").arg(&names).query_async(c).await
                })
                .await?;
            Ok(values
                .into_iter()
                .map(|v| u64::try_from(v.unwrap_or(0)).unwrap_or(0))
                .collect())
        }
        .boxed()
    }

    fn usage<'a>(&'a self, filter: &'a UsageFilter) -> Answer<'a, Vec<UsageRow>> {
        async move {
            let opt = |v: &Option<String>| {
                v.as_deref()
                    .map(|s| enc(s).into_owned())
                    .unwrap_or_default()
            };
            let text: String = self
                .call("usage report", async |c| {
                    self.usage
                        .arg(self.keys.days())
                        .arg(self.keys.members_prefix())
                        .arg(self.keys.usage_prefix())
                        .arg(opt(&filter.user))
                        .arg(opt(&filter.team))
                        .arg(filter.from.as_deref().unwrap_or(""))
                        .arg(filter.to.as_deref().unwrap_or(""))
                        .invoke_async(c)
                        .await
                })
                .await?;
            let days: Vec<UsageDay> =
                serde_json::from_str(&text).map_err(|_| bad_answer("usage"))?;
            Ok(days
                .into_iter()
                .map(|d| {
                    let rejected_by_reason: std::collections::BTreeMap<String, u64> = d
                        .rejected
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, whole(v)))
                        .collect();
                    UsageRow {
                        day: d.day,
                        admitted: whole(d.admitted),
                        rejected: rejected_by_reason.values().sum(),
                        rejected_by_reason,
                        credits_reserved: whole(d.reserved),
                        credits_settled: whole(d.settled),
                        credits_released: whole(d.released),
                        credits_unknown: whole(d.unknown),
                        credits_refunded: whole(d.refunded),
                        off_peak_requests: whole(d.off_peak),
                    }
                })
                .collect())
        }
        .boxed()
    }
}

impl Health for RedisStore {
    fn health(&self) -> Answer<'_, ()> {
        async move {
            self.call("health check", async |c| {
                ::redis::cmd("PING").query_async::<()>(c).await
            })
            .await
        }
        .boxed()
    }

    fn heartbeat<'a>(&'a self, replica: &'a str, version: &'a str) -> Answer<'a, Replicas> {
        async move {
            #[derive(Deserialize)]
            struct Beat {
                epoch: String,
                lost: bool,
                versions: Value,
                now_ms: f64,
            }
            let known = self
                .epoch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            let now_ms = self
                .clock
                .as_ref()
                .map(|c| c.now().as_millisecond().to_string())
                .unwrap_or_default();
            // Every script is (re)loaded at every beat, so it is in Redis's script cache before a request needs it,
            // also after a Redis restart or failover (which empties the cache, with or without the data): a
            // settlement is issued after the caller has Vidu's answer, and one answered NOSCRIPT (then loaded, then
            // run) could land after the caller's next request. Loading a cached script only hashes it.
            let mut load = ::redis::pipe();
            for source in SCRIPTS {
                load.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
            }
            self.call_on(&self.side, "script load", async |c| {
                load.query_async::<()>(c).await
            })
            .await?;
            let text: String = self
                .call_on(&self.side, "heartbeat", async |c| {
                    self.heartbeat
                        .arg(self.keys.epoch())
                        .arg(self.keys.config_versions())
                        .arg(replica)
                        .arg(version)
                        .arg(&known)
                        .arg(uuid::Uuid::new_v4().simple().to_string())
                        .arg(REPLICA_STALE_MS)
                        .arg(&now_ms)
                        .invoke_async(c)
                        .await
                })
                .await?;
            let beat: Beat = serde_json::from_str(&text).map_err(|_| bad_answer("heartbeat"))?;
            *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = Some(beat.epoch);
            // An empty Lua table encodes as `{}` either way; anything but strings is not a version.
            let versions = beat
                .versions
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Replicas {
                versions,
                data_lost: beat.lost,
                backend_now: jiff::Timestamp::from_millisecond(beat.now_ms as i64).ok(),
            })
        }
        .boxed()
    }

    /// Everything is in Redis already: Redis's own persistence (AOF) makes it durable.
    fn flush(&self) -> Answer<'_, ()> {
        futures_util::future::ready(Ok(())).boxed()
    }
}

/// Shared so that the wrapper and the app hold the same store.
pub type Shared = Arc<RedisStore>;

#[cfg(test)]
mod tests {
    use futures_util::future::{LocalBoxFuture, ready};

    use super::server::RedisServer;
    use super::*;
    use crate::state::conformance::{Backend, Opened, run_conformance};

    struct Redis;

    impl Backend for Redis {
        fn available(&self) -> bool {
            !super::server::skipped()
        }

        fn open(&self, clock: SharedClock) -> LocalBoxFuture<'_, Opened> {
            let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
            let settings = StateSettings {
                redis_url: crate::config::Secret::new(server.url()),
                redis_timeout_ms: 2000,
                key_prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
                ..StateSettings::default()
            };
            let store = RedisStore::open(&settings, 30_000)
                .unwrap()
                .with_clock(clock);
            ready(Opened {
                store: Arc::new(store),
                keep: Box::new(server),
            })
            .boxed_local()
        }
    }

    run_conformance!(Redis);
    crate::state::conformance_idempotency::run_idempotency_conformance!(Redis);

    #[test]
    fn subjects_with_separators_are_encoded() {
        assert_eq!(enc("a:b%c"), "a%3Ab%25c");
        assert_eq!(enc("alice@example.com"), "alice@example.com");
        assert_eq!(Keys::member("t:1", "u"), "t%3A1:u");
    }

    /// `admit.lua` sets a budget counter's expiry once, when the period's first reservation creates it, and a
    /// run that costs nothing creates no counter.
    #[actix_web::test]
    async fn a_budget_counter_expires_from_its_periods_first_reservation() {
        if super::server::skipped() {
            return;
        }
        let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let settings = StateSettings {
            redis_url: crate::config::Secret::new(server.url()),
            redis_timeout_ms: 2000,
            key_prefix: "ttl".into(),
            ..StateSettings::default()
        };
        let store = RedisStore::open(&settings, 30_000).unwrap();
        let request = |estimate| crate::state::conformance::request("ana", "t1", estimate);
        let record = request(0).record;
        let counters = BudgetKey::counting(&record, false);
        let day = store.keys.budget(&counters[0]);
        let month = store.keys.budget(&counters[1]);

        let free = store.admit(&request(0), Mode::Take).await.unwrap();
        assert!(free.outcome.is_ok());
        assert_eq!(server.query::<i64>(&["EXISTS", &day]).unwrap(), 0);

        for n in 1..=2 {
            let d = store.admit(&request(40), Mode::Take).await.unwrap();
            assert!(d.outcome.is_ok());
            assert_eq!(server.query::<i64>(&["GET", &day]).unwrap(), 40 * n);
            let ttl: i64 = server.query(&["TTL", &day]).unwrap();
            assert!(ttl > 0 && ttl <= DAY_BUDGET_TTL_SECS as i64, "{ttl}");
            let ttl: i64 = server.query(&["TTL", &month]).unwrap();
            assert!(
                ttl > DAY_BUDGET_TTL_SECS as i64 && ttl <= MONTH_BUDGET_TTL_SECS as i64,
                "{ttl}"
            );
        }
        // Not renewed by later reservations: shortened by hand, it stays short.
        server.query::<i64>(&["EXPIRE", &day, "100"]).unwrap();
        store.admit(&request(40), Mode::Take).await.unwrap();
        assert!(server.query::<i64>(&["TTL", &day]).unwrap() <= 100);
        assert_eq!(server.query::<i64>(&["GET", &day]).unwrap(), 120);
    }
}
