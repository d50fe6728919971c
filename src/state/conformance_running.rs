//! Conformance rules for running-task slots and their fair share (part of `conformance.rs`): caps per user, team
//! and globally; a slot kept by the task Vidu created, freed when it ends, when its time runs out without news,
//! or when its unknown reservation is resolved; off-peak runs; the fair share's guarantees and borrowing, and its
//! two invariants over random arrivals and endings.

use super::*;

/// A slot's time without news in these rules.
const TTL_MS: u64 = 60_000;
/// A share group is idle after this long without a request or a running task.
const IDLE_MS: u64 = 300_000;

trait Running {
    /// The request's run holds a running-task slot.
    fn holding(self) -> Self;
    fn running_cap(self, scope: Scope, subject: &str, max: u32) -> Self;
    /// The global cap `max` with the requester's `group` guaranteed `guarantee`, beside `others`.
    fn share(
        self,
        max: u32,
        group: ShareGroup,
        guarantee: u32,
        others: &[(ShareGroup, u32)],
    ) -> Self;
    fn off_peak(self) -> Self;
}

impl Running for AdmissionRequest {
    fn holding(mut self) -> Self {
        self.running.ttl_ms = TTL_MS;
        self
    }

    fn running_cap(mut self, scope: Scope, subject: &str, max: u32) -> Self {
        self.running.limits.push(SlotSpec {
            scope,
            subject: subject.into(),
            max,
            source: format!("{scope}.max_running_tasks"),
        });
        self.holding()
    }

    fn share(
        mut self,
        max: u32,
        group: ShareGroup,
        guarantee: u32,
        others: &[(ShareGroup, u32)],
    ) -> Self {
        self.running.share = Some(ShareSpec {
            max,
            source: "policy.global.max_running_tasks".into(),
            group,
            guarantee,
            guarantee_source: "task_share".into(),
            others: others.to_vec(),
            idle_ms: IDLE_MS,
        });
        self.holding()
    }

    fn off_peak(mut self) -> Self {
        if let Plan::Fixed(run) = &mut self.plan {
            run.off_peak = true;
        }
        self
    }
}

async fn running(s: &dyn Store) -> RunningNow {
    match s.running().await {
        Ok(r) => r,
        Err(e) => panic!("running: {e}"),
    }
}

async fn charged_task(s: &dyn Store, g: Grant, task_id: &str) {
    finish(s, g, Settlement::charged(10, Some(task_id))).await;
}

fn running_refusal(r: Refusal) -> (Scope, u32, u32, Option<ShareRefusal>) {
    match r {
        Refusal::Running {
            scope,
            max,
            running,
            share,
            ..
        } => (scope, max, running, share),
        other => panic!("expected RunningTasksLimited, got {other:?}"),
    }
}

pub async fn running_slots_are_kept_by_the_task_and_freed_when_it_ends(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let req = request("alice", "t", 10).running_cap(Scope::User, "alice", 2);
    let first = grant(s, &req).await;
    let second = grant(s, &req).await;
    assert_eq!(
        running_refusal(refusal(s, &req).await),
        (Scope::User, 2, 2, None)
    );
    // A dry run says the same and takes nothing.
    assert!(decide(s, &req, Mode::DryRun).await.outcome.is_err());
    // Vidu refused the first: its slot is given back.
    finish(s, first, Settlement::Released).await;
    let third = grant(s, &req).await;
    // Vidu created the second's task: the task keeps the slot until it ends.
    charged_task(s, second, "run-1").await;
    refusal(s, &req).await;
    observe(s, seen("run-1", TaskState::Processing, None)).await;
    refusal(s, &req).await;
    let now = running(s).await;
    assert_eq!(
        (now.total, now.teams.get("t"), now.users.get("alice")),
        (2, Some(&2), Some(&2))
    );
    observe(s, seen("run-1", TaskState::Success, Some(10))).await;
    let fourth = grant(s, &req).await;
    // An unknown outcome keeps the slot (the task may exist) until it is resolved.
    finish(s, third, Settlement::Unknown).await;
    refusal(s, &req).await;
    let listed = match s.reservations().await {
        Ok(l) => l,
        Err(e) => panic!("reservations: {e}"),
    };
    let unknown = listed
        .iter()
        .find(|r| r.state == "unknown")
        .unwrap_or_else(|| panic!("the unknown reservation is listed: {listed:?}"));
    assert!(matches!(
        s.resolve(&unknown.id, Resolution::Release).await,
        Ok(Some(_))
    ));
    let fifth = grant(s, &req).await;
    // A task that failed, a task created already ended, and a create without a task id free theirs.
    charged_task(s, fourth, "run-2").await;
    observe(s, seen("run-2", TaskState::Failed, None)).await;
    let sixth = grant(s, &req).await;
    finish(
        s,
        fifth,
        Settlement::Charged {
            credits: 0,
            task: Some(Created {
                task_id: "run-3".into(),
                state: TaskState::Failed,
                callback_url: None,
            }),
        },
    )
    .await;
    finish(s, sixth, Settlement::charged(10, None)).await;
    assert_eq!(running(s).await, RunningNow::default());
    // Another user's cap is their own.
    grant(s, &req).await;
    grant(
        s,
        &request("bob", "t", 10).running_cap(Scope::User, "bob", 1),
    )
    .await;
}

pub async fn team_and_global_running_caps_count_every_member(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let of = |user: &str| request(user, "t", 10).running_cap(Scope::Team, "t", 3);
    let held = [grant(s, &of("a")).await, grant(s, &of("b")).await];
    grant(s, &of("c")).await;
    assert_eq!(
        running_refusal(refusal(s, &of("d")).await),
        (Scope::Team, 3, 3, None)
    );
    // A request with no cap still counts: a cap added later (a reload) sees it.
    grant(s, &request("e", "u", 10).holding()).await;
    let global = request("f", "v", 10).share(2, ShareGroup::Pool, 2, &[]);
    assert_eq!(
        running_refusal(refusal(s, &global).await),
        (Scope::Global, 2, 4, None)
    );
    for g in held {
        finish(s, g, Settlement::Released).await;
    }
    assert_eq!(running(s).await.total, 2);
}

pub async fn running_slots_lapse_without_news_and_news_keeps_them(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let req = request("alice", "t", 10).running_cap(Scope::User, "alice", 1);
    let g = grant(s, &req).await;
    charged_task(s, g, "quiet-1").await;
    clock.advance(SignedDuration::from_secs(50));
    // News 50 s in: the slot is kept for another TTL from now.
    observe(s, seen("quiet-1", TaskState::Processing, None)).await;
    clock.advance(SignedDuration::from_secs(50));
    refusal(s, &req).await;
    clock.advance(SignedDuration::from_secs(11));
    // News after the slot lapsed does not bring it back (in any scope).
    observe(s, seen("quiet-1", TaskState::Processing, None)).await;
    assert_eq!(running(s).await.total, 0, "no news for a whole TTL");
    grant(s, &req).await;
}

pub async fn off_peak_runs_hold_no_running_slot_unless_configured(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let off_peak = request("alice", "t", 5)
        .running_cap(Scope::User, "alice", 1)
        .off_peak();
    grant(s, &off_peak).await;
    grant(s, &off_peak).await;
    assert_eq!(running(s).await.total, 0);
    let mut holds = off_peak.clone();
    holds.running.offpeak_holds = true;
    grant(s, &holds).await;
    refusal(s, &holds).await;
    // A spooled write-back holds none.
    let mut none = holds.clone();
    none.running = RunningSpec::none();
    grant(s, &none).await;
}

/// The share groups of the example: weights 2:1:1 over 8 slots (a pool of weight 0).
fn share_groups() -> Vec<(ShareGroup, u32)> {
    vec![
        (ShareGroup::Team("a".into()), 4),
        (ShareGroup::Team("b".into()), 2),
        (ShareGroup::Team("c".into()), 2),
        (ShareGroup::Pool, 0),
    ]
}

/// A request of `user` in `team` under the global cap of `max` with the groups of `groups`.
fn shared(user: &str, team: &str, max: u32, groups: &[(ShareGroup, u32)]) -> AdmissionRequest {
    let group = groups
        .iter()
        .find(|(g, _)| *g == ShareGroup::Team(team.into()))
        .map_or(ShareGroup::Pool, |(g, _)| g.clone());
    let guarantee = groups
        .iter()
        .find(|(g, _)| *g == group)
        .map_or(0, |(_, q)| *q);
    let others: Vec<_> = groups
        .iter()
        .filter(|(g, _)| *g != group)
        .cloned()
        .collect();
    let mut req = request(user, team, 10).share(max, group, guarantee, &others);
    // Slots stay for the whole rule: nothing lapses here.
    req.running.ttl_ms = 86_400_000;
    req
}

pub async fn fair_share_lends_idle_slots_and_gives_them_back_as_tasks_end(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let groups = share_groups();
    let ask = |team: &str| shared(&format!("{team}-user"), team, 8, &groups);
    // A greedy team alone uses all 8 slots.
    for i in 0..8 {
        let g = grant(s, &ask("a")).await;
        charged_task(s, g, &format!("a-{i}")).await;
    }
    assert_eq!(
        running_refusal(refusal(s, &ask("a")).await).0,
        Scope::Global
    );
    // B and C arrive: nothing is free, so they wait (and are now active).
    assert_eq!(running_refusal(refusal(s, &ask("b")).await).3, None);
    refusal(s, &ask("c")).await;
    // As A's tasks end, the freed slots go to B and C until each has its guarantee; A is kept out.
    let end = async |id: &str| {
        observe(s, seen(id, TaskState::Success, None)).await;
    };
    end("a-0").await;
    let kept = running_refusal(refusal(s, &ask("a")).await).3;
    let kept = kept.unwrap_or_else(|| panic!("a slot is free but owed to B and C"));
    assert_eq!(
        (kept.running, kept.guarantee, kept.free, kept.owed),
        (7, 4, 1, 4)
    );
    let b1 = grant(s, &ask("b")).await;
    charged_task(s, b1, "b-1").await;
    end("a-1").await;
    grant(s, &ask("c")).await;
    end("a-2").await;
    grant(s, &ask("b")).await;
    end("a-3").await;
    refusal(s, &ask("a")).await;
    grant(s, &ask("c")).await;
    // Now A 4, B 2, C 2: every guarantee met, no slot free.
    let now = running(s).await;
    assert_eq!(
        (
            now.total,
            now.teams.get("a"),
            now.teams.get("b"),
            now.teams.get("c")
        ),
        (8, Some(&4), Some(&2), Some(&2))
    );
    for team in ["a", "b", "c"] {
        assert_eq!(running_refusal(refusal(s, &ask(team)).await).3, None);
    }
    // B's task ends: B (under its guarantee) gets the slot back, A (at its guarantee) does not.
    end("b-1").await;
    refusal(s, &ask("a")).await;
    grant(s, &ask("b")).await;
    // A's tasks all end. A asked lately, so its guarantee is owed to it: a team of the pool (guarantee 0) may
    // not borrow those slots.
    for i in 4..8 {
        end(&format!("a-{i}")).await;
    }
    let pool = || shared("x-user", "x", 8, &groups);
    let kept = running_refusal(refusal(s, &pool()).await).3;
    assert_eq!(kept.map(|k| (k.free, k.owed)), Some((4, 4)));
    // A falls idle (no task, no request for the idle time): the pool borrows every free slot.
    clock.advance(SignedDuration::from_millis(IDLE_MS as i64 + 1_000));
    for _ in 0..4 {
        grant(s, &pool()).await;
    }
    assert_eq!(
        running_refusal(refusal(s, &pool()).await).3,
        None,
        "none free"
    );
    // Running tasks are never cancelled to make room: A, back, waits for a slot to free.
    assert_eq!(running_refusal(refusal(s, &ask("a")).await).3, None);
}

/// A small deterministic generator for the random rule (xorshift64*).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One step of the random rule.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// A team (0..4: a, b, c, and "x" of the pool) asks for a slot.
    Ask(u8),
    /// The n-th running task (modulo how many run) ends.
    End(u8),
    /// Time passes (seconds).
    Wait(u16),
}

/// Runs `steps` on a fresh store under the global cap of 8 shared 2:1:1 (pool 0) and checks, after every step:
/// never more than 8 run; a group under its guarantee is never refused while a slot is free; and a group at or
/// over its guarantee is admitted only when the slots left free cover what the other active groups are owed.
pub async fn fair_share_invariants_hold(backend: &dyn Backend, steps: &[Step]) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let groups = share_groups();
    let teams = ["a", "b", "c", "x"];
    let mut tasks: Vec<(String, &str)> = Vec::new();
    let mut asked: std::collections::HashMap<&str, i64> = Default::default();
    let running_of = |now: &RunningNow, team: &str| {
        if team == "x" {
            now.total
                - ["a", "b", "c"]
                    .iter()
                    .map(|t| now.teams.get(*t).copied().unwrap_or(0))
                    .sum::<u32>()
        } else {
            now.teams.get(team).copied().unwrap_or(0)
        }
    };
    let guarantee_of = |team: &str| {
        groups
            .iter()
            .find(|(g, _)| match g {
                ShareGroup::Team(t) => t == team,
                ShareGroup::Pool => team == "x",
            })
            .map_or(0, |(_, q)| *q)
    };
    for (n, step) in steps.iter().enumerate() {
        match *step {
            Step::Ask(t) => {
                let team = teams[usize::from(t) % teams.len()];
                let before = running(s).await;
                let mine = running_of(&before, team);
                let guarantee = guarantee_of(team);
                let now_ms = crate::clock::Clock::now(clock.as_ref()).as_millisecond();
                asked.insert(team, now_ms);
                let req = shared(&format!("{team}-user"), team, 8, &groups);
                match decide(s, &req, Mode::Take).await.outcome {
                    Ok(Granted { grant: Some(g), .. }) => {
                        let id = format!("task-{n}");
                        charged_task(s, g, &id).await;
                        tasks.push((id, team));
                        if mine >= guarantee {
                            let owed: u32 = teams
                                .iter()
                                .filter(|t| **t != team)
                                .map(|t| {
                                    let r = running_of(&before, t);
                                    let active = r > 0
                                        || asked
                                            .get(t)
                                            .is_some_and(|at| *at > now_ms - IDLE_MS as i64);
                                    if active {
                                        guarantee_of(t).saturating_sub(r)
                                    } else {
                                        0
                                    }
                                })
                                .sum();
                            assert!(
                                8 - before.total > owed,
                                "step {n}: team {team} at or over its guarantee ({mine} >= {guarantee}) borrowed \
                                 a slot owed to others ({} running, {owed} owed)",
                                before.total
                            );
                        }
                    }
                    Ok(other) => panic!("a grant without a grant: {other:?}"),
                    Err(r) => {
                        assert!(
                            !(mine < guarantee && before.total < 8),
                            "step {n}: team {team} under its guarantee ({mine} < {guarantee}) was refused with \
                             {} of 8 running: {r:?}",
                            before.total
                        );
                    }
                }
            }
            Step::End(i) if !tasks.is_empty() => {
                let (id, _) = tasks.remove(usize::from(i) % tasks.len());
                observe(s, seen(&id, TaskState::Success, None)).await;
            }
            Step::End(_) => {}
            Step::Wait(secs) => clock.advance(SignedDuration::from_secs(i64::from(secs))),
        }
        let now = running(s).await;
        assert!(now.total <= 8, "step {n}: {} running of 8", now.total);
        assert_eq!(
            now.total as usize,
            tasks.len(),
            "step {n}: every running task counted once"
        );
    }
}

/// Random steps from `seed`: mostly asks and endings, now and then a wait shorter than a slot's TTL (tasks keep
/// their slots) but sometimes longer than the idle time in total.
pub fn random_steps(seed: u64, n: usize) -> Vec<Step> {
    let mut dice = Dice(seed.max(1));
    (0..n)
        .map(|_| match dice.roll(10) {
            0..=4 => Step::Ask(dice.roll(4) as u8),
            5..=8 => Step::End(dice.roll(256) as u8),
            _ => Step::Wait(dice.roll(50) as u16),
        })
        .collect()
}

pub async fn fair_share_invariants_hold_over_random_arrivals_and_endings(backend: &dyn Backend) {
    for seed in [7, 1_234_567, 0x5eed] {
        fair_share_invariants_hold(backend, &random_steps(seed, 120)).await;
    }
}
