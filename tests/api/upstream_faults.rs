//! A misbehaving Vidu on raw TCP: connections closed (FIN) or reset (RST) after the request was read, and idle
//! keep-alive connections dropped. Whether the request may have reached Vidu decides the outcome: "may have been
//! created" (the reservation kept `unknown`) or "nothing was created" (released) — never a guess either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::rt::net::{TcpListener, TcpStream};
use serde_json::Value;

use crate::helpers::*;

/// How the raw upstream ends a connection.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// A clean close: FIN, nothing else.
    Fin,
    /// An abortive close (`SO_LINGER` 0): RST.
    Reset,
}

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Reads the whole request, then ends the connection without answering.
    CloseAfterRequest(Ending),
    /// Answers every request 200 (keep-alive) and ends a connection that has been idle for `idle`.
    DropIdle { idle: Duration, ending: Ending },
}

/// A Vidu on loopback speaking just enough HTTP/1.1, on its own thread and runtime.
struct RawUpstream {
    url: String,
    /// Complete requests read (what Vidu would act on).
    requests: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
}

impl RawUpstream {
    fn start(behaviour: Behaviour) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", std_listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (req, conns) = (requests.clone(), connections.clone());
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    conns.fetch_add(1, Ordering::SeqCst);
                    actix_web::rt::spawn(serve(stream, behaviour, req.clone()));
                }
            });
        });
        Self {
            url,
            requests,
            connections,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(stream: TcpStream, behaviour: Behaviour, requests: Arc<AtomicUsize>) {
    let idle = match behaviour {
        Behaviour::DropIdle { idle, .. } => idle,
        Behaviour::CloseAfterRequest(_) => Duration::from_secs(30),
    };
    let mut buf = Vec::new();
    loop {
        let request =
            match actix_web::rt::time::timeout(idle, read_request(&stream, &mut buf)).await {
                Ok(Some(request)) => request,
                Ok(None) => return,
                // Idle (or a request started and stalled): drop the connection.
                Err(_) => {
                    if let Behaviour::DropIdle { ending, .. } = behaviour {
                        end(stream, ending);
                    }
                    return;
                }
            };
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        drop(request);
        match behaviour {
            Behaviour::CloseAfterRequest(ending) => {
                end(stream, ending);
                return;
            }
            Behaviour::DropIdle { .. } => {
                let body = created_task(&format!("9000{n:06}"), 25).to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if write_all(&stream, answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn end(stream: TcpStream, ending: Ending) {
    if let Ending::Reset = ending {
        stream.set_zero_linger().unwrap();
    }
    drop(stream);
}

/// One whole request (head and `content-length` body) from `buf` and the socket; `None` when the peer left.
async fn read_request(stream: &TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let total = end + 4 + len;
            if buf.len() >= total {
                let rest = buf.split_off(total);
                return Some(std::mem::replace(buf, rest));
            }
        }
        stream.readable().await.ok()?;
        let mut chunk = [0u8; 64 * 1024];
        match stream.try_read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The base configuration against `upstream`.
fn config_for(upstream: &RawUpstream) -> TestConfig {
    TestConfig::new(&upstream.url)
}

async fn user_totals(app: &TestApp, token: &str) -> Value {
    let (status, _, usage) = app.get("/gateway/v1/usage", token).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    usage["user"]["totals"].clone()
}

/// The request was read in full, then the connection ended without an answer: however it ended, the task may
/// exist — 502 saying so, and the estimate kept as `unknown`, never released.
#[actix_web::test]
async fn a_close_or_reset_after_vidu_read_the_create_keeps_the_reservation_unknown() {
    for ending in [Ending::Fin, Ending::Reset] {
        let upstream = RawUpstream::start(Behaviour::CloseAfterRequest(ending));
        let app = config_for(&upstream).spawn().await;
        let token = app.token("alice", "t");
        let (status, headers, body) = app.create(&token, &small_request()).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{ending:?}: {body}");
        assert_envelope(status, &headers, &body, "UpstreamUnavailable");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("may have been created") && !message.contains("nothing was created"),
            "{ending:?}: {message}"
        );
        assert_eq!(upstream.requests(), 1, "{ending:?}: Vidu read it once");
        let estimate: u64 = header(&headers, "x-credits-estimated")
            .unwrap()
            .parse()
            .unwrap();
        let totals = user_totals(&app, &token).await;
        assert_eq!(totals["credits_unknown"], estimate, "{ending:?}: {totals}");
        assert_eq!(totals["credits_released"], 0, "{ending:?}: {totals}");
        let text = app.metrics_text().await;
        assert!(
            text.contains(
                r#"vidu_gateway_upstream_requests_total{endpoint="img2video",outcome="broken"} 1"#
            ),
            "{ending:?}: {text}"
        );
    }
}

/// Vidu drops keep-alive connections idle for 80 ms (by FIN or by RST); the gateway closes its own after 25 ms
/// (`upstream.pool_idle_timeout_ms`). Creates come at once, after pauses the pool survives, and after pauses that
/// end just as Vidu drops the connection (where a create written to it would race Vidu's close): every create is
/// answered, Vidu reads each exactly once, and no reservation is left `unknown` or released.
#[actix_web::test]
async fn over_50_creates_no_connection_is_reused_after_its_pool_idle_timeout() {
    for ending in [Ending::Fin, Ending::Reset] {
        let upstream = RawUpstream::start(Behaviour::DropIdle {
            idle: Duration::from_millis(80),
            ending,
        });
        let app = config_for(&upstream)
            .upstream(|u| u.pool_idle_timeout_ms = 25)
            .spawn()
            .await;
        let token = app.token("alice", "t");
        let pauses = [0, 10, 50, 77, 78, 79];
        for i in 0..50 {
            let (status, _, body) = app.create(&token, &small_request()).await;
            assert_eq!(status, StatusCode::OK, "{ending:?}: create {i}: {body}");
            let pause = pauses[i % pauses.len()];
            actix_web::rt::time::sleep(Duration::from_millis(pause)).await;
        }
        assert_eq!(
            upstream.requests(),
            50,
            "{ending:?}: each create reached Vidu once"
        );
        assert!(
            upstream.connections() < 50,
            "{ending:?}: connections were reused within the idle timeout ({})",
            upstream.connections()
        );
        let totals = user_totals(&app, &token).await;
        assert_eq!(totals["admitted"], 50, "{ending:?}: {totals}");
        assert_eq!(totals["credits_unknown"], 0, "{ending:?}: {totals}");
        assert_eq!(totals["credits_released"], 0, "{ending:?}: {totals}");
        assert_eq!(totals["credits_settled"], 50 * 25, "{ending:?}: {totals}");
    }
}

/// Vidu drops keep-alive connections after 30 ms idle, far below the gateway's pool timeout (the default 15 s):
/// each connection is checked before reuse, and one Vidu closed or reset is never written to.
#[actix_web::test]
async fn connections_the_upstream_dropped_while_idle_are_never_used_for_a_create() {
    for ending in [Ending::Fin, Ending::Reset] {
        let upstream = RawUpstream::start(Behaviour::DropIdle {
            idle: Duration::from_millis(30),
            ending,
        });
        let app = config_for(&upstream).spawn().await;
        let token = app.token("alice", "t");
        for i in 0..12 {
            let (status, _, body) = app.create(&token, &small_request()).await;
            assert_eq!(status, StatusCode::OK, "{ending:?}: create {i}: {body}");
            // Reuse a live connection at once, or one the upstream dropped ~60 ms ago.
            let pause = if i % 2 == 1 { 90 } else { 0 };
            actix_web::rt::time::sleep(Duration::from_millis(pause)).await;
        }
        assert_eq!(
            upstream.requests(),
            12,
            "{ending:?}: each create reached Vidu once"
        );
        assert!(
            upstream.connections() < 12,
            "{ending:?}: live connections were reused ({})",
            upstream.connections()
        );
        let totals = user_totals(&app, &token).await;
        assert_eq!(totals["credits_unknown"], 0, "{ending:?}: {totals}");
        assert_eq!(totals["credits_released"], 0, "{ending:?}: {totals}");
    }
}

/// `upstream.pool_idle_timeout_ms`: a pooled connection idle for longer is closed, not reused; one idle for less
/// is reused.
#[actix_web::test]
async fn pooled_connections_idle_longer_than_the_pool_timeout_are_not_reused() {
    let upstream = RawUpstream::start(Behaviour::DropIdle {
        idle: Duration::from_secs(30),
        ending: Ending::Fin,
    });
    let app = config_for(&upstream)
        .upstream(|u| u.pool_idle_timeout_ms = 100)
        .spawn()
        .await;
    let token = app.token("alice", "t");
    let (status, _, _) = app.create(&token, &small_request()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app.create(&token, &small_request()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.connections(), 1, "reused within the idle timeout");
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let (status, _, _) = app.create(&token, &small_request()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.connections(),
        2,
        "a connection idle past upstream.pool_idle_timeout_ms is not reused"
    );
}
