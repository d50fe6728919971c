//! Several replicas on one Redis: two real gateway processes, one `redis-server` of the test's own, one mock
//! Vidu. Every limit holds across the replicas exactly as in one process, and any replica answers for a task
//! another one created.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

fn q2() -> Value {
    // viduq2 720p 5 s: 55 credits.
    json!({"model": "viduq2", "images": ["https://example.com/a.png"], "duration": 5})
}

fn token(user: &str, team: &str) -> String {
    mint(json!({"sub": user, "team": team}))
}

fn admin() -> String {
    mint(json!({"sub": "root", "team": "ops", "roles": ["gw-admin"]}))
}

/// Two gateway processes with `policy`, on the test's Redis.
async fn two_replicas(mock: &MockVidu, policy: &str) -> [Binary; 2] {
    let config = TestApp::builder(mock).toml(policy);
    [
        Binary::start(&config, &[]).await,
        Binary::start(&config, &[]).await,
    ]
}

/// `GET /gateway/v1/usage?<query>` as an admin, on `bin`.
async fn usage_of(bin: &Binary, query: &str) -> Value {
    let (status, _, usage) = send(
        "GET",
        format!("{}/gateway/v1/usage?{query}", bin.url()),
        &admin(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    usage
}

async fn create(bin: &Binary, token: &str) -> (StatusCode, Vec<(String, String)>, Value) {
    send(
        "POST",
        format!("{}/ent/v2/img2video", bin.url()),
        token,
        Some(&q2()),
    )
    .await
}

/// `n` concurrent creates by the users `users(i)`, alternating between the replicas.
async fn creates_alternating(
    replicas: &[Binary; 2],
    n: usize,
    users: impl Fn(usize) -> String,
) -> Vec<(StatusCode, Value)> {
    let tokens: Vec<String> = (0..n).map(users).collect();
    futures_util::future::join_all(
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| create(&replicas[i % 2], t)),
    )
    .await
    .into_iter()
    .map(|(s, _, b)| (s, b))
    .collect()
}

fn count(results: &[(StatusCode, Value)], status: StatusCode, reason: Option<&str>) -> usize {
    results
        .iter()
        .filter(|(s, b)| *s == status && reason.is_none_or(|r| b["reason"] == r))
        .count()
}

async fn sixty_creates_across_two_replicas_admit_exactly_what_the_team_budget_fits() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("1", 55)).delayed(Duration::from_millis(50)));
    let replicas = two_replicas(&mock, "[policy.teams.mkt]\nteam_daily_credits = 385\n").await;
    let results = creates_alternating(&replicas, 60, |i| token(&format!("user{i}"), "mkt")).await;
    assert_eq!(count(&results, StatusCode::OK, None), 7, "{results:?}");
    assert_eq!(
        count(
            &results,
            StatusCode::TOO_MANY_REQUESTS,
            Some("CreditBudgetExhausted")
        ),
        53
    );
    let charged: u64 = mock.received().len() as u64 * 55;
    assert_eq!(charged, 385, "Vidu saw exactly the admitted creates");
    for bin in &replicas {
        // Rejections are recorded after the refusal is answered: give the last ones a moment to land.
        let deadline = Instant::now() + Duration::from_secs(5);
        let usage = loop {
            let usage = usage_of(bin, "team=mkt").await;
            if usage["team"]["totals"]["rejected"] == 53 || Instant::now() > deadline {
                break usage;
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            usage["team"]["totals"]["credits_settled"], charged,
            "{usage}"
        );
        assert_eq!(usage["team"]["totals"]["admitted"], 7, "{usage}");
        assert_eq!(usage["team"]["totals"]["rejected"], 53, "{usage}");
    }
}

async fn a_users_in_flight_cap_holds_whichever_replica_a_request_reaches() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("1", 55)).delayed(Duration::from_millis(800)));
    let replicas = two_replicas(&mock, "[policy.defaults]\nmax_in_flight = 3\n").await;
    let results = creates_alternating(&replicas, 12, |_| token("alice", "mkt")).await;
    assert_eq!(count(&results, StatusCode::OK, None), 3, "{results:?}");
    assert_eq!(
        count(
            &results,
            StatusCode::TOO_MANY_REQUESTS,
            Some("ConcurrencyLimited")
        ),
        9
    );
    assert_eq!(mock.received().len(), 3);
    // Each finished request frees its slot, on whichever replica comes next.
    assert_eq!(
        create(&replicas[1], &token("alice", "mkt")).await.0,
        StatusCode::OK
    );
}

async fn a_users_rate_limit_holds_across_replicas_to_the_request() {
    let mock = MockVidu::start().await;
    let replicas = two_replicas(
        &mock,
        "[policy.defaults]\nrequests_per_minute = 6\nburst = 3\n",
    )
    .await;
    // One token every 10 s: within this test only the burst of 3 is admitted, in all, not per replica.
    let results = creates_alternating(&replicas, 8, |_| token("alice", "mkt")).await;
    assert_eq!(count(&results, StatusCode::OK, None), 3, "{results:?}");
    assert_eq!(
        count(
            &results,
            StatusCode::TOO_MANY_REQUESTS,
            Some("TooManyRequests")
        ),
        5
    );
    assert_eq!(
        create(&replicas[0], &token("bob", "mkt")).await.0,
        StatusCode::OK,
        "other users are unaffected"
    );
}

async fn a_task_created_through_one_replica_is_read_and_cancelled_through_the_other_by_its_owner_only()
 {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("4242", 55)));
    let [a, b] = two_replicas(&mock, "").await;
    let (alice, eve) = (token("alice", "mkt"), token("eve", "sales"));
    assert_eq!(create(&a, &alice).await.0, StatusCode::OK);
    let read = |bin: &Binary| format!("{}/ent/v2/tasks/4242/creations", bin.url());
    assert_eq!(send("GET", read(&b), &alice, None).await.0, StatusCode::OK);
    assert_eq!(
        send("GET", read(&b), &eve, None).await.0,
        StatusCode::NOT_FOUND
    );
    let cancel = format!("{}/ent/v2/tasks/4242/cancel", b.url());
    assert_eq!(
        send("POST", cancel.clone(), &eve, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(send("POST", cancel, &alice, None).await.0, StatusCode::OK);
}

/// Replicas publish their config version; `/readyz` and `config_replicas_disagree` show when they differ.
async fn replicas_that_run_different_configs_are_reported_by_readyz_and_a_metric() {
    let mock = MockVidu::start().await;
    let [a, b] = two_replicas(&mock, "[policy.defaults]\nrequests_per_minute = 60\n").await;
    let ready = |bin: &Binary| send("GET", format!("{}/readyz", bin.url()), "", None);
    ready(&a).await;
    ready(&b).await;
    let (status, _, view) = ready(&a).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        view["replicas"]["versions"].as_object().unwrap().len(),
        2,
        "{view}"
    );
    assert_eq!(view["replicas"]["disagree"], false, "{view}");
    assert_eq!(
        view["replicas"]["versions"][view["replicas"]["id"].as_str().unwrap()],
        view["config_version"]
    );

    // A third replica with another limit: every replica sees the disagreement.
    let config = TestApp::builder(&mock).toml("[policy.defaults]\nrequests_per_minute = 61\n");
    let c = Binary::start(&config, &[]).await;
    ready(&c).await;
    let (_, _, view) = ready(&a).await;
    assert_eq!(
        view["replicas"]["versions"].as_object().unwrap().len(),
        3,
        "{view}"
    );
    assert_eq!(view["replicas"]["disagree"], true, "{view}");
    let (_, _, metrics) = send("GET", format!("{}/metrics", a.url()), "", None).await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.contains("vidu_gateway_config_replicas_disagree 1"),
        "{text}"
    );
    assert!(text.contains("vidu_gateway_replicas 3"), "{text}");
    assert!(
        c.logs().contains("replicas run different configurations")
            || a.logs().contains("replicas run different configurations")
    );
}

/// A Redis that restarts without its data is noticed (the deployment's epoch key is gone) and logged at ERROR,
/// with what was lost and what persistence to run.
async fn a_redis_that_comes_back_empty_is_reported_at_error() {
    let mock = MockVidu::start().await;
    let [a, _b] = two_replicas(&mock, "").await;
    let alice = token("alice", "mkt");
    assert_eq!(create(&a, &alice).await.0, StatusCode::OK);
    let (status, _, _) = send("GET", format!("{}/readyz", a.url()), "", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!a.logs().contains("came back without"), "{}", a.logs());

    current_redis().restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while send("GET", format!("{}/readyz", a.url()), "", None).await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "no reconnect after the restart: {}",
            a.logs()
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let line = a
        .wait_for_line(Duration::from_secs(5), |l| l.contains("came back without"))
        .await
        .unwrap_or_else(|| panic!("no ERROR about the lost state: {}", a.logs()));
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(
        line["message"].as_str().unwrap().contains("appendonly yes"),
        "{line}"
    );
    let (_, _, metrics) = send("GET", format!("{}/metrics", a.url()), "", None).await;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("vidu_gateway_state_data_lost_total 1")
    );
    // Reported once, not on every heartbeat after.
    send("GET", format!("{}/readyz", a.url()), "", None).await;
    assert_eq!(
        a.logs().matches("came back without").count(),
        1,
        "{}",
        a.logs()
    );
    // A replica that never knew the old epoch has nothing to report... but still serves.
    assert_eq!(create(&a, &alice).await.0, StatusCode::OK);
}

/// The mock creates a 55-credit task at once, or after `delay` while the returned switch is set.
fn slow_while_set(mock: &MockVidu, delay: Duration) -> Arc<AtomicBool> {
    let slow = Arc::new(AtomicBool::new(false));
    let switch = slow.clone();
    mock.respond(move |_| {
        let reply = Reply::json(200, created_task("9", 55));
        if switch.load(Ordering::SeqCst) {
            reply.delayed(delay)
        } else {
            reply
        }
    });
    slow
}

/// `kill -9` of a replica with requests in flight: the user's in-flight slots come back when their leases
/// (`upstream.request_timeout_ms` + 10 s) run out, and the spend settled before the kill is kept.
async fn a_killed_replicas_in_flight_slots_are_free_after_the_lease_and_its_spend_is_kept() {
    let mock = MockVidu::start().await;
    let slow = slow_while_set(&mock, Duration::from_secs(20));
    let config = TestApp::builder(&mock)
        .upstream(|u| u.request_timeout_ms = 2_000)
        .toml("[policy.defaults]\nmax_in_flight = 2\n");
    let mut a = Binary::start(&config, &[]).await;
    let b = Binary::start(&config, &[]).await;
    let alice = token("alice", "mkt");
    assert_eq!(create(&a, &alice).await.0, StatusCode::OK);

    slow.store(true, Ordering::SeqCst);
    let url = a.url();
    for _ in 0..2 {
        let (url, alice) = (url.clone(), alice.clone());
        // Cut off by the kill: no answer is expected.
        actix_web::rt::spawn(async move {
            let _ = awc::Client::new()
                .post(format!("{url}/ent/v2/img2video"))
                .insert_header(("authorization", format!("Bearer {alice}")))
                .insert_header(("content-type", "application/json"))
                .send_body(q2().to_string())
                .await;
        });
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.received().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the slow creates did not reach the mock"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    a.signal("KILL");
    a.wait(Duration::from_secs(5)).await;
    let killed_at = Instant::now();
    slow.store(false, Ordering::SeqCst);

    let (status, _, body) = create(&b, &alice).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "ConcurrencyLimited", "{body}");

    // The lease: 2 s + 10 s after admission.
    loop {
        let (status, _, body) = create(&b, &alice).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(body["reason"], "ConcurrencyLimited", "{body}");
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "the slots stayed taken past their lease"
        );
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        killed_at.elapsed() > Duration::from_secs(9),
        "the slots came back before their lease ran out"
    );

    let usage = usage_of(&b, "user=alice").await;
    // Settled: the create before the kill and the one after; the two cut off stay reserved (charged
    // conservatively until someone reconciles them).
    assert_eq!(usage["user"]["totals"]["credits_settled"], 110, "{usage}");
    assert_eq!(usage["user"]["totals"]["credits_reserved"], 110, "{usage}");

    // Their replica is gone: past the lease they are listed as unknown, and an admin can release them.
    let (status, _, list) = send(
        "GET",
        format!("{}/gateway/v1/reservations", b.url()),
        &admin(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let cut_off: Vec<String> = list["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "unknown")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cut_off.len(), 2, "{list}");
    for id in &cut_off {
        let (status, _, body) = send(
            "POST",
            format!("{}/gateway/v1/reservations/{id}/release", b.url()),
            &admin(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let usage = usage_of(&b, "user=alice").await;
    assert_eq!(usage["user"]["totals"]["credits_reserved"], 0, "{usage}");
    assert_eq!(usage["user"]["totals"]["credits_released"], 110, "{usage}");
}

/// The admission is one Redis round trip (one script over every bucket) before the request is forwarded; the
/// settlement is one more after Vidu answers; nothing else touches Redis for a create.
async fn an_admitted_create_costs_one_redis_round_trip_to_admit_and_one_to_settle() {
    let mock = MockVidu::start().await;
    let hold = slow_while_set(&mock, Duration::from_millis(1500));
    // Every kind of bucket at once: rates, budgets and in-flight caps for the user, the team and everyone.
    let app = TestApp::spawn(TestApp::builder(&mock).toml(
        "[policy.defaults]\nrequests_per_minute = 600\ndaily_credits = 100000\nmonthly_credits = 1000000\n\
         max_in_flight = 5\n[policy.teams.mkt]\nteam_requests_per_minute = 600\nteam_daily_credits = 100000\nteam_max_in_flight = 5\n\
         [policy.global]\nrequests_per_minute = 600\ndaily_credits = 100000\nmax_in_flight = 50\n",
    ))
    .await;
    let alice = app.token("alice", "mkt");
    // Loads the scripts (the first EVALSHA of each is answered NOSCRIPT, then loaded).
    assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;

    let monitor = current_redis().monitor().unwrap();
    hold.store(true, Ordering::SeqCst);
    let url = app.url.clone();
    let token = alice.clone();
    let held = actix_web::rt::spawn(async move {
        send(
            "POST",
            format!("{url}/ent/v2/img2video"),
            &token,
            Some(&q2()),
        )
        .await
        .0
    });
    until(|| mock.received().len() == 2).await;
    let trips = monitor.round_trips();
    assert_eq!(
        trips.len(),
        1,
        "round trips before the create was forwarded: {trips:#?}"
    );
    assert!(
        trips[0].to_lowercase().starts_with("\"evalsha\""),
        "{trips:#?}"
    );
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    let trips = monitor.round_trips();
    assert_eq!(
        trips.len(),
        2,
        "round trips for one whole create: {trips:#?}"
    );

    hold.store(false, Ordering::SeqCst);
    monitor.clear();
    for _ in 0..10 {
        assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    }
    let trips = monitor.round_trips();
    assert_eq!(trips.len(), 20, "round trips for 10 creates: {trips:#?}");
    assert!(
        trips
            .iter()
            .all(|t| t.to_lowercase().starts_with("\"evalsha\"")),
        "{trips:#?}"
    );
}

/// A replica whose own clock is three days behind still counts spend in Redis's day: budget periods follow the
/// backend's time (measured by the heartbeat), so replicas with drifting clocks agree on the day.
async fn budget_periods_follow_redis_time_not_the_replicas_clock() {
    let mock = MockVidu::start().await;
    let behind = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72);
    let app = TestApp::spawn_on(TestApp::builder(&mock), behind, false).await;
    // The heartbeat that measures the offset (it also runs at start and every 5 s).
    assert_eq!(app.get_open("/readyz").await.0, StatusCode::OK);
    let alice = app.token("alice", "mkt");
    assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    let (status, _, usage) = app.get("/gateway/v1/usage", &alice).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    // Today in the policy's time zone (Asia/Shanghai by default: a day ahead of UTC from 16:00 UTC).
    let tz = app
        .config
        .load()
        .unwrap()
        .settings
        .policy
        .timezone
        .tz()
        .clone();
    let today = vidu_gateway::policy::periods::periods(jiff::Timestamp::now(), &tz).day;
    let days: Vec<&str> = usage["user"]["days"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["day"].as_str())
        .collect();
    assert_eq!(days, [today.as_str()], "{usage}");
}

crate::on_redis_backend!(
    sixty_creates_across_two_replicas_admit_exactly_what_the_team_budget_fits,
    a_users_in_flight_cap_holds_whichever_replica_a_request_reaches,
    a_users_rate_limit_holds_across_replicas_to_the_request,
    a_task_created_through_one_replica_is_read_and_cancelled_through_the_other_by_its_owner_only,
    replicas_that_run_different_configs_are_reported_by_readyz_and_a_metric,
    a_redis_that_comes_back_empty_is_reported_at_error,
    a_killed_replicas_in_flight_slots_are_free_after_the_lease_and_its_spend_is_kept,
    an_admitted_create_costs_one_redis_round_trip_to_admit_and_one_to_settle,
    budget_periods_follow_redis_time_not_the_replicas_clock,
);

/// A Redis that hangs: `fail_closed` answers 503 with `Retry-After` within `state.redis_timeout_ms` (plus the
/// request's own work), never waiting on Redis; `/readyz` says the backend is unavailable.
#[actix_web::test]
async fn a_hanging_redis_gets_503_within_the_timeout_under_fail_closed() {
    on_redis(async {
        let mock = MockVidu::start().await;
        let config = TestApp::builder(&mock).state(|s| s.redis_timeout_ms = 100);
        let bin = Binary::start(&config, &[]).await;
        let alice = token("alice", "mkt");
        assert_eq!(create(&bin, &alice).await.0, StatusCode::OK);
        current_redis().pause();
        for _ in 0..3 {
            let started = Instant::now();
            let (status, headers, body) = create(&bin, &alice).await;
            let took = started.elapsed();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["reason"], "ServiceUnavailable");
            assert!(header(&headers, "retry-after").is_some());
            assert!(
                took < Duration::from_millis(100 + 100),
                "answered after {took:?}, not within redis_timeout_ms + 100 ms"
            );
        }
        let (status, _, body) = send("GET", format!("{}/readyz", bin.url()), "", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(
            mock.received().len(),
            1,
            "nothing was forwarded while Redis hung"
        );
        current_redis().resume();
        // Reconnects by itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, body) = create(&bin, &alice).await;
            if status == StatusCode::OK {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no recovery after Redis came back: {body}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, _, ready) = send("GET", format!("{}/readyz", bin.url()), "", None).await;
        assert_eq!(ready["state"]["backend"], "redis", "{ready}");
        assert_eq!(ready["state"]["reachable"], true, "{ready}");
    })
    .await;
}

/// `fail_open` keeps admitting while Redis hangs, counts each such create, and `/readyz` says `degraded`.
#[actix_web::test]
async fn a_hanging_redis_under_fail_open_admits_counts_and_reports_degraded() {
    on_redis(async {
        let mock = MockVidu::start().await;
        let config = TestApp::builder(&mock).state(|s| {
            s.redis_timeout_ms = 100;
            s.on_unavailable = vidu_gateway::config::OnUnavailable::FailOpen;
        });
        let bin = Binary::start(&config, &[]).await;
        let alice = token("alice", "mkt");
        assert_eq!(create(&bin, &alice).await.0, StatusCode::OK);
        current_redis().pause();
        for _ in 0..2 {
            assert_eq!(create(&bin, &alice).await.0, StatusCode::OK);
        }
        let (status, _, ready) = send("GET", format!("{}/readyz", bin.url()), "", None).await;
        assert_eq!(status, StatusCode::OK, "{ready}");
        assert_eq!(ready["status"], "degraded", "{ready}");
        assert_eq!(ready["state"]["reachable"], false, "{ready}");
        let (_, _, metrics) = send("GET", format!("{}/metrics", bin.url()), "", None).await;
        let text = metrics.as_str().unwrap_or_default().to_owned();
        assert!(
            text.contains("vidu_gateway_admissions_unaccounted_total 2"),
            "{text}"
        );
        current_redis().resume();
    })
    .await;
}

/// `fail_open` with Redis down: creates are admitted and spooled; once Redis is back the spool is written back,
/// so usage equals what Vidu charged, and a task created during the outage belongs to its owner.
#[actix_web::test]
async fn under_fail_open_what_was_admitted_while_redis_was_down_is_written_back_when_it_returns() {
    on_redis(async {
        let mock = MockVidu::start().await;
        let next = Arc::new(std::sync::atomic::AtomicU64::new(100));
        let ids = next.clone();
        // Vidu charges 40 where the gateway estimates 55.
        mock.respond(move |_| {
            let id = ids.fetch_add(1, Ordering::SeqCst);
            Reply::json(200, created_task(&id.to_string(), 40))
        });
        let config = TestApp::builder(&mock)
            .state(|s| {
                s.redis_timeout_ms = 100;
                s.on_unavailable = vidu_gateway::config::OnUnavailable::FailOpen;
            })
            .toml("[policy.teams.mkt]\nteam_daily_credits = 100000\n");
        let bin = Binary::start(&config, &[]).await;
        let (alice, bob) = (token("alice", "mkt"), token("bob", "design"));
        for _ in 0..2 {
            assert_eq!(create(&bin, &alice).await.0, StatusCode::OK);
        }
        // Settlements follow the answers without holding them up: let these two land before Redis hangs, so
        // that the spool holds only what the outage admits.
        let deadline = Instant::now() + Duration::from_secs(5);
        while usage_of(&bin, "team=mkt").await["team"]["totals"]["credits_settled"] != 80 {
            assert!(
                Instant::now() < deadline,
                "the first two creates did not settle"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        current_redis().pause();
        let mut outage_tasks = Vec::new();
        for _ in 0..3 {
            let (status, _, body) = create(&bin, &alice).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            outage_tasks.push(body["task_id"].as_str().unwrap().to_owned());
        }
        let ready = || send("GET", format!("{}/readyz", bin.url()), "", None);
        let (status, _, view) = ready().await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["status"], "degraded", "{view}");
        assert_eq!(view["state"]["spool_depth"], 3, "{view}");

        current_redis().resume();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, _, view) = ready().await;
            if view["state"]["spool_depth"] == 0 && view["status"] == "ready" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the spool was not written back: {view}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        }
        bin.wait_for_log("back to it").await;

        let usage = usage_of(&bin, "team=mkt").await;
        let charged: u64 = mock
            .received()
            .iter()
            .filter(|r| r.path.ends_with("/img2video"))
            .count() as u64
            * 40;
        assert_eq!(charged, 200);
        assert_eq!(
            usage["team"]["totals"]["credits_settled"], charged,
            "{usage}"
        );
        assert_eq!(usage["team"]["totals"]["admitted"], 5, "{usage}");
        assert_eq!(usage["team"]["totals"]["credits_reserved"], 0, "{usage}");
        let used: u64 = usage["team"]["budgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["scope"] == "team" && b["period"] == "daily")
            .and_then(|b| b["used"].as_u64())
            .unwrap();
        assert_eq!(used, charged, "{usage}");

        // A task created while Redis was down is its owner's team's, and no other team's.
        let read = |t: &str| format!("{}/ent/v2/tasks/{t}/creations", bin.url());
        assert_eq!(
            send("GET", read(&outage_tasks[0]), &alice, None).await.0,
            StatusCode::OK
        );
        assert_eq!(
            send("GET", read(&outage_tasks[0]), &bob, None).await.0,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

/// Redis hangs while Vidu works on a create: the caller still gets Vidu's answer at once (the settlement is not
/// on its path), the settlement Redis could not take is spooled, and written back when Redis answers again: the
/// reservation settles to what Vidu charged and the task is its owner's.
#[actix_web::test]
async fn a_settlement_redis_cannot_take_is_spooled_and_written_back_without_holding_up_the_caller()
{
    on_redis(async {
        let mock = MockVidu::start().await;
        mock.respond(|_| {
            Reply::json(200, created_task("77", 40)).delayed(Duration::from_millis(800))
        });
        let config = TestApp::builder(&mock).state(|s| s.redis_timeout_ms = 2_000);
        let bin = Binary::start(&config, &[]).await;
        let alice = token("alice", "mkt");
        let url = bin.url();
        let caller = alice.clone();
        let held = actix_web::rt::spawn(async move {
            let started = Instant::now();
            let answer = send(
                "POST",
                format!("{url}/ent/v2/img2video"),
                &caller,
                Some(&q2()),
            )
            .await;
            (answer, started.elapsed())
        });
        until(|| mock.received().len() == 1).await;
        current_redis().pause();
        let ((status, _, body), took) = held.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            took < Duration::from_millis(800 + 1_500),
            "the caller waited for the settlement: {took:?}"
        );
        bin.wait_for_line(Duration::from_secs(10), |l| {
            l.contains("could not settle a grant")
        })
        .await
        .unwrap_or_else(|| panic!("{}", bin.logs()));
        let metrics = || async {
            let (_, _, m) = send("GET", format!("{}/metrics", bin.url()), "", None).await;
            m.as_str().unwrap_or_default().to_owned()
        };
        assert!(metrics().await.contains("vidu_gateway_state_spool_depth 1"));

        current_redis().resume();
        bin.wait_for_line(Duration::from_secs(15), |l| l.contains("back to it"))
            .await
            .unwrap_or_else(|| panic!("{}", bin.logs()));
        assert!(metrics().await.contains("vidu_gateway_state_spool_depth 0"));
        let usage = usage_of(&bin, "user=alice").await;
        assert_eq!(usage["user"]["totals"]["credits_settled"], 40, "{usage}");
        assert_eq!(usage["user"]["totals"]["credits_reserved"], 0, "{usage}");
        let read = format!("{}/ent/v2/tasks/77/creations", bin.url());
        assert_eq!(send("GET", read, &alice, None).await.0, StatusCode::OK);
    })
    .await;
}
