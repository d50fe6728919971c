//! Micro-benchmarks of the per-request hot path, beside `benches/validate.rs` (request parsing and validation,
//! small and 15 MB data URI — not repeated here):
//!
//! - `jwt_verify/{hs256,rs256,es256}`: `Authenticator::verify` of a valid token seen for the first time (fixture
//!   keys in `tests/fixtures/keys`): header, algorithm allow-list, key, signature, time claims, identity claims;
//!   `jwt_verify_again/*`: the same token again through the same authenticator (what a cache of verified
//!   tokens answers, when there is one);
//! - `pricing/estimate`: `catalog::pricing::estimate`, and `pricing/effective_estimate` (price found at validation);
//! - `policy/prepare`: `policy::admission::prepare` — user/team rules, periods in the policy time zone, the
//!   off-peak decision and the admission request with all its buckets;
//! - `admission/admit`: `MemoryStore::admit` (one lock, 3 slot specs, 6 budgets, 3 GCRA rate specs, one write
//!   queued to the ledger); the grant finished (slots freed, reservation settled) after each iteration, outside
//!   the timing. `admission/admit_dry_run` is the quote's check (no ledger write). `admission/lifecycle` is all
//!   the state work one forwarded request costs: admit, then finish (charged, with a task);
//! - `request/create_admit_small`: `create::admit` as the handler calls it — validate, prepare, admit, metrics,
//!   forward body — plus the finish of the lifecycle, i.e. the gateway's whole per-request work except HTTP
//!   (actix in, awc out) and JWT verification.
//!
//! Run: `cargo bench --bench hot_path` (with `CARGO_TARGET_DIR` as you build). `verify` is async only to refetch
//! a JWKS for an unknown `kid`; with PEM keys it never awaits, so it is driven by `now_or_never`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use vidu_gateway::admit::prepare;
use vidu_gateway::auth::mint::{Claims, mint, mint_with_key};
use vidu_gateway::auth::{Authenticator, Identity};
use vidu_gateway::catalog::pricing::{Decimal, EstimateInput, estimate};
use vidu_gateway::clock::{SharedClock, SystemClock};
use vidu_gateway::config::{AuthSettings, Origin, Secret, Settings, load_from_str};
use vidu_gateway::flow::{Body, Context, admit};
use vidu_gateway::metrics::Metrics;
use vidu_gateway::policy::periods::periods;
use vidu_gateway::state::memory::MemoryStore;
use vidu_gateway::state::*;
use vidu_gateway::validate::validate;

/// The small request of the HTTP benchmark (../shared/bench/bench.sh).
const SMALL: &[u8] = br#"{"model":"viduq2","images":["https://example.com/first-frame.png"],"prompt":"a cat surfing a wave at sunset","duration":5,"resolution":"720p"}"#;

/// The policy of bench/run.sh: every user, team and global bucket set, none ever reached.
const POLICY: &str = r#"
[auth]
algorithms = ["HS256"]
hs256_secret = "bench-secret-bench-secret-bench-secret-0123"

[policy]
timezone = "Asia/Shanghai"

[policy.defaults]
requests_per_minute = 100000000
burst = 100000000
max_in_flight = 100000
daily_credits = 1000000000000
monthly_credits = 1000000000000

[policy.teams.perf]
team_requests_per_minute = 100000000
team_burst = 100000000
team_max_in_flight = 100000
team_daily_credits = 1000000000000
team_monthly_credits = 1000000000000

[policy.global]
requests_per_minute = 100000000
burst = 100000000
max_in_flight = 100000
daily_credits = 1000000000000
monthly_credits = 1000000000000
"#;

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

fn claims() -> Claims<'static> {
    Claims {
        sub: "bench",
        team: Some("perf"),
        roles: &[],
        ttl_secs: 24 * 3600,
        now: jiff::Timestamp::now(),
    }
}

fn identity() -> Identity {
    Identity {
        user: "bench".into(),
        team: Some("perf".into()),
        roles: Vec::new(),
        is_admin: false,
    }
}

fn policy_settings() -> Settings {
    match load_from_str(POLICY, Origin::Builtin, Default::default()) {
        Ok(c) => c.settings,
        Err(e) => panic!("bench policy: {e}"),
    }
}

/// Auth settings for one algorithm (fixture keys) and a token they accept.
fn auth_settings(alg: &str) -> (AuthSettings, String) {
    let mut s = AuthSettings {
        algorithms: vec![alg.into()],
        ..AuthSettings::default()
    };
    let token = match alg {
        "HS256" => {
            s.hs256_secret = Secret::new("bench-secret-bench-secret-bench-secret-0123");
            mint(&s, &claims())
        }
        "RS256" => {
            s.public_key_files = vec![keys_dir().join("rsa1.pub.pem")];
            mint_with_key(&s, &claims(), &keys_dir().join("rsa1.key.pem"), None)
        }
        "ES256" => {
            s.public_key_files = vec![keys_dir().join("ec256.pub.pem")];
            mint_with_key(&s, &claims(), &keys_dir().join("ec256.key.pem"), None)
        }
        other => panic!("no fixture for {other}"),
    };
    (s, token.unwrap_or_else(|e| panic!("mint {alg}: {e}")))
}

fn verify(auth: &Authenticator, token: &str) -> Identity {
    match auth.verify(token).now_or_never() {
        Some(Ok(id)) => id,
        Some(Err(e)) => panic!("token refused: {e:?}"),
        None => panic!("verify awaited without a JWKS"),
    }
}

/// `jwt_verify/*`: the first sight of a token — a fresh `Authenticator` per iteration (built outside the timing),
/// so a cache of verified tokens, if the gateway has one, cannot answer: header, allow-list, key, signature, time
/// and identity claims. `jwt_verify_again/*`: the same token through the same `Authenticator`, as a client
/// sends it request after request (a cache hit when there is a cache; the full check when there is none).
fn bench_jwt(c: &mut Criterion) {
    // As `main` does, before the first token is minted (which would fix jsonwebtoken's provider).
    vidu_gateway::auth::crypto::install();
    let metrics = Metrics::new();
    let mut g = c.benchmark_group("jwt_verify");
    let mut again = Vec::new();
    for (name, alg) in [("hs256", "HS256"), ("rs256", "RS256"), ("es256", "ES256")] {
        let (settings, token) = auth_settings(alg);
        let fresh = || {
            Authenticator::new(&settings, clock(), &metrics)
                .unwrap_or_else(|e| panic!("authenticator {alg}: {e}"))
        };
        assert_eq!(verify(&fresh(), &token).team.as_deref(), Some("perf"));
        g.bench_function(name, |b| {
            b.iter_batched(
                fresh,
                |auth| {
                    let id = verify(&auth, black_box(&token));
                    (auth, id) // dropped outside the timing
                },
                BatchSize::SmallInput,
            )
        });
        again.push((name, fresh(), token));
    }
    g.finish();
    let mut g = c.benchmark_group("jwt_verify_again");
    for (name, auth, token) in &again {
        g.bench_function(*name, |b| b.iter(|| verify(auth, black_box(token))));
    }
    g.finish();
}

fn bench_pricing(c: &mut Criterion) {
    let settings = policy_settings();
    let validated = validate(SMALL, &settings).unwrap_or_else(|e| panic!("{}", e.message));
    let input = EstimateInput {
        base: Decimal::from_int(5),
        per_second: Decimal::from_int(10),
        duration_secs: 5,
        off_peak: true,
        off_peak_factor: settings.pricing.off_peak_factor,
        is_rec: true,
        recommended_prompt_credits: 10,
    };
    let mut g = c.benchmark_group("pricing");
    g.bench_function("estimate", |b| b.iter(|| estimate(black_box(&input))));
    g.bench_function("effective_estimate", |b| {
        b.iter(|| black_box(&validated.params).estimate_with_off_peak(&settings, false))
    });
    g.finish();
}

/// The admission request of the benchmark's policy: 3 rates, 3 slots, 6 budgets.
fn admission_request() -> AdmissionRequest {
    let zone = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or_else(|e| panic!("zone: {e}"));
    let p = periods(jiff::Timestamp::now(), &zone);
    let limit = std::num::NonZeroU32::new(100_000_000).unwrap_or_else(|| panic!("a limit of 0"));
    let rate = |scope, subject: &str| RateSpec {
        scope,
        subject: subject.into(),
        per_minute: limit,
        burst: limit,
        source: "policy.defaults.requests_per_minute".into(),
    };
    let slot = |scope, subject: &str| SlotSpec {
        scope,
        subject: subject.into(),
        max: 100_000,
        source: "policy.defaults.max_in_flight".into(),
    };
    let budget = |scope, subject: &str, period| BudgetSpec {
        key: BudgetKey {
            scope,
            subject: subject.into(),
            period,
            period_key: if period == Period::Month {
                p.month.clone()
            } else {
                p.day.clone()
            },
        },
        limit: 1_000_000_000_000,
        secs_to_reset: 3600,
        source: "policy.defaults.daily_credits".into(),
    };
    AdmissionRequest {
        // Tracked as in production (every scope counted), no cap.
        running: RunningSpec {
            ttl_ms: 7_200_000,
            offpeak_holds: false,
            limits: Vec::new(),
            share: None,
        },
        shadow: Shadow::default(),
        rates: vec![
            rate(Scope::User, "bench"),
            rate(Scope::Team, "perf"),
            rate(Scope::Global, ""),
        ],
        slots: vec![
            slot(Scope::User, "bench"),
            slot(Scope::Team, "perf"),
            slot(Scope::Global, ""),
        ],
        budgets: vec![
            budget(Scope::User, "bench", Period::Day),
            budget(Scope::User, "bench", Period::Month),
            budget(Scope::Team, "perf", Period::Day),
            budget(Scope::Team, "perf", Period::Month),
            budget(Scope::Global, "", Period::Day),
            budget(Scope::Global, "", Period::Month),
        ],
        plan: Plan::Fixed(Run {
            off_peak: false,
            estimate: 55,
        }),
        record: RequestRecord {
            request_id: "0f6c3b2ae9d54b1c8e0f7a6b5c4d3e2f".into(),
            user: "bench".into(),
            team: "perf".into(),
            day: p.day.clone(),
            month: p.month.clone(),
            model: "viduq2".into(),
        },
    }
}

/// Runs a store call to completion on this thread. The memory store answers at once except for a budget's first
/// load (on its reader thread), which the benchmark's warm-up pays.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Admits (taking or not), expecting a grant.
fn admitted(store: &dyn Store, req: &AdmissionRequest, mode: Mode) -> Granted {
    match block_on(store.admit(req, mode)) {
        Ok(Decision {
            outcome: Ok(granted),
            ..
        }) => granted,
        other => panic!("not admitted: {other:?}"),
    }
}

fn finish(store: &dyn Store, granted: Granted, settlement: Settlement) {
    if let Some(grant) = granted.grant {
        block_on(store.finish(grant, settlement)).unwrap_or_else(|e| panic!("finish: {e}"));
    }
}

fn open_store(dir: &Path) -> MemoryStore {
    MemoryStore::open(&dir.join("ledger.sqlite3"), clock(), Default::default())
        .unwrap_or_else(|e| panic!("ledger: {e}"))
}

fn charged() -> Settlement {
    Settlement::charged(55, Some("123"))
}

fn bench_policy_and_admission(c: &mut Criterion) {
    let settings = policy_settings();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = open_store(dir.path());
    let validated = validate(SMALL, &settings).unwrap_or_else(|e| panic!("{}", e.message));
    let id = identity();

    let mut g = c.benchmark_group("policy");
    g.bench_function("prepare", |b| {
        b.iter(|| {
            prepare(
                &settings,
                &id,
                black_box(&validated.params),
                false,
                jiff::Timestamp::now(),
                "0f6c3b2ae9d54b1c8e0f7a6b5c4d3e2f",
            )
            .map(|p| p.expected_run())
            .unwrap_or_else(|e| panic!("prepare: {e:?}"))
        })
    });
    g.finish();

    let req = admission_request();
    let prepared = prepare(
        &settings,
        &id,
        &validated.params,
        false,
        jiff::Timestamp::now(),
        "r",
    )
    .unwrap_or_else(|e| panic!("prepare: {e:?}"));
    assert_eq!(prepared.request.rates.len(), 3);
    assert_eq!(prepared.request.slots.len(), 3);
    assert_eq!(prepared.request.budgets.len(), 6);
    // The first admission loads the six budgets from the ledger (on the store's reader thread).
    let warm = admitted(&store, &req, Mode::Take);
    finish(&store, warm, Settlement::Released);

    let mut g = c.benchmark_group("admission");
    g.bench_function("admit", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let granted = admitted(&store, black_box(&req), Mode::Take);
                timed += t.elapsed();
                finish(&store, granted, Settlement::Released);
            }
            timed
        })
    });
    g.bench_function("admit_dry_run", |b| {
        b.iter(|| admitted(&store, black_box(&req), Mode::DryRun))
    });
    g.bench_function("lifecycle", |b| {
        b.iter(|| {
            let granted = admitted(&store, black_box(&req), Mode::Take);
            finish(&store, granted, charged());
        })
    });
    g.finish();

    // The handler's domain work for one small create, minus HTTP and JWT.
    let dir2 = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store: Arc<dyn Store> = Arc::new(open_store(dir2.path()));
    let metrics = Arc::new(Metrics::new());
    let body = Bytes::from_static(SMALL);
    let mut g = c.benchmark_group("request");
    g.bench_function("create_admit_small", |b| {
        b.iter_batched(
            || (),
            |()| {
                let ctx = Context {
                    settings: &settings,
                    store: &store,
                    metrics: &metrics,
                    now: jiff::Timestamp::now(),
                    request_id: "0f6c3b2ae9d54b1c8e0f7a6b5c4d3e2f",
                };
                let admitted = block_on(admit(&ctx, &id, Body::Whole(black_box(&body)), false))
                    .unwrap_or_else(|r| panic!("refused: {:?}", r));
                finish(store.as_ref(), admitted.decided.granted, charged());
                admitted.body
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_jwt,
    bench_pricing,
    bench_policy_and_admission
);
criterion_main!(benches);
