//! Shadow limits: `enforce = "shadow"` in a `[policy.*]` table makes that table's limits observe-only — a request
//! they would refuse is admitted, counted (`admissions_total{outcome="shadow_rejected",reason,team}`) and logged,
//! and the quote says so — while other tables' limits still refuse.

use actix_web::http::StatusCode;

use crate::helpers::*;
use crate::lifecycle::{living_vidu, q2};

async fn a_shadow_limit_admits_counts_and_the_quote_tells() {
    let mock = MockVidu::start().await;
    living_vidu(&mock, 40);
    let app = TestApp::builder(&mock)
        .toml(
            "[policy.defaults]\ndaily_credits = 60\n\
             [policy.teams.video]\nteam_daily_credits = 60\nenforce = \"shadow\"\n\
             [policy.teams.sales]\nteam_daily_credits = 60\n",
        )
        .spawn()
        .await;
    // The video team's table is in shadow: its members' per-user budget and the team budget only observe.
    let alice = app.token("alice", "video");
    for _ in 0..2 {
        let (status, headers, body) = app.create(&alice, &q2()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // A shadow budget is not what the caller may spend: no X-Credits-Remaining from it.
        assert_eq!(header(&headers, "x-credits-remaining"), None, "{headers:?}");
    }
    // Nor what a Vidu client checking its credits sees.
    let (_, _, credits) = app.get("/ent/v2/credits", &alice).await;
    assert_eq!(
        credits["remains"][0]["credit_remain"],
        serde_json::json!(vidu_gateway::usage::UNLIMITED_CREDITS),
        "{credits}"
    );
    let (status, _, quote) = app
        .post("/gateway/v1/img2video/quote", &alice, q2().to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(quote["policy"]["admitted"], true, "{quote}");
    let shadow = quote["policy"]["shadow_refusals"].as_array().unwrap();
    assert_eq!(shadow.len(), 2, "user and team budgets: {quote}");
    assert!(
        shadow
            .iter()
            .all(|r| r["reason"] == "CreditBudgetExhausted"),
        "{quote}"
    );
    assert!(
        shadow.iter().any(|r| r["message"]
            .as_str()
            .unwrap()
            .contains("policy.teams.video.team_daily_credits")),
        "{quote}"
    );
    // Sales enforces: its second create is refused.
    let bob = app.token("bob", "sales");
    assert_eq!(app.create(&bob, &q2()).await.0, StatusCode::OK);
    let (status, _, body) = app.create(&bob, &q2()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "CreditBudgetExhausted");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(
            r#"vidu_gateway_admissions_total{outcome="shadow_rejected",reason="CreditBudgetExhausted",team="video"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"vidu_gateway_admissions_total{outcome="admitted",reason="Admitted",team="video"} 2"#
        ),
        "{metrics}"
    );
}

async fn a_user_table_in_shadow_observes_only_that_users_limits() {
    let mock = MockVidu::start().await;
    living_vidu(&mock, 40);
    let app = TestApp::builder(&mock)
        .toml(
            "[policy.defaults]\nmax_running_tasks = 1\n\
             [policy.users.\"trial\"]\nenforce = \"shadow\"\n\
             [policy.global]\nmax_running_tasks = 100\n",
        )
        .spawn()
        .await;
    let trial = app.token("trial", "video");
    for _ in 0..2 {
        assert_eq!(app.create(&trial, &q2()).await.0, StatusCode::OK);
    }
    // A shadow cap is not what a Vidu client checking its credits may run: the global cap (100) is.
    let (_, _, credits) = app.get("/ent/v2/credits", &trial).await;
    assert_eq!(
        (
            &credits["remains"][0]["concurrency_limit"],
            &credits["remains"][0]["current_concurrency"]
        ),
        (&serde_json::json!(100), &serde_json::json!(2)),
        "{credits}"
    );
    let other = app.token("other", "video");
    assert_eq!(app.create(&other, &q2()).await.0, StatusCode::OK);
    let (status, _, body) = app.create(&other, &q2()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "RunningTasksLimited");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(
            r#"vidu_gateway_admissions_total{outcome="shadow_rejected",reason="RunningTasksLimited",team="video"} 1"#
        ),
        "{metrics}"
    );
}

crate::on_both_backends!(
    a_shadow_limit_admits_counts_and_the_quote_tells,
    a_user_table_in_shadow_observes_only_that_users_limits,
);
