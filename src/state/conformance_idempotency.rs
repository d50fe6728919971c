//! The `Idempotency` contract as executable rules, for every backend (beside `conformance.rs`, with its
//! [`Backend`] factories): a backend runs them with `run_idempotency_conformance!(its_backend)` in its test module.

use std::sync::Arc;

use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};

use super::conformance::{Backend, Opened};
use super::*;
use crate::clock::ManualClock;

/// Every rule, as `#[actix_web::test]` functions in the calling module (prefixed `idempotency_`).
macro_rules! run_idempotency_conformance {
    ($backend:expr) => {
        $crate::state::conformance_idempotency::run_idempotency_conformance!(
            @rules $backend;
            idempotency_a_key_is_claimed_once_then_in_flight,
            idempotency_a_stored_answer_is_replayed_byte_for_byte_to_the_same_body,
            idempotency_another_body_is_refused_in_flight_and_stored,
            idempotency_an_abandoned_claim_frees_the_key,
            idempotency_a_lapsed_lease_frees_the_key_and_a_stale_claim_cannot_undo_the_next,
            idempotency_a_lapsed_claim_nobody_took_still_stores_its_answer,
            idempotency_a_stored_answer_expires_after_its_ttl,
            idempotency_keys_are_scoped_to_the_user,
        );
    };
    (@rules $backend:expr; $($rule:ident),* $(,)?) => {
        $(
            #[actix_web::test]
            async fn $rule() {
                if !$crate::state::conformance::Backend::available(&$backend) {
                    return;
                }
                $crate::state::conformance_idempotency::$rule(&$backend).await;
            }
        )*
    };
}
pub(crate) use run_idempotency_conformance;

/// The lease of a claim in these rules (a create's `upstream.request_timeout_ms` + 10 s).
const LEASE_MS: u64 = 40_000;

async fn open(backend: &dyn Backend) -> (Opened, Arc<ManualClock>) {
    let clock = ManualClock::new(Timestamp::from_second(1_795_600_800).unwrap_or_default());
    let opened = backend.open(clock.clone()).await;
    (opened, clock)
}

fn claim_of(user: &str, key: &str, body: &str) -> IdemClaim {
    let key = IdemKey {
        user: user.into(),
        key: key.into(),
    };
    IdemClaim::new(key, body.as_bytes(), LEASE_MS)
}

/// A Vidu answer with bytes that are not UTF-8, and the gateway's headers.
fn answer(n: u8) -> StoredAnswer {
    StoredAnswer {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-credits-estimated".into(), format!("5{n}")),
        ],
        body: Bytes::from(vec![b'{', n, 0xff, 0x00, b'}']),
    }
}

async fn claim(s: &dyn Store, c: &IdemClaim) -> Claim {
    s.claim(c).await.unwrap_or_else(|e| panic!("claim: {e}"))
}

async fn keep(s: &dyn Store, c: &IdemClaim, a: &StoredAnswer, ttl_secs: u64) -> bool {
    s.keep(c, a, ttl_secs)
        .await
        .unwrap_or_else(|e| panic!("keep: {e}"))
}

async fn abandon(s: &dyn Store, c: &IdemClaim) {
    s.abandon(c)
        .await
        .unwrap_or_else(|e| panic!("abandon: {e}"));
}

pub async fn idempotency_a_key_is_claimed_once_then_in_flight(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let first = claim_of("alice", "k", "body");
    assert_eq!(claim(s, &first).await, Claim::Claimed);
    clock.advance(SignedDuration::from_secs(10));
    // The same request again (a new token): the first still runs.
    match claim(s, &claim_of("alice", "k", "body")).await {
        Claim::InFlight { lease_left_ms } => {
            assert!(
                (29_000..=30_000).contains(&lease_left_ms),
                "30 s of the lease are left: {lease_left_ms}"
            );
        }
        other => panic!("expected in flight, got {other:?}"),
    }
    // Even the same claim twice does not hold the key twice.
    assert!(matches!(claim(s, &first).await, Claim::InFlight { .. }));
}

pub async fn idempotency_a_stored_answer_is_replayed_byte_for_byte_to_the_same_body(
    backend: &dyn Backend,
) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let first = claim_of("alice", "k", "body");
    assert_eq!(claim(s, &first).await, Claim::Claimed);
    assert!(keep(s, &first, &answer(1), 60).await);
    for _ in 0..2 {
        assert_eq!(
            claim(s, &claim_of("alice", "k", "body")).await,
            Claim::Replay(answer(1))
        );
    }
    // A second answer for the same claim does not replace the first.
    assert!(!keep(s, &claim_of("alice", "k", "body"), &answer(2), 60).await);
    assert_eq!(
        claim(s, &claim_of("alice", "k", "body")).await,
        Claim::Replay(answer(1))
    );
}

pub async fn idempotency_another_body_is_refused_in_flight_and_stored(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let first = claim_of("alice", "k", "body");
    assert_eq!(claim(s, &first).await, Claim::Claimed);
    assert_eq!(
        claim(s, &claim_of("alice", "k", "other body")).await,
        Claim::Reused
    );
    assert!(keep(s, &first, &answer(1), 60).await);
    assert_eq!(
        claim(s, &claim_of("alice", "k", "other body")).await,
        Claim::Reused
    );
    // Refusing it changed nothing.
    assert_eq!(
        claim(s, &claim_of("alice", "k", "body")).await,
        Claim::Replay(answer(1))
    );
}

pub async fn idempotency_an_abandoned_claim_frees_the_key(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let first = claim_of("alice", "k", "body");
    assert_eq!(claim(s, &first).await, Claim::Claimed);
    abandon(s, &first).await;
    // The caller fixed the body and retries with the same key.
    let fixed = claim_of("alice", "k", "fixed body");
    assert_eq!(claim(s, &fixed).await, Claim::Claimed);
    // Abandoning again, or a claim that holds nothing, changes nothing.
    abandon(s, &first).await;
    assert!(matches!(
        claim(s, &claim_of("alice", "k", "fixed body")).await,
        Claim::InFlight { .. }
    ));
}

pub async fn idempotency_a_lapsed_lease_frees_the_key_and_a_stale_claim_cannot_undo_the_next(
    backend: &dyn Backend,
) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let stale = claim_of("alice", "k", "body");
    assert_eq!(claim(s, &stale).await, Claim::Claimed);
    clock.advance(SignedDuration::from_millis(LEASE_MS as i64 - 1));
    assert!(matches!(
        claim(s, &claim_of("alice", "k", "body")).await,
        Claim::InFlight { .. }
    ));
    clock.advance(SignedDuration::from_millis(1));
    // Its replica stopped: the lease has run out, the key is free again (for any body).
    let next = claim_of("alice", "k", "body");
    assert_eq!(claim(s, &next).await, Claim::Claimed);
    // The stale holder can neither free the key nor store its answer over the new claim.
    abandon(s, &stale).await;
    assert!(matches!(
        claim(s, &claim_of("alice", "k", "body")).await,
        Claim::InFlight { .. }
    ));
    assert!(!keep(s, &stale, &answer(1), 60).await);
    assert!(keep(s, &next, &answer(2), 60).await);
    assert_eq!(
        claim(s, &claim_of("alice", "k", "body")).await,
        Claim::Replay(answer(2))
    );
}

pub async fn idempotency_a_lapsed_claim_nobody_took_still_stores_its_answer(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let slow = claim_of("alice", "k", "body");
    assert_eq!(claim(s, &slow).await, Claim::Claimed);
    clock.advance(SignedDuration::from_millis(LEASE_MS as i64 + 5_000));
    // Vidu answered after all: the answer is kept, so a retry does not create a second task.
    assert!(keep(s, &slow, &answer(1), 60).await);
    assert_eq!(
        claim(s, &claim_of("alice", "k", "body")).await,
        Claim::Replay(answer(1))
    );
}

pub async fn idempotency_a_stored_answer_expires_after_its_ttl(backend: &dyn Backend) {
    let (o, clock) = open(backend).await;
    let s = o.store.as_ref();
    let first = claim_of("alice", "k", "body");
    assert_eq!(claim(s, &first).await, Claim::Claimed);
    assert!(keep(s, &first, &answer(1), 60).await);
    clock.advance(SignedDuration::from_secs(59));
    assert_eq!(
        claim(s, &claim_of("alice", "k", "other body")).await,
        Claim::Reused
    );
    clock.advance(SignedDuration::from_secs(1));
    // Its time is up: the key is new again.
    assert_eq!(
        claim(s, &claim_of("alice", "k", "other body")).await,
        Claim::Claimed
    );
}

pub async fn idempotency_keys_are_scoped_to_the_user(backend: &dyn Backend) {
    let (o, _) = open(backend).await;
    let s = o.store.as_ref();
    let alice = claim_of("alice", "k", "body");
    assert_eq!(claim(s, &alice).await, Claim::Claimed);
    assert!(keep(s, &alice, &answer(1), 60).await);
    // Bob's `k` is not Alice's, with or without the same body; nor is a user whose name ends where the key starts.
    let bob = claim_of("bob", "k", "body");
    assert_eq!(claim(s, &bob).await, Claim::Claimed);
    assert_eq!(
        claim(s, &claim_of("alicek", "", "body")).await,
        Claim::Claimed
    );
    assert!(keep(s, &bob, &answer(2), 60).await);
    assert_eq!(claim(s, &alice).await, Claim::Replay(answer(1)));
    assert_eq!(claim(s, &bob).await, Claim::Replay(answer(2)));
}
