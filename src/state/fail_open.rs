//! `state.on_unavailable`, applied in one place: a wrapper around any backend. When the backend cannot decide an
//! admission, `fail_closed` passes the error on (the caller answers 503 with `Retry-After`); `fail_open` admits
//! without limits — nothing is taken, the grant is unaccounted and its `finish` does nothing — and logs it. The
//! quote's dry run never fails open: it reports what the store can say. Everything else passes through.

use futures_util::future::{FutureExt, ready};
use prometheus_client::metrics::counter::Counter;

use super::*;
use crate::config::OnUnavailable;

pub struct FailOpen<S> {
    inner: S,
    /// The rule in force now (it may change on reload).
    rule: Box<dyn Fn() -> OnUnavailable + Send + Sync>,
    /// Requests admitted without the backend (`admissions_unaccounted_total`).
    unaccounted: Counter,
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
        }
    }

    /// The rule in force now.
    pub fn rule(&self) -> OnUnavailable {
        (self.rule)()
    }
}

/// What a request admitted without the backend runs as: the plan's run (for a fallback plan, the run for an
/// immediate budget of which nothing is used: there is no budget to consult).
fn unaccounted(request: &AdmissionRequest) -> Decision {
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
                grant: Some(Grant::unaccounted()),
                remaining_credits: None,
                team_remaining_credits: None,
                rate: None,
            }),
        },
    }
}

impl<S: Admissions + Sync> Admissions for FailOpen<S> {
    fn admit<'a>(&'a self, request: &'a AdmissionRequest, mode: Mode) -> Answer<'a, Decision> {
        async move {
            match self.inner.admit(request, mode).await {
                Err(e) if mode == Mode::Take && (self.rule)() == OnUnavailable::FailOpen => {
                    tracing::error!(error = %e, "state backend unavailable: admitting without limits (fail_open)");
                    self.unaccounted.inc();
                    Ok(unaccounted(request))
                }
                decided => decided,
            }
        }
        .boxed()
    }

    fn finish(&self, grant: Grant, settlement: Settlement) -> Answer<'_, ()> {
        if grant.is_accounted() {
            self.inner.finish(grant, settlement)
        } else {
            ready(Ok(())).boxed()
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
}
