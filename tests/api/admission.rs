//! Admission: rate limits, in-flight caps, credit budgets, off-peak policy, task ownership, usage and live
//! reloads — each of the known failure modes of gateways in front of paid APIs is a test here.

use std::time::Duration;

use actix_web::http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::helpers::*;

/// A gateway in front of `mock` with `policy` (TOML, as an operator writes it).
async fn app(mock: &MockVidu, policy: &str) -> TestApp {
    TestApp::builder(mock).toml(policy).spawn().await
}

fn q2() -> Value {
    // viduq2 720p 5 s: 5 + 10 × 5 = 55 credits.
    json!({"model": "viduq2", "images": ["https://example.com/a.png"], "duration": 5})
}

fn retry_after(headers: &[(String, String)]) -> u64 {
    header(headers, "retry-after").unwrap().parse().unwrap()
}

async fn the_request_past_the_burst_is_refused_with_retry_after_and_other_users_are_unaffected() {
    let mock = MockVidu::start().await;
    let app = app(
        &mock,
        "[policy.defaults]\nrequests_per_minute = 3\nburst = 3\n",
    )
    .await;
    let alice = app.token("alice", "t");
    for _ in 0..3 {
        assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    }
    let (status, headers, body) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_envelope(status, &headers, &body, "TooManyRequests");
    assert_eq!(retry_after(&headers), 20, "one request per 20 s at 3/min");
    // The refusing limit in the draft's headers too: nothing left, a token back in Retry-After's seconds.
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"user\";q=3;w=60")
    );
    assert_eq!(header(&headers, "ratelimit"), Some("\"user\";r=0;t=20"));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("policy.defaults.requests_per_minute"),
        "{body}"
    );
    assert_eq!(
        app.create(&app.token("bob", "t"), &q2()).await.0,
        StatusCode::OK,
        "bob has his own bucket"
    );
    app.clock.advance(SignedDuration::from_secs(20));
    assert_eq!(
        app.create(&alice, &q2()).await.0,
        StatusCode::OK,
        "a token back after Retry-After"
    );
    assert_eq!(mock.received().len(), 5);
}

/// A 429 says which part of the rate limit refused — the burst, or the per-minute rate — with
/// both figures.
async fn a_rate_refusal_says_whether_the_burst_or_the_per_minute_rate_is_used_up() {
    let mock = MockVidu::start().await;
    let app = app(
        &mock,
        "[policy.defaults]\nrequests_per_minute = 20\nburst = 5\n",
    )
    .await;
    let alice = app.token("alice", "t");
    let refused = |what: &str, body: &Value| {
        let msg = body["message"].as_str().unwrap().to_owned();
        assert!(
            msg.contains("the user limit is 20 requests per minute with a burst of 5"),
            "{what}: {msg}"
        );
        assert!(
            msg.contains("policy.defaults.requests_per_minute")
                && msg.contains("policy.defaults.burst"),
            "{what}: {msg}"
        );
        assert!(msg.contains("retry in 3 s"), "{what}: {msg}");
        msg
    };

    // Five at once: the sixth finds the burst used up.
    for _ in 0..5 {
        assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    }
    let (status, headers, body) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_envelope(status, &headers, &body, "TooManyRequests");
    assert_eq!(retry_after(&headers), 3, "one request per 3 s at 20/min");
    let msg = refused("after the burst", &body);
    assert!(msg.contains("the burst of 5 is used up"), "{msg}");

    // Then one request every 3 s for a minute: 25 in a minute, and the per-minute rate is what runs out.
    for _ in 0..20 {
        app.clock.advance(SignedDuration::from_secs(3));
        assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    }
    let (status, _, body) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let msg = refused("at the steady rate", &body);
    assert!(
        msg.contains("the rate of 20 requests per minute is used up"),
        "{msg}"
    );

    // A pause refills the bucket: the burst again is what runs out.
    app.clock.advance(SignedDuration::from_secs(60));
    for _ in 0..5 {
        assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    }
    let (_, _, body) = app.create(&alice, &q2()).await;
    let msg = refused("after a pause", &body);
    assert!(msg.contains("the burst of 5 is used up"), "{msg}");
}

async fn a_team_limit_is_shared_by_its_members_and_a_team_refusal_costs_no_user_token() {
    let mock = MockVidu::start().await;
    let app = app(
        &mock,
        "[policy.defaults]\nrequests_per_minute = 2\nburst = 2\n[policy.teams.mkt]\nteam_requests_per_minute = 2\n",
    )
    .await;
    let (alice, bob) = (app.token("alice", "mkt"), app.token("bob", "mkt"));
    assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    assert_eq!(app.create(&bob, &q2()).await.0, StatusCode::OK);
    let (status, _, body) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body["message"].as_str().unwrap().contains("team"), "{body}");
    // 30 s later the team has one token again; alice's own bucket still holds one (the refusal took none).
    app.clock.advance(SignedDuration::from_secs(30));
    assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    assert_eq!(
        app.create(&app.token("carol", "other"), &q2()).await.0,
        StatusCode::OK,
        "other teams are unaffected"
    );
}

async fn fifty_concurrent_requests_against_a_budget_that_fits_seven_admit_exactly_seven() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("1", 55)).delayed(Duration::from_millis(50)));
    let app = app(&mock, "[policy.teams.mkt]\nteam_daily_credits = 385\n").await;
    let tokens: Vec<String> = (0..50)
        .map(|i| app.token(&format!("user{i}"), "mkt"))
        .collect();
    let body = q2();
    let results = futures_util::future::join_all(tokens.iter().map(|t| app.create(t, &body))).await;
    let ok = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let refused: Vec<_> = results
        .iter()
        .filter(|r| r.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok, 7);
    assert_eq!(refused.len(), 43);
    assert!(
        refused
            .iter()
            .all(|r| r.2["reason"] == "CreditBudgetExhausted")
    );
    assert_eq!(
        mock.received().len(),
        7,
        "refused requests never reach Vidu"
    );
}

async fn a_request_refused_by_the_budget_takes_no_rate_token() {
    let mock = MockVidu::start().await;
    let app = app(
        &mock,
        "[policy.defaults]\nrequests_per_minute = 2\nburst = 2\ndaily_credits = 200\n",
    )
    .await;
    let alice = app.token("alice", "t");
    assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK); // token 1; settles to 25
    // viduq3-pro 1080p 16 s = 384 credits: over the budget.
    let big = json!({"model": "viduq3-pro", "images": ["https://e.com/a.png"], "duration": 16, "resolution": "1080p"});
    let (status, headers, body) = app.create(&alice, &big).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            json!("CreditBudgetExhausted")
        )
    );
    assert!(retry_after(&headers) > 0, "seconds to the next day");
    assert_eq!(header(&headers, "x-credits-estimated"), Some("384"));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("policy.defaults.daily_credits"),
        "{body}"
    );
    assert_eq!(
        app.create(&alice, &q2()).await.0,
        StatusCode::OK,
        "token 2 is still there"
    );
    let (status, _, body) = app.create(&alice, &q2()).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("TooManyRequests"))
    );
}

async fn reservations_settle_to_the_credits_vidu_reports() {
    let mock = MockVidu::start().await;
    // Vidu reports fewer credits than estimated: 50 instead of 55; the reservation settles to 50.
    mock.respond(|_| Reply::json(200, created_task("1", 50)));
    let app = app(
        &mock,
        "[policy.defaults]\nrequests_per_minute = 3\nburst = 3\ndaily_credits = 105\n",
    )
    .await;
    let alice = app.token("alice", "t");
    assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK); // used 50 (settled)
    let (_, headers, _) = app.create(&alice, &q2()).await; // 50 + 55 = 105 fits
    assert_eq!(header(&headers, "x-credits-remaining"), Some("0"));
    let (status, _, body) = app.create(&alice, &q2()).await; // 100 + 55 > 105
    assert_eq!(
        (status, body["reason"].clone()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            json!("CreditBudgetExhausted")
        )
    );
    // The quote's dry run names the same refusal, and takes nothing.
    let (_, _, quote) = app
        .post("/gateway/v1/img2video/quote", &alice, q2().to_string())
        .await;
    assert_eq!(
        quote["policy"]["reason"], "CreditBudgetExhausted",
        "{quote}"
    );
    let (status, _, usage) = app.get("/gateway/v1/usage", &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(usage["user"]["totals"]["credits_settled"], 100, "{usage}");
    assert_eq!(usage["user"]["totals"]["rejected"], 1);
    assert_eq!(usage["user"]["budgets"][0]["used"], 100);
}

async fn vidu_refusals_release_the_reservation() {
    let mock = MockVidu::start().await;
    let app = app(&mock, "[policy.defaults]\ndaily_credits = 60\n").await;
    let alice = app.token("alice", "t");
    for status in [400u16, 500] {
        mock.respond(move |_| {
            Reply::json(
                status,
                json!({"code": status, "reason": "X", "message": "no", "metadata": {}}),
            )
        });
        assert_eq!(app.create(&alice, &q2()).await.0.as_u16(), status);
    }
    mock.respond(|_| Reply::json(200, created_task("7", 55)));
    let (status, headers, _) = app.create(&alice, &q2()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "both refused reservations were released"
    );
    assert_eq!(header(&headers, "x-credits-remaining"), Some("5"));
    let (_, _, usage) = app.get("/gateway/v1/usage", &alice).await;
    assert_eq!(usage["user"]["totals"]["credits_released"], 110, "{usage}");
    assert_eq!(usage["user"]["totals"]["credits_settled"], 55);
}

async fn a_vidu_timeout_frees_the_slot_and_keeps_the_reservation_as_unknown() {
    let mock = MockVidu::start().await;
    let app = TestApp::builder(&mock)
        .upstream(|u| u.request_timeout_ms = 300)
        .toml("[policy.defaults]\nmax_in_flight = 1\ndaily_credits = 1000\n")
        .spawn()
        .await;
    let alice = app.token("alice", "t");
    mock.respond(|_| Reply::json(200, created_task("1", 55)).delayed(Duration::from_millis(1000)));
    let (status, _, _) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    mock.respond(|_| Reply::json(200, created_task("2", 55)));
    let (status, headers, _) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::OK, "the slot was freed by the timeout");
    assert_eq!(
        header(&headers, "x-credits-remaining"),
        Some("890"),
        "the unknown reservation still counts"
    );
    let (_, _, usage) = app.get("/gateway/v1/usage", &alice).await;
    assert_eq!(usage["user"]["totals"]["credits_unknown"], 55, "{usage}");
}

async fn a_caller_hanging_up_mid_request_frees_the_slot_and_the_task_is_still_recorded() {
    let mock = MockVidu::start().await;
    let app = app(&mock, "[policy.defaults]\nmax_in_flight = 1\n").await;
    let alice = app.token("alice", "t");
    mock.respond(|_| {
        Reply::json(200, created_task("9001", 55)).delayed(Duration::from_millis(700))
    });
    let impatient = awc::Client::builder()
        .timeout(Duration::from_millis(150))
        .finish();
    let res = impatient
        .post(format!("{}/ent/v2/img2video", app.url))
        .insert_header(("authorization", format!("Bearer {alice}")))
        .insert_header(("content-type", "application/json"))
        .send_body(q2().to_string())
        .await;
    assert!(res.is_err(), "the client gave up");
    mock.respond(|_| Reply::json(200, created_task("9002", 55)));
    let (status, _, body) = app.create(&alice, &q2()).await;
    assert_eq!(
        (status, body["reason"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("ConcurrencyLimited"))
    );
    actix_web::rt::time::sleep(Duration::from_millis(800)).await;
    let (status, _, _) = app.create(&alice, &q2()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the slot came back when Vidu answered"
    );
    // Owned by alice, so the query reaches Vidu (the mock answers it with its current reply).
    let before = mock.received().len();
    let (status, _, task) = app.get("/ent/v2/tasks/9001/creations", &alice).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the abandoned request's task is owned by alice: {task}"
    );
    assert_eq!(mock.received().len(), before + 1);
    assert_eq!(mock.received()[before].path, "/ent/v2/tasks/9001/creations");
}

async fn admission_headers_describe_the_tightest_limits() {
    let mock = MockVidu::start().await;
    let app = app(
        &mock,
        "[policy.defaults]\nrequests_per_minute = 5\nburst = 5\ndaily_credits = 1000\n[policy.global]\nrequests_per_minute = 100\ndaily_credits = 500\n",
    )
    .await;
    let (status, headers, _) = app.create(&app.token("alice", "t"), &q2()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-credits-estimated"), Some("55"));
    assert_eq!(
        header(&headers, "x-credits-remaining"),
        Some("445"),
        "the global budget is the tightest"
    );
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"user\";q=5;w=60")
    );
    assert_eq!(header(&headers, "ratelimit"), Some("\"user\";r=4;t=0"));
}

async fn force_sets_off_peak_changing_only_that_field() {
    let mock = MockVidu::start().await;
    let app = app(&mock, "[policy.defaults]\noff_peak = \"force\"\n").await;
    let body = "{\"model\":\"viduq2\",  \"images\":[\"https://example.com/a.png\"],\"off_peak\":false,\"prompt\":\"x\"}";
    let (status, headers, _) = app
        .post("/ent/v2/img2video", &app.token("a", "t"), body)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        header(&headers, "x-off-peak-applied")
            .unwrap()
            .contains("forced by policy.defaults.off_peak")
    );
    assert_eq!(
        header(&headers, "x-credits-estimated"),
        Some("28"),
        "off-peak price: ceil(55 × 0.5)"
    );
    let sent = String::from_utf8(mock.received()[0].body.to_vec()).unwrap();
    assert_eq!(
        sent,
        body.replace("\"off_peak\":false", "\"off_peak\":true")
    );
    // audio on by default for q3-pro: a forced off-peak cannot run it.
    let (status, headers, body) = app
        .create(
            &app.token("a", "t"),
            &json!({"model": "viduq3-pro", "images": ["https://e.com/a.png"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_envelope(status, &headers, &body, "PolicyConflict");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("\"audio\": false")
    );
    let (status, _, _) = app
        .create(
            &app.token("a", "t"),
            &json!({"model": "viduq3-pro", "images": ["https://e.com/a.png"], "audio": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app
        .client
        .post(format!("{}/ent/v2/img2video", app.url))
        .insert_header(("authorization", format!("Bearer {}", app.token("a", "t"))))
        .insert_header(("content-type", "application/json"))
        .insert_header(("prefer", "off-peak=never"))
        .send_body(q2().to_string())
        .await
        .map(|r| (r.status(), (), ()))
        .unwrap();
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "under force, immediate is never allowed"
    );
}

async fn forbid_refuses_off_peak_requests() {
    let mock = MockVidu::start().await;
    let app = app(&mock, "[policy.teams.rt]\noff_peak = \"forbid\"\n").await;
    let mut body = q2();
    body["off_peak"] = json!(true);
    let (status, headers, body) = app.create(&app.token("a", "rt"), &body).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_envelope(status, &headers, &body, "Forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("policy.teams.rt.off_peak")
    );
    assert!(mock.received().is_empty());
}

async fn fallback_goes_off_peak_when_the_immediate_budget_is_used_up() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("1", 55)));
    let app = app(
        &mock,
        "[policy.defaults]\noff_peak = \"fallback\"\nimmediate_daily_credits = 100\n",
    )
    .await;
    let alice = app.token("alice", "t");
    let (_, headers, _) = app.create(&alice, &q2()).await;
    assert!(
        header(&headers, "x-off-peak-applied").is_none(),
        "55 of 100: immediate"
    );
    let (_, headers, _) = app.create(&alice, &q2()).await;
    assert!(
        header(&headers, "x-off-peak-applied")
            .unwrap()
            .contains("immediate budget"),
        "{headers:?}"
    );
    assert_eq!(header(&headers, "x-credits-estimated"), Some("28"));
    let sent: Value = serde_json::from_slice(&mock.received()[1].body).unwrap();
    assert_eq!(sent["off_peak"], true);
    // With Prefer: off-peak=never the caller gets a 429 instead of a conversion.
    let res = app
        .client
        .post(format!("{}/ent/v2/img2video", app.url))
        .insert_header(("authorization", format!("Bearer {alice}")))
        .insert_header(("content-type", "application/json"))
        .insert_header(("prefer", "respond-async, off-peak=never"))
        .send_body(q2().to_string())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("retry-after").is_some());
}

async fn fallback_by_hour_window_uses_the_policy_timezone_across_midnight() {
    let mock = MockVidu::start().await;
    let app = app(
        &mock,
        "[policy]\ntimezone = \"Asia/Shanghai\"\n[policy.defaults]\noff_peak = \"fallback\"\nimmediate_hours = [\"22:00-02:00\"]\n",
    )
    .await;
    let alice = app.token("alice", "t");
    // 23:30 in Shanghai is 15:30 UTC: inside the window.
    app.clock
        .set("2026-11-25T15:30:00Z".parse::<Timestamp>().unwrap());
    let (_, headers, _) = app.create(&alice, &q2()).await;
    assert!(header(&headers, "x-off-peak-applied").is_none());
    // 01:59 the next local day: still inside.
    app.clock
        .set("2026-11-25T17:59:00Z".parse::<Timestamp>().unwrap());
    let (_, headers, _) = app.create(&alice, &q2()).await;
    assert!(header(&headers, "x-off-peak-applied").is_none());
    // 02:00: outside → off-peak; Prefer never → 429 with Retry-After until 22:00 (20 h).
    app.clock
        .set("2026-11-25T18:00:00Z".parse::<Timestamp>().unwrap());
    let (_, headers, _) = app.create(&alice, &q2()).await;
    assert!(
        header(&headers, "x-off-peak-applied")
            .unwrap()
            .contains("outside immediate hours")
    );
    let res = app
        .client
        .post(format!("{}/ent/v2/img2video", app.url))
        .insert_header(("authorization", format!("Bearer {alice}")))
        .insert_header(("content-type", "application/json"))
        .insert_header(("prefer", "off-peak=never"))
        .send_body(q2().to_string())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers().get("retry-after").unwrap(), "72000");
}

async fn daily_budgets_roll_over_at_local_midnight_and_monthly_ones_at_the_month() {
    let mock = MockVidu::start().await;
    let app = app(
        &mock,
        "[policy.defaults]\ndaily_credits = 55\nmonthly_credits = 110\n",
    )
    .await;
    let alice = app.token("alice", "t");
    app.clock
        .set("2026-11-29T15:00:00Z".parse::<Timestamp>().unwrap()); // 23:00 Shanghai, Nov 29
    assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    let (status, headers, _) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&headers), 3600, "an hour to local midnight");
    app.clock.advance(SignedDuration::from_secs(3600)); // Nov 30, 00:00 local
    assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    app.clock.advance(SignedDuration::from_hours(24)); // Dec 1: the monthly budget resets too
    let (status, _, body) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn task_ownership_creator_teammate_other_team_and_admin() {
    let mock = MockVidu::start().await;
    mock.respond(|r| {
        if r.path.contains("/tasks/") {
            Reply::json(
                200,
                json!({"id": "555", "state": "processing", "creations": []}),
            )
        } else {
            Reply::json(200, created_task("555", 55))
        }
    });
    let app = app(&mock, "").await;
    let (alice, bob, eve) = (
        app.token("alice", "mkt"),
        app.token("bob", "mkt"),
        app.token("eve", "sales"),
    );
    assert_eq!(app.create(&alice, &q2()).await.0, StatusCode::OK);
    let query = "/ent/v2/tasks/555/creations";
    assert_eq!(app.get(query, &alice).await.0, StatusCode::OK, "creator");
    assert_eq!(
        app.get(query, &bob).await.0,
        StatusCode::OK,
        "teammate may read"
    );
    let before = mock.received().len();
    let (status, headers, body) = app.get(query, &eve).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(status, &headers, &body, "TaskNotFound");
    let (_, _, unknown) = app.get("/ent/v2/tasks/556/creations", &eve).await;
    assert_eq!(
        body["message"], unknown["message"],
        "indistinguishable from an unknown id"
    );
    assert_eq!(mock.received().len(), before, "Vidu is not asked");
    assert_eq!(
        app.get(query, &app.admin_token()).await.0,
        StatusCode::OK,
        "admin"
    );

    let cancel = "/ent/v2/tasks/555/cancel";
    assert_eq!(
        app.post(cancel, &bob, "").await.0,
        StatusCode::NOT_FOUND,
        "teammates cannot cancel"
    );
    assert_eq!(app.post(cancel, &eve, "").await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.post(cancel, &alice, "").await.0, StatusCode::OK);
    assert_eq!(
        app.post(cancel, &app.admin_token(), "").await.0,
        StatusCode::OK
    );
}

async fn teammates_cannot_read_tasks_when_the_policy_says_so() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("777", 55)));
    let app = app(&mock, "[policy]\nteam_can_read_tasks = false\n").await;
    app.create(&app.token("alice", "mkt"), &q2()).await;
    assert_eq!(
        app.get("/ent/v2/tasks/777/creations", &app.token("bob", "mkt"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

async fn usage_is_own_by_default_and_others_only_for_admins() {
    let mock = MockVidu::start().await;
    let app = app(&mock, "[policy.teams.mkt]\nteam_daily_credits = 1000\n").await;
    let alice = app.token("alice", "mkt");
    app.create(&alice, &q2()).await;
    let (status, _, usage) = app.get("/gateway/v1/usage", &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(usage["user"]["name"], "alice");
    assert_eq!(usage["team"]["name"], "mkt");
    assert_eq!(
        usage["team"]["budgets"][0]["remaining"], 975,
        "settled to the 25 credits Vidu reported"
    );
    assert_eq!(usage["team"]["totals"]["admitted"], 1);
    let (status, headers, body) = app.get("/gateway/v1/usage?team=sales", &alice).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_envelope(status, &headers, &body, "Forbidden");
    assert_eq!(
        app.get("/gateway/v1/usage?user=bob", &alice).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, _, usage) = app
        .get("/gateway/v1/usage?team=mkt", &app.admin_token())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        usage["team"]["totals"]["credits_settled"], 25,
        "the mock reports 25 credits: {usage}"
    );
    assert!(usage.get("user").is_none());
}

async fn access_rules_refuse_before_any_counter_moves() {
    let mock = MockVidu::start().await;
    let app = app(
        &mock,
        "[policy.defaults]\nmodels = [\"viduq2\"]\nmax_duration = 8\nmax_resolution = \"720p\"\nallow_recommended_prompt = false\nrequests_per_minute = 1\nburst = 1\n",
    )
    .await;
    let t = app.token("alice", "t");
    for (body, needle) in [
        (
            json!({"model": "viduq1", "images": ["https://e.com/a.png"]}),
            "policy.defaults.models",
        ),
        (
            json!({"model": "viduq2", "images": ["https://e.com/a.png"], "duration": 9}),
            "max_duration",
        ),
        (
            json!({"model": "viduq2", "images": ["https://e.com/a.png"], "resolution": "1080p"}),
            "max_resolution",
        ),
        (
            json!({"model": "viduq2", "images": ["https://e.com/a.png"], "is_rec": true}),
            "allow_recommended_prompt",
        ),
    ] {
        let (status, headers, body) = app.create(&t, &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_envelope(status, &headers, &body, "Forbidden");
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
    }
    assert_eq!(
        app.create(&t, &q2()).await.0,
        StatusCode::OK,
        "the single rate token is still there"
    );
}

async fn metrics_count_admissions_and_credits_by_team_without_user_ids() {
    let mock = MockVidu::start().await;
    let app = app(&mock, "[policy.defaults]\ndaily_credits = 60\n").await;
    let alice = app.token("alice-secret-user", "mkt");
    app.create(&alice, &q2()).await;
    app.create(&alice, &q2()).await;
    let text = app.metrics_text().await;
    assert!(
        text.contains(
            r#"vidu_gateway_admissions_total{outcome="admitted",reason="Admitted",team="mkt"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"vidu_gateway_admissions_total{outcome="rejected",reason="CreditBudgetExhausted",team="mkt"} 1"#), "{text}");
    assert!(
        text.contains(r#"vidu_gateway_credits_total{kind="reserved",team="mkt"} 55"#),
        "{text}"
    );
    assert!(
        text.contains(r#"vidu_gateway_credits_total{kind="settled",team="mkt"} 25"#),
        "{text}"
    );
    assert!(
        text.contains(r#"vidu_gateway_in_flight{team="mkt"} 0"#),
        "{text}"
    );
    assert!(!text.contains("alice-secret-user"));
}

/// The ledger writer reports what it committed and what is still queued.
#[actix_web::test]
async fn metrics_show_the_ledger_writer_at_work() {
    let mock = MockVidu::start().await;
    let app = app(&mock, "").await;
    let t = app.token("ana", "mkt");
    let (status, _, _) = app.create(&t, &q2()).await;
    assert_eq!(status, StatusCode::OK);
    // The writer commits within its gather window (a few ms): wait until it has committed everything queued (the
    // create's reservation and settlement, the audit entry of the configuration loaded at start).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = app.metrics_text().await;
        let committed = text
            .lines()
            .any(|l| l.starts_with("vidu_gateway_ledger_commits_total ") && !l.ends_with(" 0"));
        let drained = text
            .lines()
            .any(|l| l == "vidu_gateway_ledger_pending_writes 0");
        if (committed && drained) || std::time::Instant::now() > deadline {
            break text;
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    };
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(value("vidu_gateway_ledger_writes_total") >= 1.0, "{text}");
    assert!(value("vidu_gateway_ledger_commits_total") >= 1.0, "{text}");
    assert_eq!(value("vidu_gateway_ledger_pending_writes"), 0.0, "{text}");
    assert_eq!(
        value("vidu_gateway_ledger_commit_errors_total"),
        0.0,
        "{text}"
    );
    assert!(text.contains("vidu_gateway_ledger_wal_pages"), "{text}");
}

crate::on_both_backends!(
    the_request_past_the_burst_is_refused_with_retry_after_and_other_users_are_unaffected,
    a_rate_refusal_says_whether_the_burst_or_the_per_minute_rate_is_used_up,
    a_team_limit_is_shared_by_its_members_and_a_team_refusal_costs_no_user_token,
    fifty_concurrent_requests_against_a_budget_that_fits_seven_admit_exactly_seven,
    a_request_refused_by_the_budget_takes_no_rate_token,
    reservations_settle_to_the_credits_vidu_reports,
    vidu_refusals_release_the_reservation,
    a_vidu_timeout_frees_the_slot_and_keeps_the_reservation_as_unknown,
    a_caller_hanging_up_mid_request_frees_the_slot_and_the_task_is_still_recorded,
    admission_headers_describe_the_tightest_limits,
    force_sets_off_peak_changing_only_that_field,
    forbid_refuses_off_peak_requests,
    fallback_goes_off_peak_when_the_immediate_budget_is_used_up,
    fallback_by_hour_window_uses_the_policy_timezone_across_midnight,
    daily_budgets_roll_over_at_local_midnight_and_monthly_ones_at_the_month,
    task_ownership_creator_teammate_other_team_and_admin,
    teammates_cannot_read_tasks_when_the_policy_says_so,
    usage_is_own_by_default_and_others_only_for_admins,
    access_rules_refuse_before_any_counter_moves,
    metrics_count_admissions_and_credits_by_team_without_user_ids,
);
