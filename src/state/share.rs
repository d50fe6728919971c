//! Fair share of the global running-task slots, as arithmetic both backends apply (the memory store in Rust,
//! the Redis store in `admit.lua`, checked against each other by the conformance rules): guarantees from
//! weights, and whether one more task of a group fits.
//!
//! With `G` slots and weights `w` (each listed team, plus the pool of the teams not listed, which always counts),
//! a group is guaranteed `floor(G × w / W)`. A group under its guarantee is admitted whenever a slot is free; a
//! group at or over it only when, after taking the slot, the free slots still cover the unused guarantees of the
//! other *active* groups (a running task, or a request within `tasks.fair_share_idle_secs`).

/// A group's guarantee: `floor(max × weight / total_weight)` (0 when every weight is 0).
pub fn guarantee(max: u32, weight: u32, total_weight: u64) -> u32 {
    if total_weight == 0 {
        return 0;
    }
    u32::try_from(u64::from(max) * u64::from(weight) / total_weight).unwrap_or(u32::MAX)
}

/// Another group as the decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Other {
    pub running: u32,
    pub guarantee: u32,
    pub active: bool,
}

/// Why one more task of a group does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareFull {
    /// Every global slot is taken.
    NoSlot,
    /// The group is at or over its guarantee, and the free slots are owed to active groups under theirs.
    KeptForOthers {
        /// Free slots now.
        free: u32,
        /// The other active groups' unused guarantees.
        owed: u32,
    },
}

/// Whether a group running `running` tasks (guaranteed `guarantee`) may start one more, with `total` tasks
/// running in all.
pub fn admits(
    max: u32,
    total: u32,
    running: u32,
    guarantee: u32,
    others: impl IntoIterator<Item = Other>,
) -> Result<(), ShareFull> {
    if total >= max {
        return Err(ShareFull::NoSlot);
    }
    if running < guarantee {
        return Ok(());
    }
    let free = max - total;
    let owed: u32 = others
        .into_iter()
        .filter(|o| o.active)
        .map(|o| o.guarantee.saturating_sub(o.running))
        .fold(0u32, u32::saturating_add);
    if free > owed {
        Ok(())
    } else {
        Err(ShareFull::KeptForOthers { free, owed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other(running: u32, guarantee: u32, active: bool) -> Other {
        Other {
            running,
            guarantee,
            active,
        }
    }

    #[test]
    fn guarantees_are_floored_shares_of_the_total_weight() {
        // Weights 2:1:1 and a pool of weight 0 over 8 slots.
        assert_eq!(guarantee(8, 2, 4), 4);
        assert_eq!(guarantee(8, 1, 4), 2);
        // The pool always counts: 2:1:1 + pool 1.
        assert_eq!(guarantee(8, 2, 5), 3);
        assert_eq!(guarantee(8, 1, 5), 1);
        assert_eq!(guarantee(8, 0, 5), 0);
        assert_eq!(guarantee(8, 3, 0), 0);
    }

    #[test]
    fn a_group_alone_borrows_every_idle_slot() {
        let idle = [other(0, 2, false), other(0, 2, false)];
        for running in 0..8 {
            assert_eq!(admits(8, running, running, 4, idle), Ok(()));
        }
        assert_eq!(admits(8, 8, 8, 4, idle), Err(ShareFull::NoSlot));
    }

    #[test]
    fn borrowing_stops_while_an_active_group_is_under_its_guarantee() {
        // The greedy group runs 5 (guarantee 4); B is active with 1 of 2, C idle.
        let others = [other(1, 2, true), other(0, 2, false)];
        // 6 running of 8: 2 free, B is owed 1 → one more fits (1 free left for B).
        assert_eq!(admits(8, 6, 5, 4, others), Ok(()));
        // 7 running: 1 free, owed to B.
        assert_eq!(
            admits(8, 7, 6, 4, others),
            Err(ShareFull::KeptForOthers { free: 1, owed: 1 })
        );
        // B itself is under its guarantee: admitted while a slot is free.
        assert_eq!(admits(8, 7, 1, 2, [other(6, 4, true)]), Ok(()));
    }
}
