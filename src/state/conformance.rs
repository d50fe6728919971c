//! The store contract as executable rules, written once for every backend: each rule is a function taking a
//! [`Backend`] (a factory of fresh, empty stores on a manual clock). A backend runs the whole suite with
//! `run_conformance!(its_backend)` in a test module (the memory backend: `memory.rs`).

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::clock::{ManualClock, SharedClock};

/// A store opened for one rule, with whatever must live as long as it (a temporary folder, a server).
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub keep: Box<dyn Any>,
}

/// Opens fresh, empty stores.
pub trait Backend {
    /// Whether this backend can run here (a Redis test without `redis-server` may be switched off locally).
    fn available(&self) -> bool {
        true
    }

    /// A store whose rate limits read `clock`.
    fn open(&self, clock: SharedClock) -> LocalBoxFuture<'_, Opened>;
}

/// Every rule, as `#[actix_web::test]` functions in the calling module.
macro_rules! run_conformance {
    ($backend:expr) => {
        $crate::state::conformance::run_conformance!(
            @rules $backend;
            rates_admit_the_burst_then_the_steady_rate,
            in_flight_slots_cap_grants_and_finish_frees_them,
            a_daily_budget_admits_exactly_what_fits,
            day_and_month_budgets_count_their_own_period,
            user_team_and_global_budgets_are_shared_by_their_scope,
            a_refused_request_takes_nothing,
            a_dry_run_takes_nothing_and_decides_the_same,
            fallback_runs_immediately_while_the_immediate_budget_covers_it,
            fallback_without_a_run_refuses_and_takes_nothing,
            settlements_set_what_a_reservation_counts,
            finish_happens_once_and_ignores_grants_it_does_not_hold,
            grant_ids_are_unique,
            a_task_belongs_to_its_first_creator,
            usage_counts_admissions_settlements_and_rejections,
            remaining_credits_name_the_tightest_budget_and_the_team_one,
            a_spooled_admission_is_recorded_once_with_how_it_ended,
            a_spooled_admission_the_backend_ran_itself_is_settled_not_counted_twice,
            a_spooled_admission_that_ended_unknown_is_listed_and_resolved,
            a_failed_task_is_refunded_to_the_period_it_was_created_in_once,
            success_charges_the_final_credits,
            a_state_change_of_a_relayed_task_queues_a_relay_until_delivered,
            a_callback_nonce_is_accepted_once,
            the_reconciler_claims_quiet_tasks_oldest_first_within_its_lease_and_rate,
            tasks_are_listed_newest_first_by_owner_and_state_in_pages,
            unknown_reservations_are_listed_and_resolved_once,
            credits_charged_since_count_tasks_created_since_as_charged_now,
            audit_entries_are_listed_newest_first_by_kind_and_time_in_pages,
            shadow_limits_admit_report_and_take_nothing_they_would_refuse,
            running_slots_are_kept_by_the_task_and_freed_when_it_ends,
            team_and_global_running_caps_count_every_member,
            running_slots_lapse_without_news_and_news_keeps_them,
            off_peak_runs_hold_no_running_slot_unless_configured,
            fair_share_lends_idle_slots_and_gives_them_back_as_tasks_end,
            fair_share_invariants_hold_over_random_arrivals_and_endings,
        );
    };
    (@rules $backend:expr; $($rule:ident),* $(,)?) => {
        $(
            #[actix_web::test]
            async fn $rule() {
                if !$crate::state::conformance::Backend::available(&$backend) {
                    return;
                }
                $crate::state::conformance::$rule(&$backend).await;
            }
        )*
    };
}
pub(crate) use run_conformance;

#[path = "conformance_running.rs"]
mod running;
pub use running::*;

const DAY: &str = "2026-11-25";
const MONTH: &str = "2026-11";

async fn open(backend: &dyn Backend) -> (Opened, Arc<ManualClock>) {
    let clock = ManualClock::new(Timestamp::from_second(1_795_600_800).unwrap_or_default());
    let opened = backend.open(clock.clone()).await;
    (opened, clock)
}

pub(crate) fn record(user: &str, team: &str, day: &str) -> RequestRecord {
    RequestRecord {
        request_id: format!("req-{user}"),
        user: user.into(),
        team: team.into(),
        day: day.into(),
        month: day[..7].into(),
        model: "viduq2".into(),
    }
}

fn key(scope: Scope, subject: &str, period: Period, period_key: &str) -> BudgetKey {
    BudgetKey {
        scope,
        subject: subject.into(),
        period,
        period_key: period_key.into(),
    }
}

/// A request of `user` in `team` today, costing `estimate`, with no bucket yet.
pub(crate) fn request(user: &str, team: &str, estimate: u64) -> AdmissionRequest {
    AdmissionRequest {
        record: record(user, team, DAY),
        plan: Plan::Fixed(Run {
            off_peak: false,
            estimate,
        }),
        rates: Vec::new(),
        slots: Vec::new(),
        running: RunningSpec::none(),
        shadow: Shadow::default(),
        budgets: Vec::new(),
    }
}

trait Buckets {
    fn rate(self, scope: Scope, subject: &str, per_minute: u32, burst: u32) -> Self;
    fn slot(self, scope: Scope, subject: &str, max: u32) -> Self;
    fn budget(self, key: BudgetKey, limit: u64) -> Self;
}

impl Buckets for AdmissionRequest {
    fn rate(mut self, scope: Scope, subject: &str, per_minute: u32, burst: u32) -> Self {
        self.rates.push(RateSpec {
            scope,
            subject: subject.into(),
            per_minute: std::num::NonZeroU32::new(per_minute).expect("a test rate of at least 1"),
            burst: std::num::NonZeroU32::new(burst).expect("a test burst of at least 1"),
            source: format!("{scope}.requests_per_minute"),
        });
        self
    }

    fn slot(mut self, scope: Scope, subject: &str, max: u32) -> Self {
        self.slots.push(SlotSpec {
            scope,
            subject: subject.into(),
            max,
            source: format!("{scope}.max_in_flight"),
        });
        self
    }

    fn budget(mut self, key: BudgetKey, limit: u64) -> Self {
        self.budgets.push(BudgetSpec {
            source: format!("{}.{}", key.scope, key.period.as_str()),
            key,
            limit,
            secs_to_reset: 3600,
        });
        self
    }
}

async fn decide(store: &dyn Store, req: &AdmissionRequest, mode: Mode) -> Decision {
    match store.admit(req, mode).await {
        Ok(d) => d,
        Err(e) => panic!("the store could not decide: {e}"),
    }
}

/// Admits `req` (taking), expecting a grant.
async fn grant(store: &dyn Store, req: &AdmissionRequest) -> Grant {
    match decide(store, req, Mode::Take).await.outcome {
        Ok(Granted {
            grant: Some(grant), ..
        }) => grant,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Admits `req` (taking), expecting a refusal.
async fn refusal(store: &dyn Store, req: &AdmissionRequest) -> Refusal {
    match decide(store, req, Mode::Take).await.outcome {
        Err(r) => r,
        Ok(g) => panic!("expected a refusal, got {g:?}"),
    }
}

async fn used(store: &dyn Store, key: &BudgetKey) -> u64 {
    match store.used(std::slice::from_ref(key)).await {
        Ok(v) => v[0],
        Err(e) => panic!("used: {e}"),
    }
}

async fn finish(store: &dyn Store, grant: Grant, settlement: Settlement) {
    if let Err(e) = store.finish(grant, settlement).await {
        panic!("finish: {e}");
    }
}

pub async fn rates_admit_the_burst_then_the_steady_rate(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let alice = request("alice", "t", 1).rate(Scope::User, "alice", 60, 3);
    for left in [2, 1, 0] {
        match decide(s, &alice, Mode::Take).await.outcome {
            Ok(g) => assert_eq!(g.rate.map(|r| r.remaining), Some(left)),
            Err(r) => panic!("within the burst: {r:?}"),
        }
    }
    match refusal(s, &alice).await {
        Refusal::Rate {
            scope,
            exhausted,
            retry_after_secs,
            ..
        } => {
            assert_eq!(scope, Scope::User);
            assert_eq!(exhausted, rate::Exhausted::Burst);
            assert_eq!(retry_after_secs, 1, "one token a second at 60/min");
        }
        other => panic!("{other:?}"),
    }
    let bob = request("bob", "t", 1).rate(Scope::User, "bob", 60, 3);
    grant(s, &bob).await;
    clock.advance(SignedDuration::from_secs(1));
    grant(s, &alice).await;
    refusal(s, &alice).await;
}

pub async fn in_flight_slots_cap_grants_and_finish_frees_them(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let req = request("alice", "t", 1).slot(Scope::Team, "t", 2);
    let first = grant(s, &req).await;
    let second = grant(s, &req).await;
    assert!(matches!(
        refusal(s, &req).await,
        Refusal::Concurrency {
            scope: Scope::Team,
            max: 2,
            ..
        }
    ));
    // Every way a request ends frees its slot.
    finish(s, first, Settlement::Released).await;
    let third = grant(s, &req).await;
    finish(s, second, Settlement::Unknown).await;
    let fourth = grant(s, &req).await;
    finish(s, third, Settlement::charged(1, None)).await;
    finish(s, fourth, Settlement::Released).await;
    grant(s, &req).await;
    grant(s, &req).await;
    refusal(s, &req).await;
}

pub async fn a_daily_budget_admits_exactly_what_fits(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let day = key(Scope::User, "alice", Period::Day, DAY);
    let req = request("alice", "t", 30).budget(day.clone(), 100);
    for left in [70, 40, 10] {
        match decide(s, &req, Mode::Take).await.outcome {
            Ok(g) => assert_eq!(g.remaining_credits, Some(left)),
            Err(r) => panic!("{r:?}"),
        }
    }
    assert_eq!(
        refusal(s, &req).await,
        Refusal::Budget {
            key: day.clone(),
            limit: 100,
            used: 90,
            retry_after_secs: 3600,
            source: "user.daily".into(),
        }
    );
    assert_eq!(used(s, &day).await, 90);
}

pub async fn day_and_month_budgets_count_their_own_period(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let on = |day: &str| {
        let mut r = request("alice", "t", 30)
            .budget(key(Scope::User, "alice", Period::Day, day), 50)
            .budget(key(Scope::User, "alice", Period::Month, MONTH), 80);
        r.record = record("alice", "t", day);
        r
    };
    grant(s, &on("2026-11-25")).await;
    let refused = refusal(s, &on("2026-11-25")).await;
    assert!(
        matches!(&refused, Refusal::Budget { key, used: 30, .. } if key.period == Period::Day),
        "{refused:?}"
    );
    // A new day: its own daily budget; the month goes on counting.
    grant(s, &on("2026-11-26")).await;
    let refused = refusal(s, &on("2026-11-27")).await;
    assert!(
        matches!(&refused, Refusal::Budget { key, used: 60, .. } if key.period == Period::Month),
        "{refused:?}"
    );
    assert_eq!(
        used(s, &key(Scope::User, "alice", Period::Day, "2026-11-25")).await,
        30
    );
    assert_eq!(
        used(s, &key(Scope::User, "alice", Period::Day, "2026-11-27")).await,
        0
    );
}

pub async fn user_team_and_global_budgets_are_shared_by_their_scope(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let req = |user: &str, team: &str| {
        request(user, team, 30)
            .budget(key(Scope::User, user, Period::Day, DAY), 1000)
            .budget(key(Scope::Team, team, Period::Day, DAY), 50)
            .budget(key(Scope::Global, "", Period::Day, DAY), 70)
    };
    grant(s, &req("alice", "t")).await;
    let refused = refusal(s, &req("bob", "t")).await;
    assert!(
        matches!(&refused, Refusal::Budget { key, used: 30, .. } if key.scope == Scope::Team),
        "the team's budget is shared by its members: {refused:?}"
    );
    grant(s, &req("carol", "u")).await;
    let refused = refusal(s, &req("dave", "v")).await;
    assert!(
        matches!(&refused, Refusal::Budget { key, used: 60, .. } if key.scope == Scope::Global),
        "the global budget is shared by everyone: {refused:?}"
    );
    assert_eq!(
        used(s, &key(Scope::User, "alice", Period::Day, DAY)).await,
        30
    );
    assert_eq!(used(s, &key(Scope::User, "bob", Period::Day, DAY)).await, 0);
}

pub async fn a_refused_request_takes_nothing(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let day = key(Scope::User, "alice", Period::Day, DAY);
    let req = |estimate| {
        request("alice", "t", estimate)
            .slot(Scope::User, "alice", 1)
            .budget(day.clone(), 50)
            .rate(Scope::User, "alice", 1, 3)
    };
    let first = grant(s, &req(30)).await; // slot held, 30 reserved, one token
    assert!(matches!(
        refusal(s, &req(10)).await,
        Refusal::Concurrency { .. }
    ));
    finish(s, first, Settlement::Unknown).await;
    assert!(matches!(
        refusal(s, &req(30)).await,
        Refusal::Budget { used: 30, .. }
    ));
    // Neither refusal took a slot or a token: two tokens and the slot are left.
    let second = grant(s, &req(10)).await;
    finish(s, second, Settlement::Released).await;
    let third = grant(s, &req(10)).await;
    finish(s, third, Settlement::Released).await;
    assert!(matches!(refusal(s, &req(10)).await, Refusal::Rate { .. }));
    // The rate refusal reserved nothing.
    assert_eq!(used(s, &day).await, 30);
}

pub async fn a_dry_run_takes_nothing_and_decides_the_same(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let day = key(Scope::User, "alice", Period::Day, DAY);
    let req = request("alice", "t", 30)
        .slot(Scope::User, "alice", 1)
        .budget(day.clone(), 50)
        .rate(Scope::User, "alice", 1, 1);
    for _ in 0..3 {
        let d = decide(s, &req, Mode::DryRun).await;
        match d.outcome {
            Ok(g) => {
                assert_eq!(g.grant, None, "a dry run grants nothing");
                assert_eq!(g.remaining_credits, Some(20));
            }
            Err(r) => panic!("{r:?}"),
        }
    }
    assert_eq!(used(s, &day).await, 0);
    grant(s, &req).await;
    let dry = decide(s, &req, Mode::DryRun).await.outcome;
    let real = decide(s, &req, Mode::Take).await.outcome;
    assert_eq!(dry, real, "a dry run refuses as a real admission would");
    assert_eq!(used(s, &day).await, 30);
}

/// The fallback plan of a user whose immediate budget is 100: 55 now, or 28 off-peak.
fn fallback(if_short: Option<Run>) -> AdmissionRequest {
    let mut r = request("alice", "t", 0).budget(key(Scope::User, "alice", Period::Day, DAY), 1000);
    r.plan = Plan::Fallback(Fallback {
        immediate_budget: BudgetSpec {
            key: key(Scope::User, "alice", Period::ImmediateDay, DAY),
            limit: 100,
            secs_to_reset: 3600,
            source: "immediate_daily_credits".into(),
        },
        immediate_estimate: 55,
        if_covered: Some(Run {
            off_peak: false,
            estimate: 55,
        }),
        if_short,
    });
    r
}

const OFF_PEAK: Run = Run {
    off_peak: true,
    estimate: 28,
};

pub async fn fallback_runs_immediately_while_the_immediate_budget_covers_it(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let req = fallback(Some(OFF_PEAK));
    let first = decide(s, &req, Mode::Take).await;
    assert_eq!(
        (first.run, first.immediate_used),
        (
            Some(Run {
                off_peak: false,
                estimate: 55
            }),
            Some(0)
        )
    );
    assert!(first.outcome.is_ok());
    // 55 + 55 > 100: off-peak, which the immediate budget does not count.
    for _ in 0..2 {
        let next = decide(s, &req, Mode::Take).await;
        assert_eq!((next.run, next.immediate_used), (Some(OFF_PEAK), Some(55)));
        assert!(next.outcome.is_ok());
    }
    let immediate = key(Scope::User, "alice", Period::ImmediateDay, DAY);
    assert_eq!(used(s, &immediate).await, 55);
    assert_eq!(
        used(s, &key(Scope::User, "alice", Period::Day, DAY)).await,
        55 + 28 + 28
    );
}

pub async fn fallback_without_a_run_refuses_and_takes_nothing(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let req = fallback(None).slot(Scope::User, "alice", 1);
    let first = grant(s, &req).await;
    finish(s, first, Settlement::Unknown).await;
    let refused = decide(s, &req, Mode::Take).await;
    assert_eq!(
        refused,
        Decision {
            run: None,
            immediate_used: Some(55),
            outcome: Err(Refusal::NoRun),
        }
    );
    assert_eq!(
        used(s, &key(Scope::User, "alice", Period::Day, DAY)).await,
        55
    );
    // The slot is free: a request that can run gets it.
    grant(s, &request("alice", "t", 1).slot(Scope::User, "alice", 1)).await;
}

pub async fn settlements_set_what_a_reservation_counts(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let day = key(Scope::User, "alice", Period::Day, DAY);
    let req = request("alice", "t", 50).budget(day.clone(), 1000);
    let g = grant(s, &req).await;
    assert_eq!(used(s, &day).await, 50, "reserved");
    finish(s, g, Settlement::charged(30, Some("task-1"))).await;
    assert_eq!(used(s, &day).await, 30, "settled to what Vidu reported");
    let g = grant(s, &req).await;
    finish(s, g, Settlement::Released).await;
    assert_eq!(used(s, &day).await, 30, "released: nothing");
    let g = grant(s, &req).await;
    finish(s, g, Settlement::Unknown).await;
    assert_eq!(used(s, &day).await, 80, "unknown: the estimate stays");
}

pub async fn finish_happens_once_and_ignores_grants_it_does_not_hold(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let day = key(Scope::User, "alice", Period::Day, DAY);
    let req = request("alice", "t", 50)
        .slot(Scope::User, "alice", 1)
        .budget(day.clone(), 1000);
    let a = grant(s, &req).await;
    finish(s, a.clone(), Settlement::Released).await;
    let b = grant(s, &req).await;
    // Finishing `a` again frees nothing and settles nothing.
    finish(s, a, Settlement::Released).await;
    finish(s, Grant::new(GrantId::random()), Settlement::Released).await;
    finish(s, Grant::unaccounted(), Settlement::Released).await;
    assert!(matches!(
        refusal(s, &req).await,
        Refusal::Concurrency { .. }
    ));
    assert_eq!(used(s, &day).await, 50);
    finish(s, b, Settlement::Released).await;
    assert_eq!(used(s, &day).await, 0);
}

pub async fn grant_ids_are_unique(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let req = request("alice", "t", 1);
    let mut ids = HashSet::new();
    for _ in 0..200 {
        assert!(ids.insert(grant(s, &req).await.id()));
    }
}

pub async fn a_task_belongs_to_its_first_creator(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let charged = || Settlement::charged(10, Some("task-7"));
    let g = grant(s, &request("alice", "a", 10)).await;
    finish(s, g, charged()).await;
    let g = grant(s, &request("mallory", "m", 10)).await;
    finish(s, g, charged()).await;
    let owner = |t: Option<TaskRecord>| t.map(|t| (t.user, t.team, t.charged));
    assert_eq!(
        owner(s.task("task-7").await.unwrap_or_default()),
        Some(("alice".into(), "a".into(), 10))
    );
    assert_eq!(s.task("task-8").await, Ok(None));
    // Still the first owner once everything is durable.
    assert_eq!(s.flush().await, Ok(()));
    assert_eq!(
        owner(s.task("task-7").await.unwrap_or_default()),
        Some(("alice".into(), "a".into(), 10))
    );
}

pub async fn usage_counts_admissions_settlements_and_rejections(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let req = request("alice", "t", 50);
    let g = grant(s, &req).await;
    finish(s, g, Settlement::charged(40, None)).await;
    let g = grant(s, &req).await;
    finish(s, g, Settlement::Released).await;
    grant(s, &req).await;
    grant(s, &request("bob", "t", 5)).await;
    let rejection = RejectionRecord {
        user: "alice".into(),
        team: "t".into(),
        day: DAY.into(),
        reason: "TooManyRequests".into(),
    };
    assert_eq!(s.record_rejection(rejection).await, Ok(()));
    let filter = UsageFilter {
        user: Some("alice".into()),
        ..UsageFilter::default()
    };
    let days = s.usage(&filter).await.unwrap_or_default();
    assert_eq!(days.len(), 1, "{days:?}");
    let d = &days[0];
    assert_eq!(d.day, DAY);
    assert_eq!(
        (
            d.admitted,
            d.credits_settled,
            d.credits_released,
            d.credits_reserved
        ),
        (3, 40, 50, 50)
    );
    assert_eq!(
        (d.rejected, d.rejected_by_reason.get("TooManyRequests")),
        (1, Some(&1))
    );
    let team = UsageFilter {
        team: Some("t".into()),
        ..UsageFilter::default()
    };
    assert_eq!(s.usage(&team).await.unwrap_or_default()[0].admitted, 4);
}

pub async fn remaining_credits_name_the_tightest_budget_and_the_team_one(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let req = request("alice", "t", 100)
        .budget(key(Scope::User, "alice", Period::Day, DAY), 1000)
        .budget(key(Scope::Team, "t", Period::Day, DAY), 500)
        .budget(key(Scope::Team, "t", Period::Month, MONTH), 900)
        .budget(key(Scope::Global, "", Period::Day, DAY), 300);
    match decide(s, &req, Mode::Take).await.outcome {
        Ok(g) => {
            assert_eq!(g.remaining_credits, Some(200), "the global budget");
            assert_eq!(g.team_remaining_credits, Some(400), "the team's day");
        }
        Err(r) => panic!("{r:?}"),
    }
}

/// Team `t`'s daily budget.
fn team_day() -> BudgetKey {
    BudgetKey {
        scope: Scope::Team,
        subject: "t".into(),
        period: Period::Day,
        period_key: DAY.into(),
    }
}

fn spooled(id: GrantId, settlement: Settlement) -> Unaccounted {
    Unaccounted {
        id,
        record: record("alice", "t", DAY),
        run: Run {
            off_peak: false,
            estimate: 50,
        },
        settlement,
        admitted_at: "2026-11-25T10:00:00Z".into(),
    }
}

pub async fn a_spooled_admission_is_recorded_once_with_how_it_ended(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let day = team_day();
    let charged = spooled(GrantId::random(), Settlement::charged(40, Some("task-s")));
    let lost = spooled(GrantId::random(), Settlement::Unknown);
    for _ in 0..2 {
        assert_eq!(s.record_unaccounted(&charged).await, Ok(()));
        assert_eq!(s.record_unaccounted(&lost).await, Ok(()));
    }
    assert_eq!(used(s, &day).await, 40 + 50);
    let owner = s
        .task("task-s")
        .await
        .unwrap_or_default()
        .map(|t| (t.user, t.charged));
    assert_eq!(owner, Some(("alice".into(), 40)));
    let filter = UsageFilter {
        user: Some("alice".into()),
        ..UsageFilter::default()
    };
    let days = s.usage(&filter).await.unwrap_or_default();
    let d = &days[0];
    assert_eq!(
        (
            d.admitted,
            d.credits_settled,
            d.credits_unknown,
            d.credits_reserved
        ),
        (2, 40, 50, 0),
        "{days:?}"
    );
}

/// A replica that stopped waiting for an admission spools it under the grant id it asked for; if the backend
/// ran that admission after all, writing the spool back settles that grant instead of counting it again.
pub async fn a_spooled_admission_the_backend_ran_itself_is_settled_not_counted_twice(
    backend: &dyn Backend,
) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let day = team_day();
    let req = request("alice", "t", 50).slot(Scope::User, "alice", 1);
    let id = GrantId::random();
    let decided = s.admit_as(&req, Mode::Take, id).await;
    assert!(
        matches!(decided, Ok(Decision { outcome: Ok(_), .. })),
        "{decided:?}"
    );
    let entry = spooled(id, Settlement::charged(30, None));
    assert_eq!(s.record_unaccounted(&entry).await, Ok(()));
    assert_eq!(used(s, &day).await, 30);
    // Its in-flight slot is free again.
    grant(s, &req).await;
}

// --- Tasks followed to their end.

/// Creates task `id` for `user` of team `t`, estimate 50, charged `credits`, relayed to `callback_url`.
async fn create_task(
    s: &dyn Store,
    user: &str,
    id: &str,
    credits: u64,
    callback_url: Option<&str>,
) -> AdmissionRequest {
    let req = request(user, "t", 50).budget(team_day(), 10_000);
    let g = grant(s, &req).await;
    finish(
        s,
        g,
        Settlement::Charged {
            credits,
            task: Some(Created {
                task_id: id.into(),
                state: TaskState::Created,
                callback_url: callback_url.map(str::to_owned),
            }),
        },
    )
    .await;
    req
}

fn seen(id: &str, state: TaskState, credits: Option<u64>) -> Observation {
    Observation {
        task_id: id.into(),
        state,
        credits,
        body: format!(r#"{{"id":"{id}","state":"{state}"}}"#),
    }
}

async fn observe(s: &dyn Store, o: Observation) -> Option<Transition> {
    match s.observe(&o).await {
        Ok(t) => t,
        Err(e) => panic!("observe: {e}"),
    }
}

async fn day_row(s: &dyn Store, day: &str) -> UsageRow {
    let rows = s.usage(&UsageFilter::default()).await.unwrap_or_default();
    rows.into_iter()
        .find(|r| r.day == day)
        .unwrap_or_else(|| panic!("no usage on {day}"))
}

pub async fn a_failed_task_is_refunded_to_the_period_it_was_created_in_once(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    create_task(s, "alice", "t-1", 50, None).await;
    assert_eq!(used(s, &team_day()).await, 50);
    // The task fails the next day: its credits go back to the day it was created in.
    clock.advance(SignedDuration::from_hours(24));
    let t = observe(s, seen("t-1", TaskState::Processing, None)).await;
    assert_eq!(
        t.map(|t| (t.from, t.refunded)),
        Some((TaskState::Created, 0))
    );
    let t = observe(s, seen("t-1", TaskState::Failed, Some(0))).await;
    let t = t.unwrap_or_else(|| panic!("failed changes the task"));
    assert_eq!(
        (t.from, t.refunded, t.adjusted),
        (TaskState::Processing, 50, 0)
    );
    assert_eq!(
        (t.task.state, t.task.charged, t.task.refunded),
        (TaskState::Failed, 0, 50)
    );
    assert!(t.task.ended_at.is_some());
    assert_eq!(
        used(s, &team_day()).await,
        0,
        "refunded to the creation day"
    );
    // An ended task never changes again.
    assert_eq!(
        observe(s, seen("t-1", TaskState::Success, Some(50))).await,
        None
    );
    assert_eq!(observe(s, seen("t-1", TaskState::Failed, None)).await, None);
    assert_eq!(used(s, &team_day()).await, 0);
    let row = day_row(s, DAY).await;
    assert_eq!((row.credits_settled, row.credits_refunded), (0, 50));
    assert_eq!(
        observe(s, seen("nobody", TaskState::Failed, None)).await,
        None
    );
    let task = s.task("t-1").await.ok().flatten();
    assert_eq!(
        task.map(|t| (t.state, t.refunded)),
        Some((TaskState::Failed, 50))
    );
}

pub async fn success_charges_the_final_credits(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    create_task(s, "alice", "t-2", 50, None).await;
    create_task(s, "alice", "t-3", 40, None).await;
    let t = observe(s, seen("t-2", TaskState::Success, Some(35))).await;
    assert_eq!(t.map(|t| (t.adjusted, t.task.charged)), Some((-15, 35)));
    let t = observe(s, seen("t-3", TaskState::Success, None)).await;
    assert_eq!(
        t.map(|t| (t.adjusted, t.task.charged)),
        Some((0, 40)),
        "no figure: the creation's"
    );
    assert_eq!(used(s, &team_day()).await, 75);
    let row = day_row(s, DAY).await;
    assert_eq!((row.credits_settled, row.credits_refunded), (75, 0));
}

pub async fn a_state_change_of_a_relayed_task_queues_a_relay_until_delivered(
    backend: &dyn Backend,
) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    create_task(s, "alice", "t-4", 50, Some("https://hooks.example/cb")).await;
    create_task(s, "alice", "t-5", 50, None).await;
    let t = observe(s, seen("t-4", TaskState::Cancelled, None)).await;
    assert_eq!(t.map(|t| (t.relay_queued, t.refunded)), Some((true, 50)));
    let t = observe(s, seen("t-5", TaskState::Processing, None)).await;
    assert_eq!(
        t.map(|t| t.relay_queued),
        Some(false),
        "no callback_url, no relay"
    );
    // Two changes of one task: relayed one at a time, in order.
    create_task(s, "alice", "t-6", 50, Some("https://hooks.example/six")).await;
    observe(s, seen("t-6", TaskState::Processing, None)).await;
    clock.advance(SignedDuration::from_millis(5));
    observe(s, seen("t-6", TaskState::Success, Some(50))).await;
    let jobs = s.claim_relays(10, 30_000).await.unwrap_or_default();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let six: Vec<&RelayJob> = jobs.iter().filter(|j| j.task_id == "t-6").collect();
    assert_eq!(six.len(), 1, "one at a time: {jobs:?}");
    assert!(
        six[0].body.contains("processing"),
        "oldest first: {}",
        six[0].body
    );
    assert_eq!(s.relay_done(six[0], RelayOutcome::Delivered).await, Ok(()));
    let next = s.claim_relays(10, 30_000).await.unwrap_or_default();
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(next[0].body.contains("success"), "{}", next[0].body);
    assert_eq!(
        s.relay_done(&next[0], RelayOutcome::Delivered).await,
        Ok(())
    );
    let job = jobs
        .iter()
        .find(|j| j.task_id == "t-4")
        .cloned()
        .unwrap_or_else(|| panic!("{jobs:?}"));
    assert_eq!(
        (
            job.task_id.as_str(),
            job.team.as_str(),
            job.url.as_str(),
            job.attempts
        ),
        ("t-4", "t", "https://hooks.example/cb", 0)
    );
    assert!(job.body.contains("cancelled"), "{}", job.body);
    assert_eq!(s.claim_relays(10, 30_000).await, Ok(Vec::new()), "leased");
    assert_eq!(
        s.relay_done(&job, RelayOutcome::Retry { after_ms: 2_000 })
            .await,
        Ok(())
    );
    assert_eq!(
        s.claim_relays(10, 30_000).await,
        Ok(Vec::new()),
        "not due yet"
    );
    clock.advance(SignedDuration::from_secs(3));
    let again = s.claim_relays(10, 30_000).await.unwrap_or_default();
    assert_eq!(
        again.iter().map(|j| j.attempts).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(
        s.relay_done(&again[0], RelayOutcome::Delivered).await,
        Ok(())
    );
    clock.advance(SignedDuration::from_secs(60));
    assert_eq!(
        s.claim_relays(10, 30_000).await,
        Ok(Vec::new()),
        "delivered: gone"
    );
    let relay = s.task("t-4").await.ok().flatten().and_then(|t| t.relay);
    assert_eq!(relay, Some(RelayStatus::Delivered));
}

pub async fn a_callback_nonce_is_accepted_once(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    assert_eq!(s.claim_nonce("n-1", 600).await, Ok(true));
    assert_eq!(s.claim_nonce("n-1", 600).await, Ok(false));
    assert_eq!(s.claim_nonce("n-2", 600).await, Ok(true));
}

pub async fn the_reconciler_claims_quiet_tasks_oldest_first_within_its_lease_and_rate(
    backend: &dyn Backend,
) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    for i in 1..=5 {
        create_task(s, "alice", &format!("r-{i}"), 10, None).await;
        clock.advance(SignedDuration::from_secs(1));
    }
    create_task(s, "alice", "r-done", 10, None).await;
    observe(s, seen("r-done", TaskState::Success, None)).await;
    let claim = |holder: &str, per_minute| DueClaim {
        holder: holder.into(),
        lease_ms: 30_000,
        quiet_ms: 60_000,
        per_minute,
    };
    let claimed = |v: Result<Vec<String>, StoreError>| v.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        claimed(s.claim_due(&claim("a", 3)).await),
        Vec::<String>::new(),
        "all heard of lately"
    );
    clock.advance(SignedDuration::from_secs(60));
    assert_eq!(
        claimed(s.claim_due(&claim("a", 3)).await),
        ["r-1", "r-2", "r-3"],
        "oldest first, 3 a minute"
    );
    assert_eq!(
        claimed(s.claim_due(&claim("b", 3)).await),
        Vec::<String>::new(),
        "a holds the lease"
    );
    assert_eq!(
        claimed(s.claim_due(&claim("a", 3)).await),
        Vec::<String>::new(),
        "the minute's 3 are used"
    );
    // A callback's nudge makes a task due after its grace, ahead of the quiet ones.
    assert_eq!(s.nudge("r-5", 1_000).await, Ok(()));
    clock.advance(SignedDuration::from_secs(61));
    // The lease lapsed (30 s): b may take it now.
    assert_eq!(claimed(s.claim_due(&claim("b", 2)).await), ["r-5", "r-4"]);
    assert_eq!(
        claimed(s.claim_due(&claim("a", 10)).await),
        Vec::<String>::new(),
        "b holds the lease now"
    );
}

pub async fn tasks_are_listed_newest_first_by_owner_and_state_in_pages(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    for (i, user) in ["alice", "bob", "alice", "alice", "bob"].iter().enumerate() {
        create_task(s, user, &format!("l-{i}"), 10, None).await;
        clock.advance(SignedDuration::from_secs(1));
    }
    observe(s, seen("l-2", TaskState::Failed, None)).await;
    let list = |user: Option<&str>, state: Option<TaskState>, limit, after| TaskQuery {
        user: user.map(str::to_owned),
        team: None,
        state,
        limit,
        after,
    };
    let ids = |p: &TaskPage| {
        p.tasks
            .iter()
            .map(|t| t.task_id.clone())
            .collect::<Vec<_>>()
    };
    let page = s
        .tasks(&list(None, None, 2, None))
        .await
        .unwrap_or_default();
    assert_eq!(ids(&page), ["l-4", "l-3"]);
    let page = s
        .tasks(&list(None, None, 2, page.next.clone()))
        .await
        .unwrap_or_default();
    assert_eq!(ids(&page), ["l-2", "l-1"]);
    let page = s
        .tasks(&list(None, None, 2, page.next.clone()))
        .await
        .unwrap_or_default();
    assert_eq!(ids(&page), ["l-0"]);
    assert_eq!(page.next, None);
    let page = s
        .tasks(&list(Some("alice"), None, 10, None))
        .await
        .unwrap_or_default();
    assert_eq!(ids(&page), ["l-3", "l-2", "l-0"]);
    let page = s
        .tasks(&list(Some("alice"), Some(TaskState::Failed), 10, None))
        .await
        .unwrap_or_default();
    assert_eq!(ids(&page), ["l-2"]);
    assert_eq!(page.tasks[0].refunded, 10);
    let team = TaskQuery {
        team: Some("t".into()),
        ..list(None, Some(TaskState::Created), 10, None)
    };
    assert_eq!(
        ids(&s.tasks(&team).await.unwrap_or_default()),
        ["l-4", "l-3", "l-1", "l-0"]
    );
}

pub async fn unknown_reservations_are_listed_and_resolved_once(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let req = request("alice", "t", 50).budget(team_day(), 10_000);
    let lost = grant(s, &req).await;
    finish(s, lost.clone(), Settlement::Unknown).await;
    clock.advance(SignedDuration::from_secs(1));
    let lost_too = grant(s, &req).await;
    finish(s, lost_too.clone(), Settlement::Unknown).await;
    clock.advance(SignedDuration::from_secs(1));
    let open_one = grant(s, &req).await;
    let list = s.reservations().await.unwrap_or_default();
    let states: Vec<(String, &str, u64)> = list
        .iter()
        .map(|r| (r.id.clone(), r.state, r.estimate))
        .collect();
    assert_eq!(
        states,
        [
            (lost.id().to_string(), "unknown", 50),
            (lost_too.id().to_string(), "unknown", 50),
            (open_one.id().to_string(), "open", 50)
        ]
    );
    assert_eq!(list[0].user, "alice");
    assert_eq!(used(s, &team_day()).await, 150);
    let settled = s
        .resolve(&lost.id().to_string(), Resolution::Settle(30))
        .await;
    assert_eq!(settled.ok().flatten().map(|r| r.estimate), Some(50));
    assert_eq!(used(s, &team_day()).await, 130);
    assert_eq!(
        s.resolve(&lost.id().to_string(), Resolution::Release).await,
        Ok(None),
        "once"
    );
    assert_eq!(
        s.resolve(&open_one.id().to_string(), Resolution::Release)
            .await,
        Ok(None),
        "open: not unknown"
    );
    assert!(
        s.resolve(&lost_too.id().to_string(), Resolution::Release)
            .await
            .ok()
            .flatten()
            .is_some()
    );
    assert_eq!(used(s, &team_day()).await, 80);
    let row = day_row(s, DAY).await;
    assert_eq!(
        (
            row.credits_unknown,
            row.credits_settled,
            row.credits_released
        ),
        (0, 30, 50)
    );
    let left: Vec<&str> = s
        .reservations()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.state)
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    assert_eq!(left, ["open"]);
}

pub async fn a_spooled_admission_that_ended_unknown_is_listed_and_resolved(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let id = GrantId::random();
    assert_eq!(
        s.record_unaccounted(&spooled(id, Settlement::Unknown))
            .await,
        Ok(())
    );
    assert_eq!(used(s, &team_day()).await, 50);
    let list = s.reservations().await.unwrap_or_default();
    let listed: Vec<(String, &str)> = list.iter().map(|r| (r.id.clone(), r.state)).collect();
    assert_eq!(listed, [(id.to_string(), "unknown")]);
    let released = s.resolve(&id.to_string(), Resolution::Release).await;
    assert!(released.ok().flatten().is_some());
    assert_eq!(used(s, &team_day()).await, 0);
    assert_eq!(s.reservations().await, Ok(Vec::new()));
}

pub async fn credits_charged_since_count_tasks_created_since_as_charged_now(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let start = crate::clock::Clock::now(clock.as_ref());
    create_task(s, "alice", "burn-old", 30, None).await;
    clock.advance(SignedDuration::from_hours(2));
    let since = crate::clock::Clock::now(clock.as_ref());
    create_task(s, "alice", "burn-1", 40, None).await;
    clock.advance(SignedDuration::from_secs(1));
    create_task(s, "bob", "burn-2", 25, None).await;
    create_task(s, "bob", "burn-3", 10, None).await;
    // A refund is netted, a success's final credits counted.
    observe(s, seen("burn-2", TaskState::Failed, None)).await;
    observe(s, seen("burn-3", TaskState::Success, Some(12))).await;
    let charged = |at| async move {
        match s.charged_since(at).await {
            Ok(n) => n,
            Err(e) => panic!("charged_since: {e}"),
        }
    };
    assert_eq!(charged(since).await, 52);
    assert_eq!(charged(start).await, 82);
    clock.advance(SignedDuration::from_secs(5));
    assert_eq!(charged(crate::clock::Clock::now(clock.as_ref())).await, 0);
}

pub async fn audit_entries_are_listed_newest_first_by_kind_and_time_in_pages(
    backend: &dyn Backend,
) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let mut stamps = Vec::new();
    for (i, kind) in [
        "config_load",
        "task_read",
        "config_reload",
        "task_read",
        "usage_read",
    ]
    .iter()
    .enumerate()
    {
        let at = crate::clock::Clock::now(clock.as_ref());
        stamps.push(crate::clock::stamp(at));
        let entry = AuditEntry {
            id: format!("e-{i}"),
            at: crate::clock::stamp(at),
            kind: (*kind).into(),
            actor: "root".into(),
            outcome: "ok".into(),
            detail: serde_json::json!({"n": i, "note": "a | in the detail"}),
        };
        if let Err(e) = s.audit(entry).await {
            panic!("audit: {e}");
        }
        clock.advance(SignedDuration::from_secs(60));
    }
    let list = |q: AuditQuery| async move {
        match s.audit_entries(&q).await {
            Ok(p) => p,
            Err(e) => panic!("audit_entries: {e}"),
        }
    };
    let ids = |p: &AuditPage| p.entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let all = list(AuditQuery {
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&all), ["e-4", "e-3", "e-2", "e-1", "e-0"]);
    assert_eq!(all.entries[0].detail["note"], "a | in the detail");
    assert_eq!(all.next, None);
    let reads = list(AuditQuery {
        kind: Some("task_read".into()),
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&reads), ["e-3", "e-1"]);
    let window = list(AuditQuery {
        since: Some(stamps[1].clone()),
        until: Some(stamps[3].clone()),
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&window),
        ["e-2", "e-1"],
        "since inclusive, until exclusive"
    );
    let first = list(AuditQuery {
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&first), ["e-4", "e-3"]);
    let second = list(AuditQuery {
        limit: 2,
        before: first.next.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&second), ["e-2", "e-1"]);
    let last = list(AuditQuery {
        limit: 2,
        before: second.next.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!((ids(&last), last.next), (vec!["e-0".to_owned()], None));
}

/// A grant, with what shadow limits would have refused.
async fn shadow_grant(store: &dyn Store, req: &AdmissionRequest) -> (Grant, Vec<Refusal>) {
    match decide(store, req, Mode::Take).await.outcome {
        Ok(Granted {
            grant: Some(grant),
            shadowed,
            ..
        }) => (grant, shadowed),
        other => panic!("expected a grant, got {other:?}"),
    }
}

pub async fn shadow_limits_admit_report_and_take_nothing_they_would_refuse(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let shadow = Shadow {
        user: true,
        team: true,
        global: false,
    };
    // In flight: the second is admitted beside a full shadow slot, which it does not take.
    let mut req = request("alice", "t", 10).slot(Scope::User, "alice", 1);
    req.shadow = shadow;
    let (first, none) = shadow_grant(s, &req).await;
    assert!(none.is_empty());
    let (second, shadowed) = shadow_grant(s, &req).await;
    assert!(
        matches!(
            shadowed[..],
            [Refusal::Concurrency {
                scope: Scope::User,
                max: 1,
                ..
            }]
        ),
        "{shadowed:?}"
    );
    finish(s, first, Settlement::Released).await;
    let enforced = request("alice", "t", 10).slot(Scope::User, "alice", 1);
    let third = grant(s, &enforced).await;
    refusal(s, &enforced).await;
    finish(s, second, Settlement::Released).await;
    refusal(s, &enforced).await;
    finish(s, third, Settlement::Released).await;

    // Rates: the shadowed request takes no token.
    let mut rated = request("bob", "t", 1).rate(Scope::User, "bob", 60, 1);
    rated.shadow = shadow;
    shadow_grant(s, &rated).await;
    let (_, shadowed) = shadow_grant(s, &rated).await;
    assert!(
        matches!(shadowed[..], [Refusal::Rate { .. }]),
        "{shadowed:?}"
    );
    clock.advance(SignedDuration::from_secs(1));
    grant(s, &request("bob", "t", 1).rate(Scope::User, "bob", 60, 1)).await;

    // Budgets: counted all the same (spend is spend), reported as over.
    let day = key(Scope::Team, "v", Period::Day, DAY);
    let mut budgeted = request("carol", "v", 30).budget(day.clone(), 50);
    budgeted.shadow = shadow;
    shadow_grant(s, &budgeted).await;
    let (_, shadowed) = shadow_grant(s, &budgeted).await;
    assert!(
        matches!(
            &shadowed[..],
            [Refusal::Budget {
                used: 30,
                limit: 50,
                ..
            }]
        ),
        "{shadowed:?}"
    );
    assert_eq!(used(s, &day).await, 60);
    // Global limits follow their own table: not shadowed here.
    let mut global = request("dan", "u", 1).slot(Scope::Global, "", 1);
    global.shadow = shadow;
    grant(s, &global).await;
    assert!(matches!(
        refusal(s, &global).await,
        Refusal::Concurrency {
            scope: Scope::Global,
            ..
        }
    ));
    // A dry run reports the same.
    let answer = decide(s, &budgeted, Mode::DryRun).await;
    assert!(matches!(answer.outcome, Ok(Granted { ref shadowed, .. }) if shadowed.len() == 1));
}
