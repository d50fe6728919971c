//! The real binary: what it logs (no secrets, no prompts) and how it stops (gracefully).

use std::time::Duration;

use actix_web::http::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// The line the root span writes when the request with `id` closes (JSON, with its request id).
fn is_request_line(line: &str, id: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .is_ok_and(|v| v["request_id"] == id || v["span"]["request_id"] == id)
}

#[actix_web::test]
async fn served_requests_log_no_secret_no_token_and_no_prompt() {
    let mock = MockVidu::start().await;
    let cfg = TestConfig::new(&mock.url).telemetry(|t| t.log_level = "debug".into());
    let bin = Binary::start(&cfg, &[]).await;
    let client = awc::Client::default();
    let token = mint(json!({"sub": "alice", "team": "marketing"}));
    let prompt = "a very private prompt about project nightingale";
    let body = json!({"model": "viduq2", "images": ["https://example.com/private-image.png"], "prompt": prompt});
    let mut res = client
        .post(format!("{}/ent/v2/img2video", bin.url()))
        .insert_header(("authorization", format!("Bearer {token}")))
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-request-id", "log-check-1"))
        .send_body(body.to_string())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let _ = res.body().await;
    // A refused one too (its token is forged: the signature is not the secret's).
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    let res = client
        .post(format!("{}/ent/v2/img2video", bin.url()))
        .insert_header(("authorization", format!("Bearer {forged}")))
        .insert_header(("x-request-id", "log-check-2"))
        .send_body(body.to_string())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Each request's own line is written before anything is said about what is absent from the logs.
    for id in ["log-check-1", "log-check-2"] {
        bin.wait_for_line(Duration::from_secs(5), |l| is_request_line(l, id))
            .await
            .unwrap_or_else(|| panic!("no log line for request {id}: {}", bin.logs()));
    }
    let logs = bin.logs();
    let served = logs
        .lines()
        .find(|l| is_request_line(l, "log-check-1"))
        .unwrap();
    assert!(
        served.contains("alice") && served.contains("marketing"),
        "user and team are on the line: {served}"
    );
    for secret in [
        VIDU_KEY,
        HS_SECRET,
        token.as_str(),
        prompt,
        "private-image",
        forged,
        "c2lnbmF0dXJl",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in the logs:\n{logs}"
        );
    }
}

#[actix_web::test]
async fn sigterm_finishes_the_in_flight_request_then_exits_zero() {
    let mock = MockVidu::start().await;
    mock.respond(|_| Reply::json(200, created_task("42", 5)).delayed(Duration::from_millis(1200)));
    let mut bin = Binary::start(&TestConfig::new(&mock.url), &[]).await;
    let url = bin.url();
    let token = mint(json!({"sub": "alice", "team": "marketing"}));
    let in_flight = actix_web::rt::spawn(async move {
        let mut res = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish()
            .post(format!("{url}/ent/v2/img2video"))
            .insert_header(("authorization", format!("Bearer {token}")))
            .insert_header(("content-type", "application/json"))
            .send_body(small_request().to_string())
            .await
            .unwrap();
        let status = res.status();
        let body = res.body().await.unwrap();
        (status, body)
    });
    // In flight: Vidu has it and has not answered yet (it answers after 1.2 s).
    until(|| mock.received().len() == 1).await;
    bin.signal("TERM");
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["task_id"], "42");
    assert_eq!(
        bin.wait(Duration::from_secs(10)).await,
        Some(0),
        "exit code 0 after a graceful stop"
    );
    // And it no longer accepts connections.
    assert!(std::net::TcpStream::connect(("127.0.0.1", bin.port)).is_err());
}

#[actix_web::test]
async fn the_built_in_config_serves_the_sandbox_with_a_minted_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_vidu-gateway"))
            .arg("serve")
            .env("VIDU_GW__SERVER__LISTEN", "127.0.0.1:0")
            .env("VIDU_GW__STATE__LEDGER_PATH", dir.path().join("l.sqlite3"))
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let mut port = 0;
    let mut warned = false;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok);
    for line in lines.by_ref() {
        warned |= line.contains("DEVELOPMENT secret");
        if line.contains("vidu-gateway listening") {
            port = serde_json::from_str::<serde_json::Value>(&line).unwrap()["port"]
                .as_u64()
                .unwrap();
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop)); // keep draining stderr
    assert!(warned, "a loud warning about the development secret");
    let (_, token, _) = run_cli(&["token", "--sub", "newcomer", "--team", "demo"], &[]);
    let mut res = awc::Client::default()
        .post(format!("http://127.0.0.1:{port}/ent/v2/img2video"))
        .insert_header(("authorization", format!("Bearer {}", token.trim())))
        .insert_header(("content-type", "application/json"))
        .send_body(small_request().to_string())
        .await
        .unwrap();
    let (status, _, body) = read(&mut res).await;
    drop(child);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "created");
}

/// Resident memory of a process, from /proc/<pid>/status (`VmRSS`), in bytes.
fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[actix_web::test]
async fn thirty_stalled_uploads_of_19_mib_keep_rss_under_the_buffer_cap_plus_a_constant() {
    use std::io::Write;
    const MIB: usize = 1 << 20;
    const CAP: usize = 40 * MIB;
    let mock = MockVidu::start().await;
    // The stalled uploads stay open for the whole measurement (T = 60 s).
    let cfg = TestConfig::new(&mock.url).server(|s| {
        s.body_read_timeout_ms = 60_000;
        s.max_buffered_body_bytes = CAP;
    });
    let bin = Binary::start(&cfg, &[]).await;
    let (port, pid) = (bin.port, bin.child.id());
    let token = mint(json!({"sub": "alice", "team": "marketing"}));
    let idle_rss = vm_rss(pid);
    let rss = actix_web::rt::task::spawn_blocking(move || {
        // Each declares 19.5 MiB, sends 19 MiB and stalls, holding its connection open.
        let uploads: Vec<_> = (0..30)
            .map(|_| {
                let token = token.clone();
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let head = format!(
                        "POST /ent/v2/img2video HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
                         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        19 * MIB + MIB / 2
                    );
                    let body = vec![b' '; 19 * MIB];
                    // Refused ones are closed by the gateway: their writes fail, which is fine.
                    let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(&body));
                    s
                })
            })
            .collect();
        let open: Vec<_> = uploads.into_iter().map(|t| t.join().unwrap()).collect();
        std::thread::sleep(Duration::from_millis(500));
        let rss = vm_rss(pid);
        drop(open);
        rss
    })
    .await
    .unwrap();
    let bound = CAP as u64 + 64 * MIB as u64;
    assert!(
        rss < bound,
        "RSS {} MiB with 30 stalled uploads (idle: {} MiB): over the cap of {} MiB + 64 MiB",
        rss / MIB as u64,
        idle_rss / MIB as u64,
        CAP / MIB
    );
}

/// DESIGN §10's promise to a newcomer: the built-in sandbox fails a `[fail]` task, calls the gateway back, and usage
/// shows the task refunded within a minute (here within seconds: the sandbox completes tasks after 1 s).
#[actix_web::test]
async fn the_built_in_sandbox_refunds_a_failed_task_through_its_callback() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_vidu-gateway"))
            .arg("serve")
            .env("VIDU_GW__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "VIDU_GW__CALLBACKS__PUBLIC_BASE_URL",
                format!("http://127.0.0.1:{port}"),
            )
            .env("VIDU_GW__UPSTREAM__SANDBOX_COMPLETE_AFTER_SECS", "1")
            .env("VIDU_GW__STATE__LEDGER_PATH", dir.path().join("l.sqlite3"))
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (_, token, _) = run_cli(&["token", "--sub", "newcomer", "--team", "demo"], &[]);
    let token = token.trim().to_owned();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            ready = true;
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the gateway did not listen");
    let mut body = small_request();
    body["prompt"] = serde_json::json!("[fail] a cat on a boat");
    let (status, _, task) = send(
        "POST",
        format!("{base}/ent/v2/img2video"),
        &token,
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let credits = task["credits"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, usage) = send("GET", format!("{base}/gateway/v1/usage"), &token, None).await;
        if usage["team"]["totals"]["credits_refunded"] == credits {
            assert_eq!(usage["team"]["totals"]["credits_settled"], 0, "{usage}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no refund: {usage}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, list) = send("GET", format!("{base}/gateway/v1/tasks"), &token, None).await;
    assert_eq!(list["tasks"][0]["state"], "failed", "{list}");
    drop(child);
}
