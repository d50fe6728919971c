//! The memory backend's side of following tasks: unfinished tasks, `unknown` reservations and the relay outbox
//! held in memory under the store's one lock (each decision atomic), every change queued to the ledger writer,
//! all of it loaded back from the ledger when the store opens.

use std::collections::VecDeque;

use super::*;
use crate::clock::stamp;
use crate::state::ledger_tasks::TaskWrite;
use crate::state::lifecycle::money_of;

/// Nonces are pruned of expired entries every this many claims.
const NONCE_PRUNE_EVERY: u32 = 1024;

/// An unfinished task: its record, and every budget its reservation counts against (its creation's periods).
struct Live {
    task: TaskRecord,
    keys: Vec<BudgetKey>,
    /// When the gateway last heard of it (ms).
    heard_ms: i64,
    /// A callback said it changed: due for the reconciler at this time (ms) unless heard of before.
    due_at: Option<i64>,
    /// It holds a running-task slot (member: its task id), kept this long (ms) after each news.
    slot_ttl: Option<u64>,
}

/// A reservation whose outcome is unknown.
struct Unknown {
    row: i64,
    view: ReservationView,
    keys: Vec<BudgetKey>,
}

pub(super) struct Life {
    clock: SharedClock,
    live: HashMap<String, Live>,
    unknown: HashMap<String, Unknown>,
    /// Relay jobs by id, with the time they are due (ms).
    outbox: HashMap<String, (RelayJob, i64)>,
    /// Callback nonces seen, until they expire (ms).
    nonces: HashMap<String, i64>,
    claims: u32,
    /// The reconciler's lease: holder and expiry (ms).
    lease: Option<(String, i64)>,
    /// When the reconciler's queries of the last minute were claimed (ms).
    queries: VecDeque<i64>,
    /// Running-task slots.
    pub(super) running: super::running::Running,
}

/// `ms` from `now`, saturating.
pub(super) fn after(now: i64, ms: u64) -> i64 {
    now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
}

impl Life {
    /// Loads what the ledger holds of unfinished tasks, unknown reservations and relays still owed.
    pub(super) fn load(ledger: &Ledger, clock: SharedClock) -> anyhow::Result<Self> {
        let mut live = HashMap::default();
        // Heard of "now": after a restart they are due once the quiet time has passed, like any other.
        let loaded_at = clock.now().as_millisecond();
        let mut running = super::running::Running::default();
        for row in ledger.live_tasks()? {
            let keys = BudgetKey::counting(&row.record, row.task.off_peak);
            // A slot counts again after a restart until its time since the task's last change runs out (a task
            // quiet for longer had lapsed already).
            if let Some(ttl) = row.slot_ttl_ms {
                let t = &row.task;
                let last_news = t
                    .updated_at
                    .parse::<jiff::Timestamp>()
                    .map_or(loaded_at, |at| at.as_millisecond());
                let until = after(last_news, ttl);
                if until > loaded_at {
                    running.take(t.task_id.clone(), &t.user, &t.team, until);
                }
            }
            live.insert(
                row.task.task_id.clone(),
                Live {
                    task: row.task,
                    keys,
                    heard_ms: loaded_at,
                    due_at: row.due_ms,
                    slot_ttl: row.slot_ttl_ms,
                },
            );
        }
        let mut unknown = HashMap::default();
        for u in ledger.unknown_reservations()? {
            let (row, keys) = (u.row, BudgetKey::counting(&u.record, u.off_peak));
            let view = u.view();
            // A restart forgets the slot of an unknown reservation (it had no task to hear of anyway).
            unknown.insert(view.id.clone(), Unknown { row, view, keys });
        }
        let outbox = ledger
            .outbox()?
            .into_iter()
            .map(|(job, due)| (job.id.clone(), (job, due)))
            .collect();
        Ok(Self {
            clock,
            live,
            unknown,
            outbox,
            nonces: HashMap::default(),
            claims: 0,
            lease: None,
            queries: VecDeque::new(),
            running,
        })
    }

    /// Now, in ms and as stamped on records.
    pub(super) fn now(&self) -> (i64, String) {
        let t = self.clock.now();
        (t.as_millisecond(), stamp(t))
    }

    /// The record of a task Vidu created for the grant `out`, charging `charged`.
    pub(super) fn created(&self, out: &Outstanding, created: Created, charged: u64) -> TaskRecord {
        let (_, now) = self.now();
        let ended = created.state.is_terminal();
        TaskRecord {
            task_id: created.task_id,
            request_id: out.record.request_id.clone(),
            user: out.record.user.clone(),
            team: out.record.team.clone(),
            model: out.record.model.clone(),
            off_peak: out.off_peak,
            estimate: out.estimate,
            charged,
            refunded: 0,
            state: created.state,
            callback_url: created.callback_url,
            created_at: now.clone(),
            updated_at: now.clone(),
            ended_at: ended.then_some(now),
            relay: None,
        }
    }

    /// Follows a task just created until it ends (one already ended needs no following); the grant's
    /// running-task slot passes to it. `false`: the task holds no slot (ended, or its id was known already).
    pub(super) fn follow(&mut self, id: GrantId, task: &TaskRecord, out: &Outstanding) -> bool {
        if task.state.is_terminal() || self.live.contains_key(&task.task_id) {
            return false;
        }
        let (now, _) = self.now();
        self.running.prune(now);
        // The task holds the slot only if its grant still did (it had not lapsed meanwhile).
        let slot_ttl = out.slot_ttl.filter(|ttl| {
            self.running
                .rename(&id.to_string(), task.task_id.clone(), after(now, *ttl))
        });
        self.live.insert(
            task.task_id.clone(),
            Live {
                task: task.clone(),
                keys: out.keys.clone(),
                heard_ms: now,
                due_at: None,
                slot_ttl,
            },
        );
        slot_ttl.is_some()
    }

    /// An unfinished task's current record.
    pub(super) fn live(&self, task_id: &str) -> Option<TaskRecord> {
        self.live.get(task_id).map(|l| l.task.clone())
    }

    /// The outcome of a grant is unknown: the task may exist, so its running-task slot is kept until its time
    /// runs out or the reservation is resolved.
    pub(super) fn unknown_from(&mut self, id: GrantId, out: &Outstanding) {
        let view = out.view(id, "unknown");
        if let Some(ttl) = out.slot_ttl {
            let (now, _) = self.now();
            self.running.prune(now);
            self.running.touch(&view.id, after(now, ttl));
        }
        self.unknown.insert(
            view.id.clone(),
            Unknown {
                row: out.row,
                keys: out.keys.clone(),
                view,
            },
        );
    }
}

impl Outstanding {
    /// The grant as a listed reservation.
    fn view(&self, id: GrantId, state: &'static str) -> ReservationView {
        ReservationView {
            id: id.to_string(),
            request_id: self.record.request_id.clone(),
            user: self.record.user.clone(),
            team: self.record.team.clone(),
            model: self.record.model.clone(),
            off_peak: self.off_peak,
            estimate: self.estimate,
            state,
            created_at: self.at.clone(),
        }
    }
}

impl Inner {
    fn observe(&mut self, seen: &Observation, writer: &Writer) -> Option<Transition> {
        let (now_ms, now) = self.life.now();
        let live = self.life.live.get_mut(&seen.task_id)?;
        live.heard_ms = now_ms;
        if let Some(ttl) = live.slot_ttl {
            // A holder whose time ran out is gone, not renewed by news.
            self.life.running.prune(now_ms);
            if seen.state.is_terminal() {
                self.life.running.free(&seen.task_id);
            } else {
                self.life.running.touch(&seen.task_id, after(now_ms, ttl));
            }
        }
        if live.due_at.take().is_some() {
            writer.send(Write::Task(TaskWrite::Due {
                task_id: seen.task_id.clone(),
                due_ms: None,
            }));
        }
        let money = money_of(live.task.state, live.task.charged, seen)?;
        let from = live.task.state;
        let task = &mut live.task;
        task.state = seen.state;
        task.charged = money.charged;
        task.refunded += money.refunded;
        task.updated_at = now.clone();
        if seen.state.is_terminal() {
            task.ended_at = Some(now);
        }
        let relay = task.callback_url.clone().map(|url| RelayJob {
            id: uuid::Uuid::new_v4().to_string(),
            task_id: task.task_id.clone(),
            team: task.team.clone(),
            url,
            body: seen.body.clone(),
            attempts: 0,
            created_ms: now_ms,
        });
        if relay.is_some() {
            task.relay = Some(RelayStatus::Pending);
        }
        let task = task.clone();
        let keys = std::mem::take(&mut live.keys);
        let seq = writer.send(Write::Task(TaskWrite::Changed {
            task_id: task.task_id.clone(),
            state: task.state,
            charged: task.charged,
            refunded: task.refunded,
            updated_at: task.updated_at.clone(),
            ended_at: task.ended_at.clone(),
            relay: task.relay,
            money: (money.delta != 0).then_some(money.delta),
        }));
        if money.delta != 0 {
            self.shift(&keys, i128::from(money.delta), seq);
        }
        if task.state.is_terminal() {
            self.life.live.remove(&task.task_id);
        } else if let Some(live) = self.life.live.get_mut(&task.task_id) {
            live.keys = keys;
        }
        let relay_queued = relay.is_some();
        if let Some(job) = relay {
            writer.send(Write::Task(TaskWrite::OutboxPut {
                job: job.clone(),
                due_ms: now_ms,
            }));
            self.life.outbox.insert(job.id.clone(), (job, now_ms));
        }
        Some(Transition {
            from,
            refunded: money.refunded,
            adjusted: if task.state == TaskState::Success {
                money.delta
            } else {
                0
            },
            task,
            relay_queued,
        })
    }

    fn claim_nonce(&mut self, nonce: &str, ttl_secs: u64) -> bool {
        let (now, _) = self.life.now();
        let life = &mut self.life;
        life.claims = life.claims.wrapping_add(1);
        if life.claims.is_multiple_of(NONCE_PRUNE_EVERY) {
            life.nonces.retain(|_, until| *until > now);
        }
        match life.nonces.get(nonce) {
            Some(until) if *until > now => false,
            _ => {
                let ttl = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                life.nonces
                    .insert(nonce.to_owned(), now.saturating_add(ttl));
                true
            }
        }
    }

    fn claim_due(&mut self, claim: &DueClaim, writer: &Writer) -> Vec<String> {
        let (now, _) = self.life.now();
        let life = &mut self.life;
        if let Some((holder, until)) = &life.lease
            && holder != &claim.holder
            && *until > now
        {
            return Vec::new();
        }
        life.lease = Some((
            claim.holder.clone(),
            now.saturating_add(i64::try_from(claim.lease_ms).unwrap_or(i64::MAX)),
        ));
        while life.queries.front().is_some_and(|t| *t <= now - 60_000) {
            life.queries.pop_front();
        }
        let room = (claim.per_minute as usize).saturating_sub(life.queries.len());
        if room == 0 {
            return Vec::new();
        }
        let quiet = i64::try_from(claim.quiet_ms).unwrap_or(i64::MAX);
        // Marked due by a callback first (in the order they fell due), then the quietest.
        let mut due: Vec<((bool, i64), &String)> = life
            .live
            .iter()
            .filter_map(|(id, l)| match l.due_at {
                Some(at) if at <= now => Some(((false, at), id)),
                _ if l.heard_ms <= now.saturating_sub(quiet) => Some(((true, l.heard_ms), id)),
                _ => None,
            })
            .collect();
        due.sort();
        let ids: Vec<String> = due
            .into_iter()
            .take(room)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &ids {
            if let Some(l) = life.live.get_mut(id) {
                l.heard_ms = now;
                if l.due_at.take().is_some() {
                    writer.send(Write::Task(TaskWrite::Due {
                        task_id: id.clone(),
                        due_ms: None,
                    }));
                }
            }
            life.queries.push_back(now);
        }
        ids
    }

    fn claim_relays(&mut self, limit: usize, lease_ms: u64) -> Vec<RelayJob> {
        let (now, _) = self.life.now();
        // One relay per task at a time, oldest change first: a retried `processing` never lands after `success`.
        let mut heads: HashMap<&str, (i64, &str)> = HashMap::default();
        for (id, (job, _)) in &self.life.outbox {
            let head = heads
                .entry(job.task_id.as_str())
                .or_insert((job.created_ms, id.as_str()));
            *head = (*head).min((job.created_ms, id.as_str()));
        }
        let mut due: Vec<(i64, String)> = self
            .life
            .outbox
            .iter()
            .filter(|(id, (job, at))| {
                *at <= now && heads.get(job.task_id.as_str()).map(|h| h.1) == Some(id.as_str())
            })
            .map(|(id, (_, at))| (*at, id.clone()))
            .collect();
        due.sort();
        let until = now.saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX));
        due.into_iter()
            .take(limit)
            .filter_map(|(_, id)| {
                let (job, at) = self.life.outbox.get_mut(&id)?;
                *at = until;
                Some(job.clone())
            })
            .collect()
    }

    fn relay_done(&mut self, job: &RelayJob, outcome: RelayOutcome, writer: &Writer) {
        let (now, _) = self.life.now();
        if !self.life.outbox.contains_key(&job.id) {
            return;
        }
        let status = match outcome {
            RelayOutcome::Retry { after_ms } => {
                let due = now.saturating_add(i64::try_from(after_ms).unwrap_or(i64::MAX));
                let attempts = job.attempts + 1;
                if let Some((held, at)) = self.life.outbox.get_mut(&job.id) {
                    held.attempts = attempts;
                    *at = due;
                }
                writer.send(Write::Task(TaskWrite::OutboxRetry {
                    id: job.id.clone(),
                    attempts,
                    due_ms: due,
                }));
                return;
            }
            RelayOutcome::Delivered => RelayStatus::Delivered,
            RelayOutcome::GaveUp => RelayStatus::Failed,
        };
        self.life.outbox.remove(&job.id);
        writer.send(Write::Task(TaskWrite::OutboxDone { id: job.id.clone() }));
        if let Some(l) = self.life.live.get_mut(&job.task_id) {
            l.task.relay = Some(status);
        }
        writer.send(Write::Task(TaskWrite::Relay {
            task_id: job.task_id.clone(),
            status,
        }));
    }

    fn reservations(&self) -> Vec<ReservationView> {
        let mut all: Vec<ReservationView> = self
            .outstanding
            .iter()
            .map(|(id, o)| o.view(*id, "open"))
            .chain(self.life.unknown.values().map(|u| u.view.clone()))
            .collect();
        all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        all
    }

    fn resolve(&mut self, id: &str, how: Resolution, writer: &Writer) -> Option<ReservationView> {
        let u = self.life.unknown.remove(id)?;
        // Its running-task slot, if it holds one (member: its grant id), is freed.
        self.life.running.free(id);
        let estimate = u.view.estimate;
        let (status, credits, amount) = match how {
            Resolution::Settle(n) => ("settled", Some(n), n),
            Resolution::Release => ("released", None, 0),
        };
        let seq = writer.send(Write::Settle {
            row: u.row,
            status,
            credits,
            task: None,
        });
        self.shift(&u.keys, i128::from(amount) - i128::from(estimate), seq);
        Some(u.view)
    }
}

impl Lifecycle for MemoryStore {
    fn observe<'a>(&'a self, seen: &'a Observation) -> Answer<'a, Option<Transition>> {
        let t = self.shared.lock().observe(seen, &self.shared.writer);
        ready(Ok(t)).boxed()
    }

    fn tasks<'a>(&'a self, query: &'a TaskQuery) -> Answer<'a, TaskPage> {
        let query = query.clone();
        self.report(move |ledger| {
            let (tasks, next) = page_of(ledger.tasks(&query)?, query.limit, |t| {
                (t.created_at.clone(), t.task_id.clone())
            });
            Ok(TaskPage { tasks, next })
        })
    }

    fn claim_nonce<'a>(&'a self, nonce: &'a str, ttl_secs: u64) -> Answer<'a, bool> {
        ready(Ok(self.shared.lock().claim_nonce(nonce, ttl_secs))).boxed()
    }

    fn nudge<'a>(&'a self, task_id: &'a str, after_ms: u64) -> Answer<'a, ()> {
        let mut inner = self.shared.lock();
        let (now, _) = inner.life.now();
        if let Some(l) = inner.life.live.get_mut(task_id) {
            let at = now.saturating_add(i64::try_from(after_ms).unwrap_or(i64::MAX));
            let due = l.due_at.map_or(at, |d| d.min(at));
            l.due_at = Some(due);
            // Written too: a restart right after the callback was answered still asks.
            self.shared.writer.send(Write::Task(TaskWrite::Due {
                task_id: task_id.to_owned(),
                due_ms: Some(due),
            }));
        }
        ready(Ok(())).boxed()
    }

    fn claim_due<'a>(&'a self, claim: &'a DueClaim) -> Answer<'a, Vec<String>> {
        ready(Ok(self.shared.lock().claim_due(claim, &self.shared.writer))).boxed()
    }

    fn claim_relays(&self, limit: usize, lease_ms: u64) -> Answer<'_, Vec<RelayJob>> {
        ready(Ok(self.shared.lock().claim_relays(limit, lease_ms))).boxed()
    }

    fn relay_done<'a>(&'a self, job: &'a RelayJob, outcome: RelayOutcome) -> Answer<'a, ()> {
        self.shared
            .lock()
            .relay_done(job, outcome, &self.shared.writer);
        ready(Ok(())).boxed()
    }

    fn reservations(&self) -> Answer<'_, Vec<ReservationView>> {
        ready(Ok(self.shared.lock().reservations())).boxed()
    }

    fn resolve<'a>(&'a self, id: &'a str, how: Resolution) -> Answer<'a, Option<ReservationView>> {
        let r = self.shared.lock().resolve(id, how, &self.shared.writer);
        ready(Ok(r)).boxed()
    }

    fn charged_since(&self, since: jiff::Timestamp) -> Answer<'_, u64> {
        let since = stamp(since);
        self.report(move |ledger| Ok(ledger.charged_since(&since)?))
    }

    fn running(&self) -> Answer<'_, RunningNow> {
        let mut inner = self.shared.lock();
        let (now, _) = inner.life.now();
        inner.life.running.prune(now);
        ready(Ok(inner.life.running.now())).boxed()
    }
}
