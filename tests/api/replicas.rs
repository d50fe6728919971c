//! Several replicas on one Redis: two real gateway processes, one `redis-server` of the test's own, one mock
//! Vidu. Every limit holds across the replicas exactly as in one process, and any replica answers for a task
//! another one created.

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

async fn send(
    method: &str,
    url: String,
    token: &str,
    body: Option<&Value>,
) -> (StatusCode, Vec<(String, String)>, Value) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let req = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    }
    .insert_header(("authorization", format!("Bearer {token}")));
    let mut res = match body {
        Some(b) => req
            .insert_header(("content-type", "application/json"))
            .send_body(b.to_string())
            .await
            .unwrap(),
        None => req.send().await.unwrap(),
    };
    read(&mut res).await
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
            let (status, _, usage) = send(
                "GET",
                format!("{}/gateway/v1/usage?team=mkt", bin.url()),
                &admin(),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{usage}");
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

crate::on_redis_backend!(
    sixty_creates_across_two_replicas_admit_exactly_what_the_team_budget_fits,
    a_users_in_flight_cap_holds_whichever_replica_a_request_reaches,
    a_users_rate_limit_holds_across_replicas_to_the_request,
    a_task_created_through_one_replica_is_read_and_cancelled_through_the_other_by_its_owner_only,
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
