//! Time as a dependency: the system clock in production, a clock tests move by hand.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};

/// Wall-clock time. Everything that depends on "now" (sandbox task progress, budget periods, hour windows,
/// token expiry in tests) reads it from here.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> Timestamp;
}

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(Self(Mutex::new(start)))
    }

    pub fn advance(&self, by: SignedDuration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = t.checked_add(by).unwrap_or(*t);
    }

    pub fn set(&self, to: Timestamp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The shared state backend's time as this replica sees it: its own clock plus the offset the last heartbeat
/// measured. Budget periods and hour windows read it, so that every replica puts a request made at midnight in
/// the same day, whatever their own clocks say.
#[derive(Debug)]
pub struct AlignedClock {
    local: SharedClock,
    offset_us: AtomicI64,
}

impl AlignedClock {
    pub fn new(local: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            local,
            offset_us: AtomicI64::new(0),
        })
    }

    /// The replica's own clock.
    pub fn local(&self) -> Timestamp {
        self.local.now()
    }

    /// Aligns to `backend_now`, read by the backend between `sent` and `received` (local times): the offset is
    /// taken at the midpoint of the round trip. Returns the new offset.
    pub fn align(
        &self,
        backend_now: Timestamp,
        sent: Timestamp,
        received: Timestamp,
    ) -> SignedDuration {
        let half = received.duration_since(sent) / 2;
        let mid = sent.checked_add(half).unwrap_or(sent);
        let offset = backend_now.duration_since(mid);
        let us = i64::try_from(offset.as_micros()).unwrap_or(0);
        self.offset_us.store(us, Ordering::Relaxed);
        offset
    }

    pub fn offset(&self) -> SignedDuration {
        SignedDuration::from_micros(self.offset_us.load(Ordering::Relaxed))
    }
}

impl Clock for AlignedClock {
    fn now(&self) -> Timestamp {
        let now = self.local.now();
        now.checked_add(self.offset()).unwrap_or(now)
    }
}

/// How records are stamped (tasks, reservations, audit entries, readings): RFC 3339 in UTC with milliseconds, one
/// fixed width, so that stamps sort as text (SQLite's `created_at >= ?`, Redis's lex ranges) as they do in time.
pub fn stamp(t: Timestamp) -> String {
    format!("{t:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aligned_clock_reads_the_backends_time_measured_at_the_middle_of_the_round_trip() {
        let local = ManualClock::new("2026-12-02T23:59:59.000Z".parse().unwrap());
        let clock = AlignedClock::new(local.clone());
        // Redis says 00:00:01.000 when the replica's clock said 23:59:59.010 (sent .000, answered .020).
        let offset = clock.align(
            "2026-12-03T00:00:01Z".parse().unwrap(),
            "2026-12-02T23:59:59.000Z".parse().unwrap(),
            "2026-12-02T23:59:59.020Z".parse().unwrap(),
        );
        assert_eq!(offset, SignedDuration::from_millis(1990));
        assert_eq!(clock.now().to_string(), "2026-12-03T00:00:00.99Z");
        local.advance(SignedDuration::from_millis(10));
        assert_eq!(clock.now().to_string(), "2026-12-03T00:00:01Z");
    }
}
