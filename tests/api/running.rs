//! Sharing Vidu's task slots: running-task caps per user, team and globally (429 `RunningTasksLimited` naming the
//! table that set the cap), a slot freed when Vidu reports the task ended (callback, reconciliation, the caller's
//! query), off-peak tasks holding none, the fair share between teams, and what usage, `/metrics` and the quote
//! show — on both backends, against a mock Vidu whose tasks stay `processing` until told otherwise.

use actix_web::http::StatusCode;
use jiff::SignedDuration;
use serde_json::{Value, json};

use vidu_gateway::clock::Clock as _;

use crate::helpers::*;
use crate::lifecycle::{
    States, created_id, eventually, living_vidu, post_callback, q2, set_state, vidu_signed,
    with_callbacks,
};

/// Creates a task and lets Vidu report it `processing`.
async fn processing(app: &TestApp, states: &States, token: &str) -> String {
    let id = created_id(app, token).await;
    set_state(states, &id, "processing", 40);
    id
}

/// A create refused `RunningTasksLimited`: its message.
async fn refused_running(app: &TestApp, token: &str) -> String {
    let (status, headers, body) = app.create(token, &q2()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "RunningTasksLimited", "{body}");
    assert_eq!(body["code"], 429);
    assert_eq!(body["metadata"]["source"], "gateway");
    let retry: u64 = header(&headers, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After on a RunningTasksLimited: {headers:?}"));
    assert!(retry >= 1);
    body["message"].as_str().unwrap().to_owned()
}

/// The caller asks Vidu about its task through the gateway (which learns its state).
async fn query(app: &TestApp, token: &str, id: &str) -> Value {
    let (status, _, task) = app
        .get(&format!("/ent/v2/tasks/{id}/creations"), token)
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    task
}

/// Waits until usage shows `team` running `n` tasks (what a query taught the gateway is applied after its answer).
async fn wait_running(app: &TestApp, team: &str, n: u64) -> Value {
    eventually(&format!("team {team} running {n}"), || async {
        let (_, _, usage) = app
            .get(
                &format!("/gateway/v1/usage?team={team}"),
                &app.admin_token(),
            )
            .await;
        let running = &usage["team"]["running_tasks"];
        (running["running"] == n).then(|| running.clone())
    })
    .await
}

fn creates(mock: &MockVidu) -> usize {
    mock.received()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/ent/v2/img2video")
        .count()
}

/// The issue's demonstration: with 5 global slots, the 6th create waits; a success learned from a callback frees a
/// slot, and so does one learned by reconciliation.
async fn the_sixth_task_waits_until_one_of_five_ends() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let app = with_callbacks(TestApp::builder(&mock))
        .toml("[policy.global]\nmax_running_tasks = 5\n")
        .settings(|s| s.tasks.reconcile_interval_secs = 60)
        .spawn()
        .await;
    let tokens: Vec<String> = (0..3)
        .map(|i| app.token(&format!("user-{i}"), &format!("team-{i}")))
        .collect();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(processing(&app, &states, &tokens[i % 3]).await);
    }
    let message = refused_running(&app, &tokens[0]).await;
    assert!(
        message.contains("policy.global.max_running_tasks") && message.contains('5'),
        "{message}"
    );
    assert_eq!(creates(&mock), 5, "the refused create was not forwarded");

    // Usage and metrics show what runs, per team.
    let (status, _, usage) = app.get("/gateway/v1/usage", &app.admin_token()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, mine) = app.get("/gateway/v1/usage", &tokens[0]).await;
    assert_eq!(mine["team"]["running_tasks"]["running"], 2, "{mine}");
    assert_eq!(mine["user"]["running_tasks"]["running"], 2, "{mine}");
    let (_, _, all) = app
        .get("/gateway/v1/usage?team=team-1", &app.admin_token())
        .await;
    assert_eq!(all["team"]["running_tasks"]["running"], 2, "{all} {usage}");
    let metrics = app.metrics_text().await;
    for line in [
        r#"vidu_gateway_running_tasks{team="team-0"} 2"#,
        r#"vidu_gateway_running_tasks{team="team-2"} 1"#,
        "vidu_gateway_running_tasks_global 5",
        r#"vidu_gateway_admissions_total{outcome="rejected",reason="RunningTasksLimited",team="team-0"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // One succeeds; Vidu's callback says so, the gateway confirms it and frees the slot.
    set_state(&states, &ids[0], "success", 40);
    let headers = vidu_signed(app.clock.now(), "n-running-1");
    let (status, _) =
        post_callback(&app, &headers, &json!({"id": ids[0], "state": "success"})).await;
    assert_eq!(status, StatusCode::OK);
    eventually("the callback frees a slot", || async {
        let (status, _, _) = app.create(&tokens[1], &q2()).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    refused_running(&app, &tokens[1]).await;

    // Another succeeds with no callback: the reconciler finds out and frees the slot.
    set_state(&states, &ids[1], "success", 40);
    app.clock.advance(SignedDuration::from_secs(61));
    eventually("reconciliation frees a slot", || async {
        let (status, _, _) = app.create(&tokens[2], &q2()).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    refused_running(&app, &tokens[2]).await;
    assert_eq!(creates(&mock), 7);
}

/// User and team caps name the table that set them; off-peak tasks hold no slot; the quote says which limit is
/// full; a failed task frees its slot when the caller's own query learns it.
async fn user_and_team_caps_name_their_table_and_off_peak_runs_free() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let app = TestApp::builder(&mock)
        .toml(
            "[policy.defaults]\nmax_running_tasks = 1\n\
             [policy.teams.video]\nteam_max_running_tasks = 2\n\
             [policy.users.\"vip\"]\nmax_running_tasks = 5\n",
        )
        .spawn()
        .await;
    let alice = app.token("alice", "video");
    let first = processing(&app, &states, &alice).await;
    let message = refused_running(&app, &alice).await;
    assert!(
        message.contains("policy.defaults.max_running_tasks"),
        "{message}"
    );
    // The quote tells the same before anything is sent.
    let (status, _, quote) = app
        .post("/gateway/v1/img2video/quote", &alice, q2().to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(quote["policy"]["admitted"], false, "{quote}");
    assert_eq!(quote["policy"]["reason"], "RunningTasksLimited", "{quote}");
    assert!(
        quote["policy"]["message"]
            .as_str()
            .unwrap()
            .contains("policy.defaults.max_running_tasks"),
        "{quote}"
    );
    // Off-peak tasks hold no slot (tasks.offpeak_holds_slot = false).
    let mut off_peak = q2();
    off_peak["off_peak"] = json!(true);
    let (status, _, body) = app.create(&alice, &off_peak).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The team's cap counts every member.
    processing(&app, &states, &app.token("vip", "video")).await;
    let message = refused_running(&app, &app.token("vip", "video")).await;
    assert!(
        message.contains("policy.teams.video.team_max_running_tasks") && message.contains("video"),
        "{message}"
    );
    // Alice's task fails; her own query tells the gateway, and her slot (and the team's) is free again.
    set_state(&states, &first, "failed", 0);
    assert_eq!(query(&app, &alice, &first).await["state"], "failed");
    wait_running(&app, "video", 1).await;
    let (status, _, body) = app.create(&alice, &q2()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Weights 2:1:1 over 8 slots (the pool of other teams weighs 0): the greedy team alone takes all 8; the others,
/// arriving, get their guarantees (4, 2, 2) as the greedy team's tasks end, and it is kept out meanwhile.
async fn fair_share_gives_arriving_teams_their_guarantee_as_the_greedy_teams_tasks_end() {
    let mock = MockVidu::start().await;
    let states = living_vidu(&mock, 40);
    let app = TestApp::builder(&mock)
        .toml(
            "[policy.global]\nmax_running_tasks = 8\n[policy.defaults]\ntask_share = 0\n\
             [policy.teams.a]\ntask_share = 2\n[policy.teams.b]\ntask_share = 1\n[policy.teams.c]\ntask_share = 1\n",
        )
        .spawn()
        .await;
    let (a, b, c) = (
        app.token("ann", "a"),
        app.token("bob", "b"),
        app.token("cat", "c"),
    );
    let mut greedy = Vec::new();
    for _ in 0..8 {
        greedy.push(processing(&app, &states, &a).await);
    }
    refused_running(&app, &a).await;
    refused_running(&app, &b).await;
    refused_running(&app, &c).await;
    // The greedy team's tasks end one by one; each freed slot goes to a team under its guarantee.
    let end = async |id: &str, left: u64| {
        set_state(&states, id, "success", 40);
        query(&app, &a, id).await;
        wait_running(&app, "a", left).await;
    };
    let mut turn = [&b, &c, &b, &c].into_iter();
    for (i, id) in greedy[..4].iter().enumerate() {
        end(id, 7 - i as u64).await;
        let message = refused_running(&app, &a).await;
        assert!(
            message.contains("fair share") && message.contains("policy.teams.a.task_share"),
            "{message}"
        );
        let next = turn.next().unwrap();
        let (status, _, body) = app.create(next, &q2()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for (team, running, guarantee) in [("a", 4, 4), ("b", 2, 2), ("c", 2, 2)] {
        let line = wait_running(&app, team, running).await;
        assert_eq!(line["guarantee"], guarantee, "{line}");
    }
    for token in [&a, &b, &c] {
        refused_running(&app, token).await;
    }
}

crate::on_both_backends!(
    the_sixth_task_waits_until_one_of_five_ends,
    user_and_team_caps_name_their_table_and_off_peak_runs_free,
    fair_share_gives_arriving_teams_their_guarantee_as_the_greedy_teams_tasks_end,
);

mod replicas {
    use super::*;

    /// Two replicas on one Redis share the slots exactly: 5 global slots, 12 concurrent creates across both →
    /// exactly 5 forwarded.
    async fn two_replicas_share_the_running_task_slots_exactly() {
        let mock = MockVidu::start().await;
        living_vidu(&mock, 40);
        let config = TestApp::builder(&mock).toml("[policy.global]\nmax_running_tasks = 5\n");
        let start = jiff::Timestamp::now();
        let a = TestApp::spawn_on(config.clone(), start, true).await;
        let b = TestApp::spawn_on(config, start, true).await;
        let calls = (0..12).map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            let token = app.token(&format!("u{i}"), "video");
            async move { app.create(&token, &q2()).await.0 }
        });
        let statuses = futures_util::future::join_all(calls).await;
        let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let limited = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!((ok, limited), (5, 7), "{statuses:?}");
        assert_eq!(creates(&mock), 5);
    }

    crate::on_redis_backend!(two_replicas_share_the_running_task_slots_exactly);
}
