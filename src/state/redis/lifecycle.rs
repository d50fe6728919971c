//! The redis backend's side of following tasks: each decision one script (`observe.lua`, `claim_due.lua`,
//! `relays.lua`, `reservations.lua`, `tasks.lua`), nonces one `SET NX`, a nudge one `ZADD`.

use std::collections::HashMap;

use super::*;
use crate::clock::stamp;

/// Members of a task list read by one page at most (a `?state=` filter matching little returns a shorter page
/// with a cursor rather than scanning everything in one script).
const TASK_SCAN: usize = 2000;
/// Task records the burn rate reads per round trip, and the most round trips (a day of tasks at more than one a
/// second).
const BURN_SLICE: usize = 1_000;
const BURN_SLICES: usize = 100;

/// A task's record from its hash.
pub(super) fn task_of(task_id: String, f: &HashMap<String, String>) -> TaskRecord {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let num = |k: &str| {
        f.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .map(whole)
            .unwrap_or(0)
    };
    let opt = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
    let created_at = get("created_at");
    TaskRecord {
        task_id,
        request_id: get("request_id"),
        user: get("user"),
        team: get("team"),
        model: get("model"),
        off_peak: get("off_peak") == "1",
        estimate: num("estimate"),
        charged: num("credits"),
        refunded: num("refunded"),
        // Records written before the lifecycle was followed are taken as ended.
        state: TaskState::parse(&get("state")).unwrap_or(TaskState::Success),
        callback_url: opt("callback_url"),
        updated_at: opt("updated_at").unwrap_or_else(|| created_at.clone()),
        created_at,
        ended_at: opt("ended_at"),
        relay: opt("relay").as_deref().and_then(RelayStatus::parse),
    }
}

/// A script's JSON object, as the string hash `task_of` reads (numbers and booleans as Redis holds them).
fn as_fields(v: &Value) -> HashMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

impl RedisStore {
    /// The time task records are stamped with: the test clock, else this replica's.
    pub(super) fn now(&self) -> jiff::Timestamp {
        self.clock
            .as_ref()
            .map(|c| c.now())
            .unwrap_or_else(jiff::Timestamp::now)
    }

    /// What `finish.lua` and `record.lua` need to start a task's lifecycle.
    /// A created task as `finish.lua` reads it (flat arguments, in its order).
    pub(super) fn task_start_args(
        &self,
        invocation: &mut ::redis::ScriptInvocation<'_>,
        t: &Created,
        now: jiff::Timestamp,
    ) {
        invocation
            .arg(&t.task_id)
            .arg(t.state.as_str())
            .arg(if t.state.is_terminal() { "1" } else { "0" })
            .arg(t.callback_url.as_deref().unwrap_or(""))
            .arg(stamp(now))
            .arg(now.as_millisecond())
            .arg(format!("{}:tl:", self.keys.tag))
            .arg(stamp(self.list_cutoff(now)))
            .arg(if prune_lists() { "1" } else { "0" })
            .arg(self.keys.live());
    }

    /// Members created before this leave the task lists.
    fn list_cutoff(&self, now: jiff::Timestamp) -> jiff::Timestamp {
        let retention = jiff::SignedDuration::from_secs(
            i64::try_from(self.retention_secs).unwrap_or(i64::MAX / 2),
        );
        now.checked_sub(retention).unwrap_or(now)
    }

    pub(super) fn task_start_json(&self, t: &Created, now: jiff::Timestamp) -> Value {
        let cutoff = self.list_cutoff(now);
        json!({
            "now": stamp(now),
            "now_ms": now.as_millisecond(),
            "task_id": t.task_id,
            "state": t.state.as_str(),
            "terminal": t.state.is_terminal(),
            "callback_url": t.callback_url.as_deref().unwrap_or(""),
            "list_prefix": format!("{}:tl:", self.keys.tag),
            "cutoff": stamp(cutoff),
            "prune": prune_lists(),
            "live": self.keys.live(),
        })
    }
}

/// Pruning the task lists of members past the retention is amortised: about 1 create in 32 does it.
fn prune_lists() -> bool {
    uuid::Uuid::new_v4().as_bytes()[0] < 8
}

#[derive(Deserialize)]
struct Changed {
    from: String,
    task: Value,
    refunded_now: f64,
    adjusted: f64,
    relay_queued: bool,
}

#[derive(Deserialize)]
struct Page {
    tasks: Vec<Value>,
    last: String,
    more: bool,
}

#[derive(Deserialize)]
struct GrantView {
    id: String,
    request_id: String,
    user: String,
    team: String,
    model: String,
    off_peak: bool,
    estimate: f64,
    state: String,
    created_ms: Option<f64>,
}

impl GrantView {
    fn view(self) -> ReservationView {
        let created_at = self
            .created_ms
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms as i64).ok())
            .map(stamp)
            .unwrap_or_default();
        ReservationView {
            id: self.id,
            request_id: self.request_id,
            user: self.user,
            team: self.team,
            model: self.model,
            off_peak: self.off_peak,
            estimate: whole(self.estimate),
            state: if self.state == "unknown" {
                "unknown"
            } else {
                "open"
            },
            created_at,
        }
    }
}

impl Lifecycle for RedisStore {
    fn observe<'a>(&'a self, seen: &'a Observation) -> Answer<'a, Option<Transition>> {
        async move {
            let now = self.now();
            let outbox_id = uuid::Uuid::new_v4().to_string();
            let arg = json!({
                "task_key": self.keys.task(&seen.task_id),
                "task_id": seen.task_id,
                "state": seen.state.as_str(),
                "credits": seen.credits,
                "now": stamp(now),
                "now_ms": now.as_millisecond(),
                // Running-task slots follow Redis's time, unless a test clock drives the scripts.
                "slot_now_ms": self.clock.as_ref().map(|c| c.now().as_millisecond()),
                "body": seen.body,
                "live": self.keys.live(),
                "due": self.keys.due(),
                "outbox": {
                    "key": format!("{}{outbox_id}", self.keys.outbox_prefix()),
                    "id": outbox_id,
                    "due": self.keys.outbox_due(),
                    "order": format!("{}{}", self.keys.outbox_order_prefix(), seen.task_id),
                },
            })
            .to_string();
            let text: String = self
                .call_on(&self.side, "task state", async |c| {
                    self.observe.arg(&arg).invoke_async(c).await
                })
                .await?;
            if text.is_empty() {
                return Ok(None);
            }
            let c: Changed = serde_json::from_str(&text).map_err(|_| bad_answer("task state"))?;
            Ok(Some(Transition {
                from: TaskState::parse(&c.from).unwrap_or(TaskState::Created),
                task: task_of(seen.task_id.clone(), &as_fields(&c.task)),
                refunded: whole(c.refunded_now),
                adjusted: c.adjusted.round() as i64,
                relay_queued: c.relay_queued,
            }))
        }
        .boxed()
    }

    fn tasks<'a>(&'a self, query: &'a TaskQuery) -> Answer<'a, TaskPage> {
        async move {
            let index = self
                .keys
                .task_list(query.team.as_deref(), query.user.as_deref());
            let arg = json!({
                "index": index,
                "prefix": self.keys.task_prefix(),
                "after": query.after.as_ref().map(|(at, id)| format!("{at}|{id}")).unwrap_or_default(),
                "limit": query.limit,
                "state": query.state.map(TaskState::as_str).unwrap_or(""),
                "scan": TASK_SCAN,
            })
            .to_string();
            let text: String = self
                .call_on(&self.side, "task list", async |c| {
                    self.tasks.arg(&arg).invoke_async(c).await
                })
                .await?;
            let page: Page = serde_json::from_str(&text).map_err(|_| bad_answer("task list"))?;
            let mut tasks: Vec<TaskRecord> = page
                .tasks
                .iter()
                .map(|v| {
                    let f = as_fields(v);
                    let id = f.get("task_id").cloned().unwrap_or_default();
                    task_of(id, &f)
                })
                .collect();
            // A user's list holds the user's tasks in every team; a team filter on it keeps the team's.
            if query.user.is_some()
                && let Some(team) = &query.team
            {
                tasks.retain(|t| &t.team == team);
            }
            let next = if page.more {
                page.last
                    .split_once('|')
                    .map(|(at, id)| (at.to_owned(), id.to_owned()))
            } else {
                None
            };
            Ok(TaskPage { tasks, next })
        }
        .boxed()
    }

    fn claim_nonce<'a>(&'a self, nonce: &'a str, ttl_secs: u64) -> Answer<'a, bool> {
        async move {
            let key = self.keys.nonce(nonce);
            let set: Option<String> = self
                .call_on(&self.side, "callback nonce", async |c| {
                    ::redis::cmd("SET")
                        .arg(&key)
                        .arg("1")
                        .arg("NX")
                        .arg("EX")
                        .arg(ttl_secs.max(1))
                        .query_async(c)
                        .await
                })
                .await?;
            Ok(set.is_some())
        }
        .boxed()
    }

    fn nudge<'a>(&'a self, task_id: &'a str, after_ms: u64) -> Answer<'a, ()> {
        async move {
            let at = self
                .now()
                .as_millisecond()
                .saturating_add(i64::try_from(after_ms).unwrap_or(i64::MAX / 2));
            // `LT`: an earlier mark stays. A task not followed (ended, unknown) is dropped by the next claim.
            self.call_on(&self.side, "task nudge", async |c| {
                ::redis::cmd("ZADD")
                    .arg(self.keys.due())
                    .arg("LT")
                    .arg(at)
                    .arg(task_id)
                    .query_async::<()>(c)
                    .await
            })
            .await
        }
        .boxed()
    }

    fn claim_due<'a>(&'a self, claim: &'a DueClaim) -> Answer<'a, Vec<String>> {
        async move {
            let arg = json!({
                "lease_key": self.keys.reconcile_lease(),
                "holder": claim.holder,
                "lease_ms": claim.lease_ms.max(1),
                "queries_key": self.keys.reconcile_queries(),
                "live": self.keys.live(),
                "due": self.keys.due(),
                "task_prefix": self.keys.task_prefix(),
                // Lua numbers are doubles: "never by quiet" is -1.
                "quiet_ms": if claim.quiet_ms > (1u64 << 52) { -1 } else { claim.quiet_ms as i64 },
                "per_minute": claim.per_minute,
                // Redis's own `TIME` decides the lease and the quota, unless a test clock is set (replicas'
                // clocks differ).
                "now_ms": self.clock.as_ref().map(|c| c.now().as_millisecond()),
            })
            .to_string();
            let text: String = self
                .call_on(&self.side, "reconciler claim", async |c| {
                    self.claim_due.arg(&arg).invoke_async(c).await
                })
                .await?;
            serde_json::from_str(&text).map_err(|_| bad_answer("reconciler claim"))
        }
        .boxed()
    }

    fn claim_relays(&self, limit: usize, lease_ms: u64) -> Answer<'_, Vec<RelayJob>> {
        async move {
            #[derive(Deserialize)]
            struct Job {
                id: String,
                task_id: String,
                team: String,
                url: String,
                body: String,
                attempts: u32,
                created_ms: f64,
            }
            let arg = json!({
                "op": "claim",
                "order_prefix": self.keys.outbox_order_prefix(),
                "due": self.keys.outbox_due(),
                "prefix": self.keys.outbox_prefix(),
                "now_ms": self.now().as_millisecond(),
                "limit": limit,
                "lease_ms": lease_ms,
            })
            .to_string();
            let text: String = self
                .call_on(&self.side, "relay claim", async |c| {
                    self.relays.arg(&arg).invoke_async(c).await
                })
                .await?;
            let jobs: Vec<Job> =
                serde_json::from_str(&text).map_err(|_| bad_answer("relay claim"))?;
            Ok(jobs
                .into_iter()
                .map(|j| RelayJob {
                    id: j.id,
                    task_id: j.task_id,
                    team: j.team,
                    url: j.url,
                    body: j.body,
                    attempts: j.attempts,
                    created_ms: j.created_ms as i64,
                })
                .collect())
        }
        .boxed()
    }

    fn relay_done<'a>(&'a self, job: &'a RelayJob, outcome: RelayOutcome) -> Answer<'a, ()> {
        async move {
            let (name, after_ms) = match outcome {
                RelayOutcome::Delivered => ("delivered", 0),
                RelayOutcome::Retry { after_ms } => ("retry", after_ms),
                RelayOutcome::GaveUp => ("gave_up", 0),
            };
            let arg = json!({
                "op": "done",
                "order_prefix": self.keys.outbox_order_prefix(),
                "task_id": job.task_id,
                "due": self.keys.outbox_due(),
                "prefix": self.keys.outbox_prefix(),
                "now_ms": self.now().as_millisecond(),
                "id": job.id,
                "task_key": self.keys.task(&job.task_id),
                "outcome": name,
                "after_ms": after_ms,
                "attempts": job.attempts + 1,
            })
            .to_string();
            self.call_on(&self.side, "relay outcome", async |c| {
                self.relays.arg(&arg).invoke_async::<i64>(c).await
            })
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn reservations(&self) -> Answer<'_, Vec<ReservationView>> {
        async move {
            let arg = json!({
                "op": "list",
                "stale_ms": self.lease_ms,
                "now_ms": self.clock.as_ref().map(|c| c.now().as_millisecond()),
                "grants": self.keys.grants(),
                "prefix": format!("{}:g:", self.keys.tag),
            })
            .to_string();
            let text: String = self
                .call_on(&self.side, "reservation list", async |c| {
                    self.reservations.arg(&arg).invoke_async(c).await
                })
                .await?;
            let list: Vec<GrantView> =
                serde_json::from_str(&text).map_err(|_| bad_answer("reservation list"))?;
            Ok(list.into_iter().map(GrantView::view).collect())
        }
        .boxed()
    }

    fn resolve<'a>(&'a self, id: &'a str, how: Resolution) -> Answer<'a, Option<ReservationView>> {
        async move {
            let (name, credits) = match how {
                Resolution::Settle(n) => ("settle", n),
                Resolution::Release => ("release", 0),
            };
            let arg = json!({
                "op": "resolve",
                "stale_ms": self.lease_ms,
                "now_ms": self.clock.as_ref().map(|c| c.now().as_millisecond()),
                "grants": self.keys.grants(),
                "prefix": format!("{}:g:", self.keys.tag),
                "id": id,
                "how": name,
                "credits": credits,
            })
            .to_string();
            let text: String = self
                .call_on(&self.side, "reservation resolve", async |c| {
                    self.reservations.arg(&arg).invoke_async(c).await
                })
                .await?;
            if text.is_empty() {
                return Ok(None);
            }
            let g: GrantView =
                serde_json::from_str(&text).map_err(|_| bad_answer("reservation resolve"))?;
            Ok(Some(g.view()))
        }
        .boxed()
    }

    fn charged_since(&self, since: jiff::Timestamp) -> Answer<'_, u64> {
        #[derive(Deserialize)]
        struct Slice {
            total: f64,
            last: String,
            done: bool,
        }
        async move {
            let since = stamp(since);
            let (mut total, mut from) = (0u64, "+".to_owned());
            // One bounded slice per round trip: a day of tasks never holds Redis for long.
            for _ in 0..BURN_SLICES {
                let arg = json!({
                    "index": self.keys.task_list(None, None),
                    "prefix": self.keys.task_prefix(),
                    "since": since,
                    "from": from,
                    "scan": BURN_SLICE,
                })
                .to_string();
                let text: String = self
                    .call_on(&self.side, "credits charged", async |c| {
                        self.burn.arg(&arg).invoke_async(c).await
                    })
                    .await?;
                let slice: Slice =
                    serde_json::from_str(&text).map_err(|_| bad_answer("credits charged"))?;
                total = total.saturating_add(whole(slice.total));
                if slice.done || slice.last.is_empty() {
                    break;
                }
                from = slice.last;
            }
            Ok(total)
        }
        .boxed()
    }

    fn running(&self) -> Answer<'_, RunningNow> {
        async move {
            let arg = json!({
                "global": self.keys.running(Scope::Global, ""),
                "grant_prefix": format!("{}:g:", self.keys.tag),
                "task_prefix": self.keys.task_prefix(),
                "now_ms": self.clock.as_ref().map(|c| c.now().as_millisecond()),
            })
            .to_string();
            let text: String = self
                .call_on(&self.side, "running tasks", async |c| {
                    self.running.arg(&arg).invoke_async(c).await
                })
                .await?;
            let holders: Vec<(String, String)> =
                serde_json::from_str(&text).map_err(|_| bad_answer("running tasks"))?;
            let mut now = RunningNow::default();
            for (user, team) in holders {
                now.total += 1;
                *now.users.entry(user).or_default() += 1;
                if !team.is_empty() {
                    *now.teams.entry(team).or_default() += 1;
                }
            }
            Ok(now)
        }
        .boxed()
    }
}
