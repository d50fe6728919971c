//! The `memory` backend (one process): rate limits, in-flight slots and budget counters in memory, under one
//! lock that makes every admission decision atomic across all its buckets; every reservation, settlement and
//! rejection persisted to the SQLite ledger by the batching writer thread.
//!
//! No request waits on SQLite:
//! - Writes are queued to the writer (`writer.rs`); the lock is held only for in-memory work and a queue push.
//! - A budget not yet counted in memory (a user's first request of the day, or the first after a restart) is
//!   loaded by the point reader's thread, without the lock: the read returns the sum with the sequence number of
//!   the last write it includes, and the changes queued while it ran are added from a log kept under the lock.
//! - An unfinished task is answered from memory (before it is written); any other from the ledger, once the
//!   writes queued before the question are in it.
//! - Reports run on their own reader thread, so a long scan never stands in front of a request's read.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::{FutureExt, ready};
use tokio::sync::oneshot;

use super::ledger::{Ledger, Write};
use super::ledger_tasks::TaskWrite;
use super::rate::{Checked, RateLimits};
use super::reader::Reader;
use super::writer::Writer;

#[path = "memory_idempotency.rs"]
mod idempotency;
#[path = "memory_lifecycle.rs"]
mod lifecycle;
#[path = "memory_running.rs"]
mod running;
use super::*;
use crate::clock::SharedClock;

/// Keys here are short strings hashed on every admission: foldhash (already built for actix-http, seeded per
/// process) instead of SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// How long loading a budget may wait for the writer to write what was queued before it.
const SEED_WAIT: Duration = Duration::from_secs(10);
/// How long a report may wait for the writer to write what was queued before it.
const REPORT_WAIT: Duration = Duration::from_secs(10);

pub struct MemoryStore {
    shared: Arc<Shared>,
    /// Short indexed reads on the request path: budget loads, task ownership, the health probe.
    point: Reader,
    /// Usage reports (a scan of a large ledger may take seconds).
    reports: Reader,
}

/// What the reader threads reach too.
struct Shared {
    inner: Mutex<Inner>,
    writer: Writer,
    /// `Idempotency-Key` records (`memory_idempotency.rs`), under a lock of their own.
    idem: Mutex<idempotency::Keys>,
}

struct Inner {
    /// The ledger row of the next reservation.
    next_row: i64,
    /// Credits used per budget (settled + reserved + unknown), exact for every budget present.
    budgets: HashMap<BudgetKey, u64>,
    /// Budgets being loaded from the ledger.
    seeding: HashMap<BudgetKey, Seed>,
    /// In-flight requests per scope and subject (looked up by `&str`, without building a key).
    slots: HashMap<Scope, HashMap<String, u32>>,
    rates: RateLimits,
    outstanding: HashMap<GrantId, Outstanding>,
    /// The latest day seen; counters of earlier periods are dropped when a later one starts.
    current_day: String,
    /// Spooled admissions recorded by this process (each at most once).
    recorded: std::collections::HashSet<GrantId>,
    /// Tasks followed to their end (`memory_lifecycle.rs`).
    life: lifecycle::Life,
}

/// A budget being loaded.
struct Seed {
    /// Changes to the budget queued since the load started, with their write sequence numbers.
    changes: Vec<(u64, i128)>,
    /// The requests waiting for it.
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

/// A grant not finished yet.
struct Outstanding {
    row: i64,
    estimate: u64,
    /// Every budget its reservation counts against.
    keys: Vec<BudgetKey>,
    /// The slots it holds.
    slots: Vec<(Scope, String)>,
    record: RequestRecord,
    off_peak: bool,
    /// When it was admitted (RFC 3339).
    at: String,
    /// It holds a running-task slot (member: its grant id), kept this long (ms) after each news of its task.
    slot_ttl: Option<u64>,
}

fn shifted(v: u64, delta: i128) -> u64 {
    u64::try_from((i128::from(v) + delta).max(0)).unwrap_or(u64::MAX)
}

impl MemoryStore {
    pub fn open(
        ledger_path: &Path,
        clock: SharedClock,
        metrics: crate::metrics::LedgerMetrics,
    ) -> anyhow::Result<Self> {
        let context = |e: anyhow::Error| {
            anyhow::anyhow!("state.ledger_path = {}: {e:#}", ledger_path.display())
        };
        let writer = Writer::start(ledger_path, metrics).map_err(context)?;
        let (next_row, life) = Ledger::open_read_only(ledger_path)
            .and_then(|l| Ok((l.max_id()? + 1, lifecycle::Life::load(&l, clock.clone())?)))
            .map_err(context)?;
        let idem = Ledger::open_read_only(ledger_path)
            .and_then(|l| idempotency::Keys::load(&l, clock.clone()))
            .map_err(context)?;
        Ok(Self {
            point: Reader::start(ledger_path, "ledger-reads").map_err(context)?,
            reports: Reader::start(ledger_path, "ledger-reports").map_err(context)?,
            shared: Arc::new(Shared {
                writer,
                idem: Mutex::new(idem),
                inner: Mutex::new(Inner {
                    next_row,
                    budgets: HashMap::default(),
                    seeding: HashMap::default(),
                    slots: HashMap::default(),
                    rates: RateLimits::new(clock),
                    outstanding: HashMap::default(),
                    current_day: String::new(),
                    recorded: Default::default(),
                    life,
                }),
            }),
        })
    }

    /// Runs `f` under the lock once every budget in `keys` is counted in memory. Missing ones are loaded first,
    /// on the point reader's thread, while this future waits without the lock.
    async fn with_budgets<T>(
        &self,
        keys: &[&BudgetKey],
        day: Option<&str>,
        f: impl FnOnce(&mut Inner) -> T,
    ) -> Result<T, StoreError> {
        let mut inner = loop {
            let waits = {
                let mut inner = self.shared.lock();
                if let Some(day) = day {
                    inner.roll_periods(day);
                }
                let missing: Vec<&BudgetKey> = keys
                    .iter()
                    .copied()
                    .filter(|k| !inner.budgets.contains_key(*k))
                    .collect();
                if missing.is_empty() {
                    break inner;
                }
                missing
                    .into_iter()
                    .map(|k| self.seed(&mut inner, k))
                    .collect::<Result<Vec<_>, _>>()?
            };
            for wait in waits {
                // An abandoned load (the store is stopping) is looked at again.
                if let Ok(loaded) = wait.await {
                    loaded?;
                }
            }
        };
        Ok(f(&mut inner))
    }

    /// A report read from the ledger on the reports thread, once every write queued before the call is in it.
    fn report<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Ledger) -> Result<T, StoreError> + Send + 'static,
    ) -> Answer<'static, T> {
        let through = self.shared.writer.last_sent();
        let shared = self.shared.clone();
        self.reports
            .read(move |ledger| {
                shared.writer.wait_processed(through, REPORT_WAIT)?;
                read(ledger)
            })
            .boxed()
    }

    /// Starts loading `key` (or joins the load under way); the receiver answers when it is counted in memory.
    fn seed(
        &self,
        inner: &mut Inner,
        key: &BudgetKey,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        if let Some(seed) = inner.seeding.get_mut(key) {
            seed.waiters.push(tx);
            return Ok(rx);
        }
        // Every change to a budget is queued under the lock: the ones queued up to now will be in the ledger
        // when the load reads it, the later ones go to the seed's log.
        let since = self.shared.writer.last_sent();
        inner.seeding.insert(
            key.clone(),
            Seed {
                changes: Vec::new(),
                waiters: vec![tx],
            },
        );
        let shared = self.shared.clone();
        let owned = key.clone();
        if let Err(e) = self
            .point
            .submit(move |ledger| shared.complete_seed(ledger, owned, since))
        {
            inner.seeding.remove(key);
            return Err(e);
        }
        Ok(rx)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// On the point reader's thread: waits until the writes queued before the load are processed, reads the
    /// budget with the sequence number of the last write the sum includes, and counts it in memory with the
    /// changes queued after that write.
    fn complete_seed(&self, ledger: &Ledger, key: BudgetKey, since: u64) {
        let read = self
            .writer
            .wait_processed(since, SEED_WAIT)
            .and_then(|()| Ok(ledger.used_at(&key)?));
        let mut inner = self.lock();
        let Some(seed) = inner.seeding.remove(&key) else {
            return;
        };
        let result = read.map(|(applied, used)| {
            let later: i128 = seed
                .changes
                .iter()
                .filter(|(seq, _)| *seq > applied)
                .map(|(_, delta)| delta)
                .sum();
            inner.budgets.insert(key, shifted(used, later));
        });
        for waiter in seed.waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

impl Inner {
    fn roll_periods(&mut self, day: &str) {
        // Only forward: a request still dated yesterday (it read the clock just before midnight) must not drop
        // today's counters.
        if self.current_day.as_str() < day {
            // Keys carry their date: an old day's counter is never read again, so it can go.
            let month = day.get(..7).unwrap_or("");
            self.budgets
                .retain(|k, _| k.period_key == day || k.period_key == month);
            self.current_day = day.to_owned();
        }
    }

    /// A budget counted in memory (every caller has loaded it first).
    fn used(&self, key: &BudgetKey) -> u64 {
        self.budgets.get(key).copied().unwrap_or(0)
    }

    /// Applies `delta` to every budget of `keys` counted in memory, and logs it for those being loaded.
    fn shift(&mut self, keys: &[BudgetKey], delta: i128, seq: u64) {
        for k in keys {
            if let Some(v) = self.budgets.get_mut(k) {
                *v = shifted(*v, delta);
            } else if let Some(seed) = self.seeding.get_mut(k) {
                seed.changes.push((seq, delta));
            }
        }
    }

    fn decide(
        &mut self,
        req: &AdmissionRequest,
        mode: Mode,
        grant: GrantId,
        writer: &Writer,
    ) -> Decision {
        let (run, immediate_used, immediate_budget) = match &req.plan {
            Plan::Fixed(run) => (Some(*run), None, None),
            Plan::Fallback(f) => {
                let used = self.used(&f.immediate_budget.key);
                let covered = used.saturating_add(f.immediate_estimate) <= f.immediate_budget.limit;
                let run = if covered { f.if_covered } else { f.if_short };
                let counts = run.filter(|r| !r.off_peak).map(|_| &f.immediate_budget);
                (run, Some(used), counts)
            }
        };
        let outcome = match run {
            None => Err(Refusal::NoRun),
            Some(run) => self.check_and_take(req, run, immediate_budget, (mode, grant), writer),
        };
        Decision {
            run,
            immediate_used,
            outcome,
        }
    }

    fn check_and_take(
        &mut self,
        req: &AdmissionRequest,
        run: Run,
        immediate_budget: Option<&BudgetSpec>,
        (mode, grant): (Mode, GrantId),
        writer: &Writer,
    ) -> Result<Granted, Refusal> {
        // A shadow limit that would refuse is reported, and (as a refusal would) takes nothing.
        let mut shadowed = Vec::new();
        let mut skip_slots = Vec::new();
        for (i, s) in req.slots.iter().enumerate() {
            let held = self
                .slots
                .get(&s.scope)
                .and_then(|m| m.get(s.subject.as_str()))
                .copied()
                .unwrap_or(0);
            if held >= s.max {
                let refusal = Refusal::Concurrency {
                    scope: s.scope,
                    max: s.max,
                    source: s.source.clone(),
                };
                if !req.shadow.of(s.scope) {
                    return Err(refusal);
                }
                shadowed.push(refusal);
                skip_slots.push(i);
            }
        }

        if req.running.holds(run) {
            let (now, _) = self.life.now();
            self.life.running.check(
                &req.running,
                req.shadow,
                now,
                mode == Mode::Take,
                &mut shadowed,
            )?;
        }

        let mut remaining: Option<u64> = None;
        let mut team_remaining: Option<u64> = None;
        for b in req.budgets.iter().chain(immediate_budget) {
            let used = self.used(&b.key);
            // The fallback's immediate budget chose the run: it is never a shadow.
            let is_immediate = immediate_budget.is_some_and(|i| std::ptr::eq(i, b));
            let shadow = !is_immediate && req.shadow.of(b.key.scope);
            if used.saturating_add(run.estimate) > b.limit {
                let refusal = Refusal::Budget {
                    key: b.key.clone(),
                    limit: b.limit,
                    used,
                    retry_after_secs: b.secs_to_reset,
                    source: b.source.clone(),
                };
                if !shadow {
                    return Err(refusal);
                }
                shadowed.push(refusal);
            }
            // A shadow budget is not what the caller may spend: it is left out of the remaining credits.
            if shadow {
                continue;
            }
            let left = b.limit - used - run.estimate;
            remaining = Some(remaining.map_or(left, |r| r.min(left)));
            if b.key.scope == Scope::Team {
                team_remaining = Some(team_remaining.map_or(left, |r| r.min(left)));
            }
        }

        let mut undo = Vec::new();
        let mut tightest: Option<RateStatus> = None;
        for r in &req.rates {
            let key = format!("{}:{}", r.scope.as_str(), r.subject);
            match self.rates.check(key, r.per_minute, r.burst) {
                Checked::Allowed { remaining, undo: u } => {
                    undo.push(u);
                    if tightest.as_ref().is_none_or(|t| remaining < t.remaining) {
                        tightest = Some(RateStatus {
                            scope: r.scope,
                            per_minute: r.per_minute.get(),
                            burst: r.burst.get(),
                            remaining,
                            reset_secs: if remaining > 0 {
                                0
                            } else {
                                60u64.div_ceil(u64::from(r.per_minute.get()))
                            },
                        });
                    }
                }
                Checked::Limited {
                    retry_after_secs,
                    exhausted,
                } => {
                    let refusal = Refusal::Rate {
                        scope: r.scope,
                        per_minute: r.per_minute.get(),
                        burst: r.burst.get(),
                        exhausted,
                        retry_after_secs: retry_after_secs.max(1),
                        source: r.source.clone(),
                    };
                    if req.shadow.of(r.scope) {
                        shadowed.push(refusal);
                        continue;
                    }
                    undo.into_iter().rev().for_each(|u| u.undo());
                    return Err(refusal);
                }
            }
        }

        let granted = match mode {
            Mode::DryRun => {
                undo.into_iter().rev().for_each(|u| u.undo());
                None
            }
            Mode::Take => {
                drop(undo);
                Some(self.take(req, run, grant, &skip_slots, writer))
            }
        };
        Ok(Granted {
            grant: granted,
            remaining_credits: remaining,
            team_remaining_credits: team_remaining,
            rate: tightest,
            shadowed,
        })
    }

    /// Takes the slots (but those `skip`ped: a shadow limit that would refuse) and reserves the estimate (the rate
    /// tokens are already taken).
    fn take(
        &mut self,
        req: &AdmissionRequest,
        run: Run,
        id: GrantId,
        skip: &[usize],
        writer: &Writer,
    ) -> Grant {
        let (now, at) = self.life.now();
        let slot_ttl = req.running.holds(run).then_some(req.running.ttl_ms);
        if let Some(ttl) = slot_ttl {
            let r = &req.record;
            let until = lifecycle::after(now, ttl);
            self.life
                .running
                .take(id.to_string(), &r.user, &r.team, until);
        }
        let row = self.next_row;
        self.next_row += 1;
        let seq = writer.send(Write::Reserve {
            row,
            grant: id,
            record: req.record.clone(),
            off_peak: run.off_peak,
            estimate: run.estimate,
        });
        let mut slots = Vec::with_capacity(req.slots.len());
        for (_, s) in req
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
        {
            let held = self.slots.entry(s.scope).or_default();
            match held.get_mut(s.subject.as_str()) {
                Some(n) => *n += 1,
                None => {
                    held.insert(s.subject.clone(), 1);
                }
            }
            slots.push((s.scope, s.subject.clone()));
        }
        let keys = BudgetKey::counting(&req.record, run.off_peak);
        self.shift(&keys, i128::from(run.estimate), seq);
        self.outstanding.insert(
            id,
            Outstanding {
                row,
                estimate: run.estimate,
                keys,
                slots,
                record: req.record.clone(),
                off_peak: run.off_peak,
                at,
                slot_ttl,
            },
        );
        Grant::new(id)
    }

    fn finish(&mut self, id: GrantId, settlement: Settlement, writer: &Writer) {
        let Some(out) = self.outstanding.remove(&id) else {
            return;
        };
        for (scope, subject) in &out.slots {
            let Some(held) = self.slots.get_mut(scope) else {
                continue;
            };
            if let Some(n) = held.get_mut(subject.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(subject.as_str());
                }
            }
        }
        let (status, amount, credits) = match &settlement {
            Settlement::Charged { credits, .. } => ("settled", *credits, Some(*credits)),
            Settlement::Released => ("released", 0, None),
            Settlement::Unknown => ("unknown", out.estimate, None),
        };
        let task = match settlement {
            Settlement::Charged {
                task: Some(created),
                ..
            } => Some(self.life.created(&out, created, amount)),
            _ => None,
        };
        let seq = writer.send(Write::Settle {
            row: out.row,
            status,
            credits,
            task: task.clone(),
        });
        self.shift(
            &out.keys,
            i128::from(amount) - i128::from(out.estimate),
            seq,
        );
        let mut slot_kept = false;
        if status == "unknown" {
            self.life.unknown_from(id, &out);
            slot_kept = true;
        }
        if let Some(task) = task
            && self.life.follow(id, &task, &out)
        {
            writer.send(Write::Task(TaskWrite::Holds {
                task_id: task.task_id,
                slot_ttl_ms: out.slot_ttl,
            }));
            slot_kept = true;
        }
        if !slot_kept {
            self.life.running.free(&id.to_string());
        }
    }
}

impl Admissions for MemoryStore {
    fn admit_as<'a>(
        &'a self,
        request: &'a AdmissionRequest,
        mode: Mode,
        grant: GrantId,
    ) -> Answer<'a, Decision> {
        async move {
            let writer = &self.shared.writer;
            if mode == Mode::Take {
                writer.health().map_err(StoreError::Unavailable)?;
            }
            let keys: Vec<&BudgetKey> = request.budget_keys().collect();
            self.with_budgets(&keys, Some(&request.record.day), |inner| {
                inner.decide(request, mode, grant, writer)
            })
            .await
        }
        .boxed()
    }

    /// Admits the request with no bucket to check (its estimate is reserved on every budget it counts against)
    /// and finishes it at once.
    fn record_unaccounted<'a>(&'a self, entry: &'a Unaccounted) -> Answer<'a, ()> {
        async move {
            let admitted_here = {
                let mut inner = self.shared.lock();
                if !inner.recorded.insert(entry.id) {
                    return Ok(());
                }
                inner.outstanding.contains_key(&entry.id)
            };
            // Admitted here after all: settle that grant instead of counting the request twice.
            if admitted_here {
                return self
                    .finish(Grant::new(entry.id), entry.settlement.clone())
                    .await;
            }
            let request = AdmissionRequest {
                record: entry.record.clone(),
                plan: Plan::Fixed(entry.run),
                rates: Vec::new(),
                slots: Vec::new(),
                running: RunningSpec::none(),
                shadow: Shadow::default(),
                budgets: Vec::new(),
            };
            let decided = self.admit_as(&request, Mode::Take, entry.id).await;
            let grant = match decided {
                Ok(Decision {
                    outcome:
                        Ok(Granted {
                            grant: Some(grant), ..
                        }),
                    ..
                }) => grant,
                other => {
                    self.shared.lock().recorded.remove(&entry.id);
                    return match other {
                        Err(e) => Err(e),
                        Ok(_) => Err(StoreError::Unavailable(
                            "a spooled admission was not recorded".into(),
                        )),
                    };
                }
            };
            self.finish(grant, entry.settlement.clone()).await
        }
        .boxed()
    }

    /// A grant this store did not make (an unaccounted one among them) is in no table: nothing happens.
    fn finish(&self, grant: Grant, settlement: Settlement) -> Answer<'_, ()> {
        self.shared
            .lock()
            .finish(grant.id(), settlement, &self.shared.writer);
        ready(Ok(())).boxed()
    }
}

impl Records for MemoryStore {
    fn record_rejection(&self, rejection: RejectionRecord) -> Answer<'_, ()> {
        self.shared.writer.send(Write::Rejection(rejection));
        ready(Ok(())).boxed()
    }

    /// An unfinished task is answered from memory at once (even before it is written); any other from the ledger
    /// file once the writes queued before the call are in it (an ended task's refund, a relay's outcome).
    fn task<'a>(&'a self, task_id: &'a str) -> Answer<'a, Option<TaskRecord>> {
        if let Some(live) = self.shared.lock().life.live(task_id) {
            return ready(Ok(Some(live))).boxed();
        }
        let through = self.shared.writer.last_sent();
        let shared = self.shared.clone();
        let id = task_id.to_owned();
        let written = self.point.read(move |ledger| {
            shared.writer.wait_processed(through, SEED_WAIT)?;
            Ok(ledger.task(&id)?)
        });
        written.boxed()
    }
}

impl Audit for MemoryStore {
    fn audit(&self, entry: AuditEntry) -> Answer<'_, ()> {
        self.shared.writer.send(Write::Audit(entry));
        ready(Ok(())).boxed()
    }

    fn audit_entries<'a>(&'a self, query: &'a AuditQuery) -> Answer<'a, AuditPage> {
        let query = query.clone();
        self.report(move |ledger| Ok(ledger.audit_entries(&query)?))
    }
}

impl Reports for MemoryStore {
    fn used<'a>(&'a self, keys: &'a [BudgetKey]) -> Answer<'a, Vec<u64>> {
        async move {
            let keys: Vec<&BudgetKey> = keys.iter().collect();
            self.with_budgets(&keys, None, |inner| {
                keys.iter().map(|k| inner.used(k)).collect()
            })
            .await
        }
        .boxed()
    }

    fn usage<'a>(&'a self, filter: &'a UsageFilter) -> Answer<'a, Vec<UsageRow>> {
        let filter = filter.clone();
        self.report(move |ledger| Ok(ledger.usage(&filter)?))
    }
}

impl Health for MemoryStore {
    fn health(&self) -> Answer<'_, ()> {
        let writer = &self.shared.writer;
        match writer
            .check_file()
            .and_then(|()| writer.health())
            .map_err(StoreError::Unavailable)
        {
            Err(e) => ready(Err(e)).boxed(),
            Ok(()) => self.point.read(|ledger| Ok(ledger.health()?)).boxed(),
        }
    }

    /// One process: the only replica is this one.
    fn heartbeat<'a>(&'a self, replica: &'a str, version: &'a str) -> Answer<'a, Replicas> {
        ready(Ok(Replicas {
            versions: [(replica.to_owned(), version.to_owned())].into(),
            data_lost: false,
            backend_now: None,
        }))
        .boxed()
    }

    fn flush(&self) -> Answer<'_, ()> {
        let shared = self.shared.clone();
        self.reports.read(move |_| shared.writer.flush()).boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use futures_util::future::LocalBoxFuture;

    use super::*;
    use crate::state::conformance::{Backend, Opened, run_conformance};

    struct Memory;

    impl Backend for Memory {
        fn open(&self, clock: SharedClock) -> LocalBoxFuture<'_, Opened> {
            let dir = tempfile::tempdir().unwrap();
            let store = MemoryStore::open(
                &dir.path().join("ledger.sqlite3"),
                clock,
                Default::default(),
            )
            .unwrap();
            ready(Opened {
                store: Arc::new(store),
                keep: Box::new(dir),
            })
            .boxed_local()
        }
    }

    run_conformance!(Memory);
    crate::state::conformance_idempotency::run_idempotency_conformance!(Memory);

    mod fair_share {
        use proptest::prelude::*;

        use super::Memory;
        use crate::state::conformance::{Step, fair_share_invariants_hold};

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                5 => (0u8..4).prop_map(Step::Ask),
                4 => any::<u8>().prop_map(Step::End),
                1 => (0u16..120).prop_map(Step::Wait),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

            /// Random arrivals, endings and waits on a manual clock: never more than the global cap runs, a team
            /// under its guarantee is never refused while a slot is free, and nobody borrows a slot owed to an
            /// active team under its guarantee.
            #[test]
            fn fair_share_invariants_hold_for_any_arrivals_and_endings(
                steps in prop::collection::vec(step(), 1..160)
            ) {
                actix_web::rt::System::new().block_on(fair_share_invariants_hold(&Memory, &steps));
            }
        }
    }

    fn clock() -> SharedClock {
        crate::clock::ManualClock::new(jiff::Timestamp::from_second(1_795_600_800).unwrap())
    }

    fn record(user: &str, team: &str) -> RequestRecord {
        RequestRecord {
            request_id: format!("req-{user}"),
            user: user.into(),
            team: team.into(),
            day: "2026-11-25".into(),
            month: "2026-11".into(),
            model: "viduq2".into(),
        }
    }

    fn team_month() -> BudgetKey {
        BudgetKey {
            scope: Scope::Team,
            subject: "t".into(),
            period: Period::Month,
            period_key: "2026-11".into(),
        }
    }

    /// A request of `user` (team `t`) costing `estimate`, counted against `budgets` (limit: plenty).
    fn request(user: &str, estimate: u64, budgets: &[BudgetKey]) -> AdmissionRequest {
        AdmissionRequest {
            record: record(user, "t"),
            plan: Plan::Fixed(Run {
                off_peak: false,
                estimate,
            }),
            rates: Vec::new(),
            slots: Vec::new(),
            running: RunningSpec::none(),
            shadow: Shadow::default(),
            budgets: budgets
                .iter()
                .map(|key| BudgetSpec {
                    key: key.clone(),
                    limit: u64::MAX / 2,
                    secs_to_reset: 60,
                    source: "test".into(),
                })
                .collect(),
        }
    }

    fn charged(credits: u64, task: &str) -> Settlement {
        Settlement::charged(credits, Some(task))
    }

    async fn take(store: &MemoryStore, req: &AdmissionRequest) -> Grant {
        match store.admit(req, Mode::Take).await.unwrap().outcome {
            Ok(g) => g.grant.unwrap(),
            Err(r) => panic!("{r:?}"),
        }
    }

    /// A running task keeps its running-task slot across a restart, and frees it when it ends.
    #[actix_web::test]
    async fn running_task_slots_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        let mut capped = request("alice", 10, &[]);
        capped.running = RunningSpec {
            ttl_ms: 60_000,
            offpeak_holds: false,
            limits: vec![SlotSpec {
                scope: Scope::User,
                subject: "alice".into(),
                max: 1,
                source: "policy.defaults.max_running_tasks".into(),
            }],
            share: None,
        };
        {
            let store = MemoryStore::open(&path, clock(), Default::default()).unwrap();
            let g = take(&store, &capped).await;
            store.finish(g, charged(10, "slot-1")).await.unwrap();
            store.flush().await.unwrap();
        }
        let store = MemoryStore::open(&path, clock(), Default::default()).unwrap();
        assert_eq!(store.running().await.unwrap().total, 1);
        let refused = store.admit(&capped, Mode::Take).await.unwrap().outcome;
        assert!(
            matches!(refused, Err(Refusal::Running { running: 1, .. })),
            "{refused:?}"
        );
        let seen = Observation {
            task_id: "slot-1".into(),
            state: TaskState::Success,
            credits: Some(10),
            body: "{}".into(),
        };
        store.observe(&seen).await.unwrap();
        let g = take(&store, &capped).await;
        store.finish(g, charged(10, "slot-2")).await.unwrap();
        store.flush().await.unwrap();
        drop(store);
        // Restarted after the slot's time ran out with no news: it is not brought back.
        let later = crate::clock::ManualClock::new(
            jiff::Timestamp::from_second(1_795_600_800 + 61).unwrap(),
        );
        let store = MemoryStore::open(&path, later, Default::default()).unwrap();
        assert_eq!(store.running().await.unwrap().total, 0);
        take(&store, &capped).await;
    }

    /// Budgets come back from the ledger after a restart, each reservation counted as it ended.
    /// What a task still owes survives a restart: an unfinished task (its refund goes to its creation period), a
    /// relay not yet delivered, and a reservation whose outcome is unknown.
    #[actix_web::test]
    async fn unfinished_tasks_pending_relays_and_unknown_reservations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        let key = team_month();
        let lost = {
            let store = MemoryStore::open(&path, clock(), Default::default()).unwrap();
            let g = take(&store, &request("alice", 50, &[])).await;
            let created = Created {
                task_id: "t-9".into(),
                state: TaskState::Created,
                callback_url: Some("https://hooks.example/cb".into()),
            };
            store
                .finish(
                    g,
                    Settlement::Charged {
                        credits: 40,
                        task: Some(created),
                    },
                )
                .await
                .unwrap();
            let seen = |state| Observation {
                task_id: "t-9".into(),
                state,
                credits: None,
                body: format!(r#"{{"state":"{state}"}}"#),
            };
            assert!(
                store
                    .observe(&seen(TaskState::Processing))
                    .await
                    .unwrap()
                    .is_some()
            );
            // A callback was answered, its confirmation not made yet.
            store.nudge("t-9", 0).await.unwrap();
            let lost = take(&store, &request("bob", 7, &[])).await;
            store
                .finish(lost.clone(), Settlement::Unknown)
                .await
                .unwrap();
            store.flush().await.unwrap();
            lost
        };
        let store = MemoryStore::open(&path, clock(), Default::default()).unwrap();
        // The callback's due mark survived: the reconciler asks even with polling off.
        let claim = DueClaim {
            holder: "r".into(),
            lease_ms: 1_000,
            quiet_ms: u64::MAX,
            per_minute: 10,
        };
        assert_eq!(store.claim_due(&claim).await.unwrap(), ["t-9"]);
        assert_eq!(store.claim_due(&claim).await.unwrap(), Vec::<String>::new());
        let jobs = store.claim_relays(10, 1_000).await.unwrap();
        assert_eq!(jobs.len(), 1, "the relay of `processing` is still owed");
        assert!(jobs[0].body.contains("processing"));
        let listed = store.reservations().await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|r| (r.id.clone(), r.state))
                .collect::<Vec<_>>(),
            [(lost.id().to_string(), "unknown")]
        );
        assert_eq!(
            store.used(std::slice::from_ref(&key)).await.unwrap(),
            vec![47]
        );
        let failed = Observation {
            task_id: "t-9".into(),
            state: TaskState::Failed,
            credits: Some(0),
            body: "{}".into(),
        };
        let t = store.observe(&failed).await.unwrap().unwrap();
        assert_eq!((t.from, t.refunded), (TaskState::Processing, 40));
        assert_eq!(
            store.used(std::slice::from_ref(&key)).await.unwrap(),
            vec![7]
        );
        assert!(
            store
                .resolve(&lost.id().to_string(), Resolution::Release)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store.used(std::slice::from_ref(&key)).await.unwrap(),
            vec![0]
        );
    }

    #[actix_web::test]
    async fn budgets_are_loaded_from_the_ledger_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        let key = team_month();
        {
            let store = MemoryStore::open(&path, clock(), Default::default()).unwrap();
            let req = request("alice", 50, &[]);
            let g = take(&store, &req).await;
            store.finish(g, charged(40, "t-1")).await.unwrap();
            take(&store, &req).await; // open at "shutdown": unknown after the restart
            let g = take(&store, &request("bob", 7, &[])).await;
            store.finish(g, Settlement::Released).await.unwrap();
            store.flush().await.unwrap();
        }
        let store = MemoryStore::open(&path, clock(), Default::default()).unwrap();
        assert_eq!(
            store.used(std::slice::from_ref(&key)).await.unwrap(),
            vec![90]
        );
        // Row ids go on after the ones in the file.
        let g = take(&store, &request("carol", 5, std::slice::from_ref(&key))).await;
        store.finish(g, Settlement::Unknown).await.unwrap();
        store.flush().await.unwrap();
        assert_eq!(
            store.used(std::slice::from_ref(&key)).await.unwrap(),
            vec![95]
        );
        let rows = store.usage(&UsageFilter::default()).await.unwrap();
        assert_eq!(rows[0].admitted, 4);
        assert_eq!(
            store.task("t-1").await.unwrap().map(|t| t.user),
            Some("alice".into())
        );
    }

    /// A budget loaded while other requests keep spending against it (without naming it) ends up exact: what
    /// the ledger held when it was read, plus what was queued after that.
    #[actix_web::test]
    async fn a_budget_loaded_while_spending_goes_on_is_exact() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ledger.sqlite3");
            let store = Arc::new(MemoryStore::open(&path, clock(), Default::default()).unwrap());
            let key = team_month();
            // Spending by the team's members, naming no team budget; some settle, some are released.
            let spender = {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..300u64 {
                        let req = request(&format!("u{}", i % 7), 10 + i % 5, &[]);
                        let g = futures_util::FutureExt::now_or_never(take(&store, &req)).unwrap();
                        let s = match i % 3 {
                            0 => Settlement::Released,
                            1 => Settlement::charged(3, None),
                            _ => Settlement::Unknown,
                        };
                        futures_util::FutureExt::now_or_never(store.finish(g, s))
                            .unwrap()
                            .unwrap();
                    }
                })
            };
            // Meanwhile the team budget is loaded (and reloaded after each day roll below).
            std::thread::sleep(Duration::from_micros(200 * round));
            let loaded = store.used(std::slice::from_ref(&key)).await.unwrap()[0];
            spender.join().unwrap();
            let in_memory = store.used(std::slice::from_ref(&key)).await.unwrap()[0];
            store.flush().await.unwrap();
            let in_file = Ledger::open_read_only(&path).unwrap().used(&key).unwrap();
            assert_eq!(in_memory, in_file, "round {round} (loaded at {loaded})");
        }
    }

    /// Ownership settled a moment ago is answered before the writer has written it, without waiting for the
    /// writer: here another connection holds the ledger's write lock, so nothing can be written meanwhile.
    #[actix_web::test]
    async fn task_ownership_is_answered_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let store = MemoryStore::open(&path, clock(), Default::default()).unwrap();
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let g = take(&store, &request("alice", 10, &[])).await;
        store.finish(g, charged(10, "fresh")).await.unwrap();
        let asked = Instant::now();
        let owner = store.task("fresh").await.unwrap().map(|t| t.user);
        let took = asked.elapsed();
        assert_eq!(owner, Some("alice".into()));
        assert!(
            store.shared.writer.processed() < store.shared.writer.last_sent(),
            "the write was still pending"
        );
        assert!(took < Duration::from_secs(1), "waited {took:?}");
        blocker.execute_batch("ROLLBACK").unwrap();
        store.flush().await.unwrap();
        assert_eq!(
            store.task("fresh").await.unwrap().map(|t| t.user),
            Some("alice".into())
        );
    }

    /// A fail_open-style outage: while the ledger cannot be written, admission says so (and takes nothing);
    /// a dry run still decides.
    #[actix_web::test]
    async fn a_lost_ledger_makes_admission_unavailable_but_not_the_dry_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let store = MemoryStore::open(&path, clock(), Default::default()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = store.health().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(why) if why.contains("deleted")),
            "{err}"
        );
        let req = request("alice", 10, &[]);
        assert!(matches!(
            store.admit(&req, Mode::Take).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(
            store
                .admit(&req, Mode::DryRun)
                .await
                .unwrap()
                .outcome
                .is_ok()
        );
    }
}
