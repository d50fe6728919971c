//! `state.on_unavailable`, applied in one place: a wrapper around any backend. When the backend cannot decide an
//! admission, `fail_closed` passes the error on (the caller answers 503 with `Retry-After`); `fail_open` admits
//! without limits — nothing is taken, the grant is unaccounted — logs it, and spools the admission and how it
//! ends (`state.spool_path`); [`FailOpen::write_back`] records the spool in the backend once it answers again, so
//! usage and budgets are complete afterwards. The quote's dry run never fails open: it reports what the store can
//! say. Everything else passes through.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{FutureExt, ready};
use prometheus_client::metrics::counter::Counter;

use super::spool::{Spool, Spooled};
use super::*;
use crate::config::OnUnavailable;

/// How often the spool is offered back to the backend while it holds anything.
const WRITE_BACK_EVERY: Duration = Duration::from_secs(1);
/// Entries written back per round.
const WRITE_BACK_BATCH: u32 = 200;

pub struct FailOpen<S> {
    inner: S,
    /// The rule in force now (it may change on reload).
    rule: Box<dyn Fn() -> OnUnavailable + Send + Sync>,
    /// Requests admitted without the backend (`admissions_unaccounted_total`).
    unaccounted: Counter,
    /// Where those requests are kept until the backend has them (`None`: not spooled).
    spool: Option<Arc<Spool>>,
}

impl<S> FailOpen<S> {
    pub fn new(
        inner: S,
        rule: impl Fn() -> OnUnavailable + Send + Sync + 'static,
        unaccounted: Counter,
    ) -> Self {
        Self {
            inner,
            rule: Box::new(rule),
            unaccounted,
            spool: None,
        }
    }

    /// Spools what the backend cannot take to `spool`.
    pub fn with_spool(mut self, spool: Arc<Spool>) -> Self {
        self.spool = Some(spool);
        self
    }

    /// The rule in force now.
    pub fn rule(&self) -> OnUnavailable {
        (self.rule)()
    }
}

/// What a request admitted without the backend runs as: the plan's run (for a fallback plan, the run for an
/// immediate budget of which nothing is used: there is no budget to consult).
fn unaccounted(request: &AdmissionRequest, id: GrantId) -> Decision {
    let (run, immediate_used) = match &request.plan {
        Plan::Fixed(run) => (Some(*run), None),
        Plan::Fallback(f) => {
            let covered = f.immediate_estimate <= f.immediate_budget.limit;
            (if covered { f.if_covered } else { f.if_short }, Some(0))
        }
    };
    Decision {
        run,
        immediate_used,
        outcome: match run {
            None => Err(Refusal::NoRun),
            Some(_) => Ok(Granted {
                grant: Some(Grant::unaccounted_as(id)),
                remaining_credits: None,
                team_remaining_credits: None,
                rate: None,
                shadowed: Vec::new(),
            }),
        },
    }
}

impl<S: Admissions + Sync> Admissions for FailOpen<S> {
    fn admit_as<'a>(
        &'a self,
        request: &'a AdmissionRequest,
        mode: Mode,
        grant: GrantId,
    ) -> Answer<'a, Decision> {
        async move {
            // The same id for the backend and the spool: an admission the backend runs after its answer timed
            // out is the spooled one, not a second.
            match self.inner.admit_as(request, mode, grant).await {
                Err(e) if mode == Mode::Take && (self.rule)() == OnUnavailable::FailOpen => {
                    tracing::error!(
                        error = %e,
                        spooled = self.spool.is_some(),
                        "state backend unavailable: admitting without limits (fail_open)"
                    );
                    self.unaccounted.inc();
                    let decision = unaccounted(request, grant);
                    if let (Some(spool), Some(run), Ok(granted)) =
                        (&self.spool, decision.run, &decision.outcome)
                        && let Some(grant) = &granted.grant
                    {
                        spool.admitted(grant.id(), &request.record, run);
                    }
                    Ok(decision)
                }
                decided => decided,
            }
        }
        .boxed()
    }

    fn finish(&self, grant: Grant, settlement: Settlement) -> Answer<'_, ()> {
        if grant.is_accounted() {
            let Some(spool) = self.spool.clone() else {
                return self.inner.finish(grant, settlement);
            };
            // A settlement the backend cannot take now is kept and written back: the reservation settles to
            // Vidu's figure and the task gets its owner, whatever the rule.
            async move {
                match self.inner.finish(grant.clone(), settlement.clone()).await {
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            grant = %grant.id(),
                            "the state backend could not settle a grant: spooled, written back when it answers"
                        );
                        spool.unsettled(grant.id(), settlement);
                        Ok(())
                    }
                    done => done,
                }
            }
            .boxed()
        } else {
            if let Some(spool) = &self.spool {
                spool.ended(grant.id(), settlement);
            }
            ready(Ok(())).boxed()
        }
    }

    fn record_unaccounted<'a>(&'a self, entry: &'a Unaccounted) -> Answer<'a, ()> {
        self.inner.record_unaccounted(entry)
    }
}

impl<S: Admissions + Sync + Send + 'static> FailOpen<S> {
    /// Offers the spool's ended entries to the backend every second, removing each one it records; runs until the
    /// process stops. Entries still in flight wait for their end.
    pub async fn write_back(self: Arc<Self>) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        loop {
            if spool.depth() > 0 {
                self.write_back_once(&spool).await;
            }
            tokio::time::sleep(WRITE_BACK_EVERY).await;
        }
    }

    async fn write_back_once(&self, spool: &Arc<Spool>) {
        let reader = spool.clone();
        let entries = match actix_web::rt::task::spawn_blocking(move || {
            reader.ended_entries(WRITE_BACK_BATCH)
        })
        .await
        {
            Ok(Ok(entries)) => entries,
            Ok(Err(e)) => {
                tracing::error!(spool = %spool.path().display(), error = %e, "the fail_open spool cannot be read");
                return;
            }
            Err(_) => return,
        };
        let mut written = 0usize;
        for entry in &entries {
            let written_back = match entry {
                Spooled::Admission(admission) => self.inner.record_unaccounted(admission).await,
                Spooled::Settlement { id, settlement } => {
                    self.inner.finish(Grant::new(*id), settlement.clone()).await
                }
            };
            if let Err(e) = written_back {
                tracing::debug!(error = %e, "the spool waits: the state backend does not record yet");
                break;
            }
            let remover = spool.clone();
            let id = entry.id();
            match actix_web::rt::task::spawn_blocking(move || remover.remove(id)).await {
                Ok(Ok(())) => written += 1,
                Ok(Err(e)) => {
                    // Recorded, and recorded at most once: a later round finds it recorded already.
                    tracing::error!(error = %e, "a written-back spool entry could not be removed");
                    break;
                }
                Err(_) => break,
            }
        }
        if written > 0 {
            tracing::info!(
                written,
                waiting = spool.depth(),
                "wrote requests admitted without the state backend (fail_open) back to it: usage and budgets \
                 include them now"
            );
        }
    }
}

impl<S: Records> Records for FailOpen<S> {
    fn record_rejection(&self, rejection: RejectionRecord) -> Answer<'_, ()> {
        self.inner.record_rejection(rejection)
    }

    fn task<'a>(&'a self, task_id: &'a str) -> Answer<'a, Option<TaskRecord>> {
        self.inner.task(task_id)
    }
}

/// Tasks are followed in the background (callbacks, the reconciler, relays): a call the backend cannot answer
/// fails and is tried again later, whatever `state.on_unavailable` says.
impl<S: Lifecycle> Lifecycle for FailOpen<S> {
    fn observe<'a>(&'a self, seen: &'a Observation) -> Answer<'a, Option<Transition>> {
        self.inner.observe(seen)
    }

    fn tasks<'a>(&'a self, query: &'a TaskQuery) -> Answer<'a, TaskPage> {
        self.inner.tasks(query)
    }

    fn claim_nonce<'a>(&'a self, nonce: &'a str, ttl_secs: u64) -> Answer<'a, bool> {
        self.inner.claim_nonce(nonce, ttl_secs)
    }

    fn nudge<'a>(&'a self, task_id: &'a str, after_ms: u64) -> Answer<'a, ()> {
        self.inner.nudge(task_id, after_ms)
    }

    fn claim_due<'a>(&'a self, claim: &'a DueClaim) -> Answer<'a, Vec<String>> {
        self.inner.claim_due(claim)
    }

    fn claim_relays(&self, limit: usize, lease_ms: u64) -> Answer<'_, Vec<RelayJob>> {
        self.inner.claim_relays(limit, lease_ms)
    }

    fn relay_done<'a>(&'a self, job: &'a RelayJob, outcome: RelayOutcome) -> Answer<'a, ()> {
        self.inner.relay_done(job, outcome)
    }

    fn reservations(&self) -> Answer<'_, Vec<ReservationView>> {
        self.inner.reservations()
    }

    fn resolve<'a>(&'a self, id: &'a str, how: Resolution) -> Answer<'a, Option<ReservationView>> {
        self.inner.resolve(id, how)
    }

    fn charged_since(&self, since: jiff::Timestamp) -> Answer<'_, u64> {
        self.inner.charged_since(since)
    }

    fn running(&self) -> Answer<'_, RunningNow> {
        self.inner.running()
    }
}

/// A claim the backend cannot answer: `fail_closed` passes the error on (503); `fail_open` lets the request go on
/// without idempotency — never refused for it — and says so. Abandoning and storing pass through (a failure there
/// is logged by the caller; the claim's lease frees the key).
impl<S: Idempotency + Sync> Idempotency for FailOpen<S> {
    fn claim<'a>(&'a self, claim: &'a IdemClaim) -> Answer<'a, Claim> {
        async move {
            match self.inner.claim(claim).await {
                Err(e) if (self.rule)() == OnUnavailable::FailOpen => {
                    tracing::warn!(
                        error = %e,
                        "state backend unavailable: a create with an Idempotency-Key goes on without its key \
                         (fail_open); a retry of it may be forwarded again"
                    );
                    Ok(Claim::Unchecked)
                }
                claimed => claimed,
            }
        }
        .boxed()
    }

    fn abandon<'a>(&'a self, claim: &'a IdemClaim) -> Answer<'a, ()> {
        self.inner.abandon(claim)
    }

    fn keep<'a>(
        &'a self,
        claim: &'a IdemClaim,
        answer: &'a StoredAnswer,
        ttl_secs: u64,
    ) -> Answer<'a, bool> {
        self.inner.keep(claim, answer, ttl_secs)
    }
}

impl<S: Audit> Audit for FailOpen<S> {
    fn audit(&self, entry: AuditEntry) -> Answer<'_, ()> {
        self.inner.audit(entry)
    }

    fn audit_entries<'a>(&'a self, query: &'a AuditQuery) -> Answer<'a, AuditPage> {
        self.inner.audit_entries(query)
    }
}

impl<S: Reports> Reports for FailOpen<S> {
    fn used<'a>(&'a self, keys: &'a [BudgetKey]) -> Answer<'a, Vec<u64>> {
        self.inner.used(keys)
    }

    fn usage<'a>(&'a self, filter: &'a UsageFilter) -> Answer<'a, Vec<UsageRow>> {
        self.inner.usage(filter)
    }
}

/// `/readyz` reports the backend as it is, whatever the rule: a replica failing open is still not healthy.
impl<S: Health> Health for FailOpen<S> {
    fn health(&self) -> Answer<'_, ()> {
        self.inner.health()
    }

    fn heartbeat<'a>(&'a self, replica: &'a str, version: &'a str) -> Answer<'a, Replicas> {
        self.inner.heartbeat(replica, version)
    }

    fn flush(&self) -> Answer<'_, ()> {
        self.inner.flush()
    }

    fn spool_depth(&self) -> Option<u64> {
        self.spool.as_ref().map(|s| s.depth())
    }
}
