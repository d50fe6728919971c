//! Rate limits with governor's GCRA, one keyed limiter per quota, over a state store that can be rolled back:
//! admission checks the user, team and global limits and keeps the tokens only when the whole request is
//! admitted (a request refused anywhere consumes no rate token). A refusal says which part of the limit ran out:
//! the burst, or the per-minute rate (`Exhausted`).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::Clock as GovernorClock;
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::clock::SharedClock;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type Tat = Arc<Mutex<HashMap<String, Nanos>>>;

/// governor's state, readable and restorable by the admission store.
#[derive(Clone, Default)]
struct SnapshotStore(Tat);

impl StateStore for SnapshotStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = map.get_mut(key) {
            let (out, new) = f(Some(*tat))?;
            *tat = new;
            return Ok(out);
        }
        let (out, new) = f(None)?;
        map.insert(key.clone(), new);
        Ok(out)
    }
}

/// The gateway's clock, as governor sees it (nanoseconds since the Unix epoch).
struct GovClock(SharedClock);

impl GovernorClock for GovClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(u64::try_from(self.0.now().as_nanosecond()).unwrap_or(0))
    }
}

type Limiter = RateLimiter<String, SnapshotStore, GovClock, StateInformationMiddleware>;

struct Entry {
    limiter: Limiter,
    state: Tat,
    /// governor measures state relative to the limiter's creation.
    start: u64,
    /// Per key, when (relative to `start`) its bucket last went from full to draining: the admission that took
    /// the first token of a full bucket. Read only while the bucket is not full, so never rolled back: an undone
    /// admission leaves the bucket full, and the next one from a full bucket writes it again.
    draining_since: HashMap<String, u64>,
}

/// Which part of a rate limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// The bucket emptied within a minute of last being full: more than the burst was sent at once.
    Burst,
    /// The bucket has not been full for a minute or more: at least the per-minute figure was sent in the last
    /// minute (it refilled by exactly that much meanwhile, and all of it was used).
    PerMinute,
}

/// A bucket drained for this long has admitted at least its per-minute figure within the last minute.
const MINUTE_NANOS: u64 = 60_000_000_000;

/// What a check left behind, to undo it.
pub struct Undo {
    state: Tat,
    key: String,
    previous: Option<Nanos>,
}

pub enum Checked {
    Allowed {
        remaining: u32,
        undo: Undo,
    },
    Limited {
        retry_after_secs: u64,
        exhausted: Exhausted,
    },
}

pub struct RateLimits {
    clock: SharedClock,
    limiters: HashMap<(NonZeroU32, NonZeroU32), Entry>,
    checks: u64,
}

impl RateLimits {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            limiters: HashMap::default(),
            checks: 0,
        }
    }

    /// One GCRA check of `key` under `per_minute`/`burst`. On success the token is taken; `undo` gives it back.
    pub fn check(&mut self, key: String, per_minute: NonZeroU32, burst: NonZeroU32) -> Checked {
        self.checks += 1;
        if self.checks.is_multiple_of(4096) {
            self.prune();
        }
        let clock = self.clock.clone();
        let entry = self.limiters.entry((per_minute, burst)).or_insert_with(|| {
            let state = Tat::default();
            let limiter =
                RateLimiter::<String, SnapshotStore, GovClock, NoOpMiddleware<Nanos>>::new(
                    Quota::per_minute(per_minute).allow_burst(burst),
                    SnapshotStore(state.clone()),
                    GovClock(clock.clone()),
                )
                .with_middleware::<StateInformationMiddleware>();
            let start = GovClock(clock.clone()).now().as_u64();
            Entry {
                limiter,
                state,
                start,
                draining_since: HashMap::default(),
            }
        });
        let previous = entry
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        let now = GovClock(clock.clone()).now();
        let elapsed = now.as_u64().saturating_sub(entry.start);
        // A theoretical arrival time not after now: the bucket is full.
        let was_full = previous.is_none_or(|tat| tat.as_u64() <= elapsed);
        match entry.limiter.check_key(&key) {
            Ok(snapshot) => {
                if was_full {
                    entry.draining_since.insert(key.clone(), elapsed);
                }
                Checked::Allowed {
                    remaining: snapshot.remaining_burst_capacity(),
                    undo: Undo {
                        state: entry.state.clone(),
                        key,
                        previous,
                    },
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(now);
                let drained_for = entry
                    .draining_since
                    .get(&key)
                    .map_or(0, |since| elapsed.saturating_sub(*since));
                Checked::Limited {
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                    exhausted: if drained_for >= MINUTE_NANOS {
                        Exhausted::PerMinute
                    } else {
                        Exhausted::Burst
                    },
                }
            }
        }
    }

    /// Forgets keys whose bucket is full again (what governor's `retain_recent` does for its own stores).
    fn prune(&mut self) {
        let now = GovClock(self.clock.clone()).now().as_u64();
        self.limiters.retain(|_, e| {
            let elapsed = now.saturating_sub(e.start);
            let mut map = e.state.lock().unwrap_or_else(|p| p.into_inner());
            // A theoretical arrival time already passed means a full bucket: same as no entry.
            map.retain(|_, tat| tat.as_u64() > elapsed);
            e.draining_since.retain(|key, _| map.contains_key(key));
            !map.is_empty()
        });
    }
}

impl Undo {
    pub fn undo(self) {
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match self.previous {
            Some(p) => map.insert(self.key, p),
            None => map.remove(&self.key),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use jiff::{SignedDuration, Timestamp};

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn limits() -> (RateLimits, Arc<ManualClock>) {
        let clock = ManualClock::new(Timestamp::from_second(1_800_000_000).unwrap());
        (RateLimits::new(clock.clone()), clock)
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let (mut r, clock) = limits();
        for _ in 0..3 {
            assert!(matches!(
                r.check("u".into(), nz(60), nz(3)),
                Checked::Allowed { .. }
            ));
        }
        match r.check("u".into(), nz(60), nz(3)) {
            Checked::Limited {
                retry_after_secs, ..
            } => assert_eq!(retry_after_secs, 1),
            Checked::Allowed { .. } => panic!("over the burst"),
        }
        assert!(
            matches!(
                r.check("other".into(), nz(60), nz(3)),
                Checked::Allowed { .. }
            ),
            "keys are independent"
        );
        clock.advance(SignedDuration::from_secs(1));
        assert!(matches!(
            r.check("u".into(), nz(60), nz(3)),
            Checked::Allowed { .. }
        ));
    }

    fn exhausted(r: &mut RateLimits, per_minute: u32, burst: u32) -> Option<Exhausted> {
        match r.check("u".into(), nz(per_minute), nz(burst)) {
            Checked::Allowed { .. } => None,
            Checked::Limited { exhausted, .. } => Some(exhausted),
        }
    }

    #[test]
    fn a_refusal_names_the_burst_or_the_per_minute_rate() {
        let (mut r, clock) = limits();
        // 60/min, burst 3: three at once, then the fourth is over the burst.
        for _ in 0..3 {
            assert_eq!(exhausted(&mut r, 60, 3), None);
        }
        assert_eq!(exhausted(&mut r, 60, 3), Some(Exhausted::Burst));
        // One a second, as fast as it refills, for 59 s: still the burst (the bucket was full under a minute ago).
        for _ in 0..59 {
            clock.advance(SignedDuration::from_secs(1));
            assert_eq!(exhausted(&mut r, 60, 3), None);
        }
        assert_eq!(exhausted(&mut r, 60, 3), Some(Exhausted::Burst));
        // One more second: a full minute without refilling, 63 requests admitted in it.
        clock.advance(SignedDuration::from_secs(1));
        assert_eq!(exhausted(&mut r, 60, 3), None);
        assert_eq!(exhausted(&mut r, 60, 3), Some(Exhausted::PerMinute));
        // Idle until the bucket is full again: the burst is what runs out next.
        clock.advance(SignedDuration::from_secs(10));
        for _ in 0..3 {
            assert_eq!(exhausted(&mut r, 60, 3), None);
        }
        assert_eq!(exhausted(&mut r, 60, 3), Some(Exhausted::Burst));
    }

    #[test]
    fn undo_gives_the_token_back() {
        let (mut r, _) = limits();
        let Checked::Allowed { undo, remaining } = r.check("u".into(), nz(1), nz(1)) else {
            panic!()
        };
        assert_eq!(remaining, 0);
        undo.undo();
        assert!(matches!(
            r.check("u".into(), nz(1), nz(1)),
            Checked::Allowed { .. }
        ));
        assert!(matches!(
            r.check("u".into(), nz(1), nz(1)),
            Checked::Limited { .. }
        ));
    }
}
