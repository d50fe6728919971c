//! The `memory` backend (one process): rate limits and in-flight slots in process, budgets counted in memory
//! and every reservation, settlement and rejection persisted to the SQLite ledger (by the batching writer
//! thread), which seeds the counters after a restart. One lock makes every admission decision atomic across
//! all its buckets.

use std::path::Path;
use std::sync::Mutex;

use super::ledger::{Ledger, Write};
use super::rate::{Checked, RateLimits};
use super::writer::Writer;
use super::*;
use crate::clock::SharedClock;

/// Keys here are short strings hashed on every admission: foldhash (already built for actix-http, seeded per
/// process) instead of SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

struct Outstanding {
    keys: Vec<BudgetKey>,
    estimate: u64,
}

struct Inner {
    /// Reads (lazy budget loads, tasks, usage); writes go through `writer`.
    ledger: Ledger,
    next_id: i64,
    budgets: HashMap<BudgetKey, u64>,
    /// In-flight requests per scope and subject (looked up by `&str`, without building a key).
    slots: HashMap<Scope, HashMap<String, u32>>,
    rates: RateLimits,
    outstanding: HashMap<i64, Outstanding>,
    /// Days/months seen; counters of earlier periods are dropped when a new one starts.
    current_day: String,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    writer: Writer,
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
        let ledger = Ledger::open_read_only(ledger_path).map_err(context)?;
        let next_id = ledger.max_id().map_err(|e| context(e.into()))? + 1;
        Ok(Self {
            writer,
            inner: Mutex::new(Inner {
                ledger,
                next_id,
                budgets: HashMap::default(),
                slots: HashMap::default(),
                rates: RateLimits::new(clock),
                outstanding: HashMap::default(),
                current_day: String::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads must see every write queued before them.
    fn lock_flushed(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.writer.flush();
        self.lock()
    }
}

impl Inner {
    fn used(&mut self, key: &BudgetKey, writer: &Writer) -> Result<u64, String> {
        if let Some(v) = self.budgets.get(key) {
            return Ok(*v);
        }
        // First use of this budget in this process: count what the ledger holds (all of it written).
        writer.flush();
        let v = self.ledger.used(key).map_err(|e| format!("ledger: {e}"))?;
        self.budgets.insert(key.clone(), v);
        Ok(v)
    }

    fn roll_periods(&mut self, day: &str) {
        if self.current_day != day {
            // Keys carry their date: an old day's counter is never read again, so it can go.
            let today = day.to_owned();
            let month = day.get(..7).unwrap_or("").to_owned();
            self.budgets
                .retain(|k, _| k.period_key == today || k.period_key == month);
            self.current_day = today;
        }
    }
}

impl AdmissionStore for MemoryStore {
    fn admit(&self, req: &AdmissionRequest, dry_run: bool) -> Result<Grant, Refusal> {
        if !dry_run {
            self.writer.health().map_err(Refusal::Unavailable)?;
        }
        let mut inner = self.lock();
        inner.roll_periods(&req.entry.day);

        for s in &req.slots {
            let held = inner
                .slots
                .get(&s.scope)
                .and_then(|m| m.get(s.subject.as_str()))
                .copied()
                .unwrap_or(0);
            if held >= s.max {
                return Err(Refusal::Concurrency {
                    scope: s.scope,
                    max: s.max,
                    source: s.source.clone(),
                });
            }
        }

        let mut remaining: Option<u64> = None;
        let mut team_remaining: Option<u64> = None;
        for b in &req.budgets {
            let used = inner
                .used(&b.key, &self.writer)
                .map_err(Refusal::Unavailable)?;
            if used.saturating_add(req.estimate) > b.limit {
                return Err(Refusal::Budget {
                    key: b.key.clone(),
                    limit: b.limit,
                    used,
                    retry_after_secs: b.secs_to_reset,
                    source: b.source.clone(),
                });
            }
            let left = b.limit - used - req.estimate;
            remaining = Some(remaining.map_or(left, |r| r.min(left)));
            if b.key.scope == Scope::Team {
                team_remaining = Some(team_remaining.map_or(left, |r| r.min(left)));
            }
        }

        let mut undo = Vec::new();
        let mut tightest: Option<RateStatus> = None;
        for r in &req.rates {
            let key = format!("{}:{}", r.scope.as_str(), r.subject);
            match inner.rates.check(key, r.per_minute, r.burst) {
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
                    undo.into_iter().rev().for_each(|u| u.undo());
                    return Err(Refusal::Rate {
                        scope: r.scope,
                        per_minute: r.per_minute.get(),
                        burst: r.burst.get(),
                        exhausted,
                        retry_after_secs: retry_after_secs.max(1),
                        source: r.source.clone(),
                    });
                }
            }
        }

        if dry_run {
            undo.into_iter().rev().for_each(|u| u.undo());
            return Ok(Grant {
                reservation: None,
                remaining_credits: remaining,
                team_remaining_credits: team_remaining,
                rate: tightest,
            });
        }

        let id = inner.next_id;
        inner.next_id += 1;
        self.writer.send(Write::Reserve {
            id,
            entry: req.entry.clone(),
            estimate: req.estimate,
        });
        drop(undo);
        for s in &req.slots {
            let held = inner.slots.entry(s.scope).or_default();
            match held.get_mut(s.subject.as_str()) {
                Some(n) => *n += 1,
                None => {
                    held.insert(s.subject.clone(), 1);
                }
            }
        }
        let keys: Vec<BudgetKey> = req.budgets.iter().map(|b| b.key.clone()).collect();
        for k in &keys {
            // Present: the check above loaded every budget of the request.
            if let Some(v) = inner.budgets.get_mut(k) {
                *v += req.estimate;
            } else {
                inner.budgets.insert(k.clone(), req.estimate);
            }
        }
        inner.outstanding.insert(
            id,
            Outstanding {
                keys,
                estimate: req.estimate,
            },
        );
        Ok(Grant {
            reservation: Some(id),
            remaining_credits: remaining,
            team_remaining_credits: team_remaining,
            rate: tightest,
        })
    }

    fn release_slots(&self, slots: &[SlotSpec]) {
        let mut inner = self.lock();
        for s in slots {
            let Some(held) = inner.slots.get_mut(&s.scope) else {
                continue;
            };
            if let Some(n) = held.get_mut(s.subject.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(s.subject.as_str());
                }
            }
        }
    }

    fn settle(&self, reservation: i64, settlement: Settlement) {
        let mut inner = self.lock();
        let Some(out) = inner.outstanding.remove(&reservation) else {
            return;
        };
        let (status, new_amount, credits, task_id) = match &settlement {
            Settlement::Charged { credits, task_id } => {
                ("settled", *credits, Some(*credits), task_id.as_deref())
            }
            Settlement::Released => ("released", 0, None, None),
            Settlement::Unknown => ("unknown", out.estimate, None, None),
        };
        for k in &out.keys {
            if let Some(v) = inner.budgets.get_mut(k) {
                *v = v.saturating_sub(out.estimate).saturating_add(new_amount);
            }
        }
        drop(inner);
        self.writer.send(Write::Settle {
            id: reservation,
            status,
            credits,
            task_id: task_id.map(str::to_owned),
        });
    }

    fn used(&self, key: &BudgetKey) -> Result<u64, String> {
        self.lock().used(key, &self.writer)
    }

    fn record_rejection(&self, entry: &LedgerEntry, reason: &str) {
        self.writer.send(Write::Rejection {
            entry: entry.clone(),
            reason: reason.to_owned(),
        });
    }

    fn task(&self, task_id: &str) -> Option<TaskRecord> {
        self.lock_flushed()
            .ledger
            .task(task_id)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "ledger: cannot read task ownership");
                None
            })
    }

    fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, String> {
        self.lock_flushed()
            .ledger
            .usage(filter)
            .map_err(|e| e.to_string())
    }

    fn health(&self) -> Result<(), String> {
        self.writer.check_file()?;
        self.writer.health()?;
        self.lock()
            .ledger
            .health()
            .map_err(|e| format!("ledger: {e}"))
    }

    fn flush(&self) {
        self.writer.flush();
    }
}
