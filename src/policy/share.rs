//! Which share group a team is in under `[policy.global] max_running_tasks`, and every group's guarantee: each
//! team listed under `[policy.teams]` weighs its `task_share` (default 1), the pool of all teams not listed weighs
//! `policy.defaults.task_share` (default 1) and always counts; a group is guaranteed `floor(G × w / W)`.

use crate::config::{Settings, TeamPolicy};
use crate::state::share::guarantee;
use crate::state::{ShareGroup, ShareSpec};

fn weight_of(p: &TeamPolicy) -> u32 {
    p.task_share.unwrap_or(1)
}

/// The fair share of a request of `team` (`None` without a global running-task cap).
pub fn share_spec(settings: &Settings, team: Option<&str>) -> Option<ShareSpec> {
    let policy = &settings.policy;
    let max = policy.global.max_running_tasks?.get();
    let pool_weight = policy.defaults.task_share.unwrap_or(1);
    let total: u64 = policy
        .teams
        .values()
        .map(|p| u64::from(weight_of(p)))
        .sum::<u64>()
        + u64::from(pool_weight);
    let (group, weight, guarantee_source) = match team.and_then(|t| policy.teams.get_key_value(t)) {
        Some((t, p)) => (
            ShareGroup::Team(t.clone()),
            weight_of(p),
            format!(
                "policy.teams.{t}.task_share = {} of a total weight of {total}",
                weight_of(p)
            ),
        ),
        None => (
            ShareGroup::Pool,
            pool_weight,
            format!(
                "policy.defaults.task_share = {pool_weight} of a total weight of {total}, shared by every team not \
                 listed under [policy.teams]"
            ),
        ),
    };
    let others = policy
        .teams
        .iter()
        .map(|(t, p)| (ShareGroup::Team(t.clone()), weight_of(p)))
        .chain([(ShareGroup::Pool, pool_weight)])
        .filter(|(g, _)| *g != group)
        .map(|(g, w)| (g, guarantee(max, w, total)))
        .collect();
    Some(ShareSpec {
        max,
        source: "policy.global.max_running_tasks".into(),
        group,
        guarantee: guarantee(max, weight, total),
        guarantee_source,
        others,
        idle_ms: settings.tasks.fair_share_idle_secs.saturating_mul(1000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_settings as settings;

    #[test]
    fn listed_teams_and_the_pool_share_the_global_cap_by_weight() {
        let s = settings(
            "[policy.global]\nmax_running_tasks = 8\n[policy.defaults]\ntask_share = 0\n\
             [policy.teams.a]\ntask_share = 2\n[policy.teams.b]\n[policy.teams.c]\ntask_share = 1\n",
        );
        let a = share_spec(&s, Some("a")).unwrap();
        assert_eq!(
            (a.group.clone(), a.guarantee),
            (ShareGroup::Team("a".into()), 4)
        );
        assert_eq!(
            a.others,
            vec![
                (ShareGroup::Team("b".into()), 2),
                (ShareGroup::Team("c".into()), 2),
                (ShareGroup::Pool, 0)
            ]
        );
        assert_eq!(
            a.guarantee_source,
            "policy.teams.a.task_share = 2 of a total weight of 4"
        );
        // A team not listed, or no team: the pool.
        let x = share_spec(&s, Some("x")).unwrap();
        assert_eq!(
            (x.group, x.guarantee, x.others.len()),
            (ShareGroup::Pool, 0, 3)
        );
        assert_eq!(share_spec(&s, None).unwrap().group, ShareGroup::Pool);
        // The pool always counts: weight 1 by default.
        let s =
            settings("[policy.global]\nmax_running_tasks = 8\n[policy.teams.a]\ntask_share = 2\n");
        assert_eq!(share_spec(&s, Some("a")).unwrap().guarantee, 5);
        assert_eq!(share_spec(&s, Some("zzz")).unwrap().guarantee, 2);
        assert!(share_spec(&settings(""), Some("a")).is_none());
    }
}
