//! The memory backend's `Idempotency-Key` records: claims and stored answers in memory under a lock of their own
//! (each decision atomic; no admission waits for it), stored answers also written through the ledger writer and
//! loaded back when the store opens, so a restart does not forget them. A claim lives for one request of this one
//! process and is not written.

use super::*;
use crate::state::ledger_idempotency::IdemWrite;

/// Expired records are pruned (in memory and in the ledger) every this many claims.
const PRUNE_EVERY: u32 = 1024;

/// A key's record.
enum Record {
    /// A request holds the key until `until_ms` (its lease).
    Flight {
        token: String,
        hash: String,
        until_ms: i64,
    },
    /// The answer it got, kept until `until_ms`.
    Stored {
        hash: String,
        answer: StoredAnswer,
        until_ms: i64,
    },
}

impl Record {
    fn until_ms(&self) -> i64 {
        match self {
            Record::Flight { until_ms, .. } | Record::Stored { until_ms, .. } => *until_ms,
        }
    }
}

pub(super) struct Keys {
    clock: SharedClock,
    /// By `IdemKey::digest()`.
    records: HashMap<String, Record>,
    claims: u32,
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX / 4)
}

impl Keys {
    /// Loads the answers the ledger holds that have not expired.
    pub(super) fn load(ledger: &Ledger, clock: SharedClock) -> anyhow::Result<Self> {
        let now = clock.now().as_millisecond();
        let records = ledger
            .idempotency_answers(now)?
            .into_iter()
            .map(|row| {
                let record = Record::Stored {
                    hash: row.body_hash,
                    answer: row.answer,
                    until_ms: row.expires_ms,
                };
                (row.scope, record)
            })
            .collect();
        Ok(Self {
            clock,
            records,
            claims: 0,
        })
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().as_millisecond()
    }

    /// The key's record, unless it lapsed (an expired lease or answer is no record).
    fn live(&self, scope: &str, now: i64) -> Option<&Record> {
        self.records.get(scope).filter(|r| r.until_ms() > now)
    }

    fn claim(&mut self, c: &IdemClaim, writer: &Writer) -> Claim {
        let now = self.now_ms();
        self.claims = self.claims.wrapping_add(1);
        if self.claims.is_multiple_of(PRUNE_EVERY) {
            self.records.retain(|_, r| r.until_ms() > now);
            writer.send(Write::Idempotency(IdemWrite::Prune { before_ms: now }));
        }
        let scope = c.key.digest();
        let hash = c.hash_hex();
        match self.live(&scope, now) {
            Some(Record::Stored { hash: h, .. } | Record::Flight { hash: h, .. }) if *h != hash => {
                Claim::Reused
            }
            Some(Record::Stored { answer, .. }) => Claim::Replay(answer.clone()),
            Some(Record::Flight { until_ms, .. }) => Claim::InFlight {
                lease_left_ms: u64::try_from(until_ms - now).unwrap_or(0),
            },
            None => {
                self.records.insert(
                    scope,
                    Record::Flight {
                        token: c.token.clone(),
                        hash,
                        until_ms: now.saturating_add(ms(c.lease_ms)),
                    },
                );
                Claim::Claimed
            }
        }
    }

    /// Whether `c` holds the key (its lease may have lapsed, as long as no other request took the key since).
    fn holds(&self, scope: &str, c: &IdemClaim) -> bool {
        matches!(self.records.get(scope), Some(Record::Flight { token, .. }) if *token == c.token)
    }

    fn abandon(&mut self, c: &IdemClaim) {
        let scope = c.key.digest();
        if self.holds(&scope, c) {
            self.records.remove(&scope);
        }
    }

    fn keep(
        &mut self,
        c: &IdemClaim,
        answer: &StoredAnswer,
        ttl_secs: u64,
        writer: &Writer,
    ) -> bool {
        let now = self.now_ms();
        let scope = c.key.digest();
        if !self.holds(&scope, c) && self.live(&scope, now).is_some() {
            return false;
        }
        let until_ms = now.saturating_add(ms(ttl_secs).saturating_mul(1000));
        writer.send(Write::Idempotency(IdemWrite::put(c, answer, until_ms)));
        self.records.insert(
            scope,
            Record::Stored {
                hash: c.hash_hex(),
                answer: answer.clone(),
                until_ms,
            },
        );
        true
    }
}

impl MemoryStore {
    fn idem(&self) -> MutexGuard<'_, Keys> {
        self.shared.idem.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Idempotency for MemoryStore {
    fn claim<'a>(&'a self, claim: &'a IdemClaim) -> Answer<'a, Claim> {
        let answer = self.idem().claim(claim, &self.shared.writer);
        ready(Ok(answer)).boxed()
    }

    fn abandon<'a>(&'a self, claim: &'a IdemClaim) -> Answer<'a, ()> {
        self.idem().abandon(claim);
        ready(Ok(())).boxed()
    }

    fn keep<'a>(
        &'a self,
        claim: &'a IdemClaim,
        answer: &'a StoredAnswer,
        ttl_secs: u64,
    ) -> Answer<'a, bool> {
        let kept = self
            .idem()
            .keep(claim, answer, ttl_secs, &self.shared.writer);
        ready(Ok(kept)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn claim(key: &str, body: &[u8]) -> IdemClaim {
        let key = IdemKey {
            user: "alice".into(),
            key: key.into(),
        };
        IdemClaim::new(key, body, 40_000)
    }

    /// A stored answer survives a restart, byte for byte, until its time is up; a claim in flight does not
    /// (it belonged to a request of the process that stopped).
    #[actix_web::test]
    async fn a_stored_answer_survives_a_restart_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        let clock = ManualClock::new(jiff::Timestamp::from_second(1_795_600_800).unwrap());
        let answer = StoredAnswer {
            status: 504,
            headers: vec![("x-credits-estimated".into(), "55".into())],
            body: bytes::Bytes::from_static(b"{\"code\":504,\xff}"),
        };
        let (first, flying) = (claim("k-1", b"body"), claim("k-2", b"body"));
        {
            let store = MemoryStore::open(&path, clock.clone(), Default::default()).unwrap();
            assert_eq!(store.claim(&first).await.unwrap(), Claim::Claimed);
            assert!(store.keep(&first, &answer, 60).await.unwrap());
            assert_eq!(store.claim(&flying).await.unwrap(), Claim::Claimed);
            store.flush().await.unwrap();
        }
        let store = MemoryStore::open(&path, clock.clone(), Default::default()).unwrap();
        let again = claim("k-1", b"body");
        assert_eq!(
            store.claim(&again).await.unwrap(),
            Claim::Replay(answer.clone())
        );
        assert_eq!(
            store.claim(&claim("k-1", b"other")).await.unwrap(),
            Claim::Reused
        );
        assert_eq!(
            store.claim(&claim("k-2", b"body")).await.unwrap(),
            Claim::Claimed
        );
        drop(store);
        clock.advance(jiff::SignedDuration::from_secs(61));
        let store = MemoryStore::open(&path, clock, Default::default()).unwrap();
        assert_eq!(store.claim(&again).await.unwrap(), Claim::Claimed);
    }
}
