//! Request bodies under a deadline and a cap: raw TCP clients on loopback that stall, trickle,
//! upload slowly but steadily, or crowd the buffer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// T = 1 s, R = 64 KiB/s.
fn config(mock: &MockVidu) -> TestConfig {
    TestApp::builder(mock).server(|s| {
        s.body_read_timeout_ms = 1000;
        s.body_min_bytes_per_sec = 65536;
    })
}

/// A JSON object of exactly `len` bytes that the quote endpoint accepts (padded with spaces).
fn quote_body(len: usize) -> Vec<u8> {
    let mut body = small_request().to_string().into_bytes();
    body.pop(); // the closing brace
    body.resize(len - 1, b' ');
    body.push(b'}');
    body
}

/// One HTTP/1.1 request written by hand, so the test decides when each byte is sent.
pub struct Raw {
    stream: TcpStream,
}

/// A parsed response: status, headers, JSON body.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

impl Raw {
    /// Connects and sends the head of `POST path` declaring `content_length`.
    pub fn post(port: u16, path: &str, token: &str, content_length: usize) -> Self {
        Self::post_with(port, path, token, content_length, &[])
    }

    /// [`post`](Self::post) with `extra` headers.
    pub fn post_with(
        port: u16,
        path: &str,
        token: &str,
        content_length: usize,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {content_length}\r\n"
        );
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        Self { stream }
    }

    /// Closes the connection (both directions) without sending the rest.
    pub fn hang_up(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn try_clone(&self) -> Self {
        Self {
            stream: self.stream.try_clone().unwrap(),
        }
    }

    /// Reads one response (head and `Content-Length` body), waiting at most `within`.
    pub fn response(&mut self, within: Duration) -> RawResponse {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk).expect("a response in time");
            assert!(n > 0, "connection closed before a response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        let len: usize = header(&headers, "content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = self
                .stream
                .read(&mut chunk)
                .expect("the whole body in time");
            assert!(n > 0, "connection closed inside the body");
            body.extend_from_slice(&chunk[..n]);
        }
        RawResponse {
            status,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        }
    }

    /// True when the server closes the connection (EOF or reset) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let until = Instant::now() + within;
        let mut chunk = [0u8; 4096];
        while Instant::now() < until {
            self.stream
                .set_read_timeout(Some(until - Instant::now() + Duration::from_millis(1)))
                .unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
        false
    }
}

/// Runs blocking socket work off the test's runtime thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    actix_web::rt::task::spawn_blocking(f).await.unwrap()
}

fn assert_408(res: &RawResponse, needle: &str) {
    assert_eq!(res.status, 408, "{}", res.body);
    assert_eq!(res.body["code"], 408, "{}", res.body);
    assert_eq!(res.body["reason"], "RequestTimeout", "{}", res.body);
    assert_eq!(res.body["metadata"]["source"], "gateway");
    let message = res.body["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message}");
    assert_eq!(res.header("connection"), Some("close"), "{:?}", res.headers);
}

#[actix_web::test]
async fn a_body_that_never_arrives_is_cut_off_with_408_and_the_connection_closed() {
    let mock = MockVidu::start().await;
    let app = config(&mock).spawn().await;
    let (port, token) = (app.port, app.token("alice", "marketing"));
    let (elapsed, res, closed) = blocking(move || {
        let mut raw = Raw::post(port, "/gateway/v1/img2video/quote", &token, 100_000);
        let started = Instant::now();
        let res = raw.response(Duration::from_secs(10));
        let elapsed = started.elapsed();
        (elapsed, res, raw.closed_within(Duration::from_secs(3)))
    })
    .await;
    assert_408(&res, "server.body_read_timeout_ms");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "cut off after T = 1 s (+ slack), not {elapsed:?}"
    );
    assert!(closed, "the connection is closed after the 408");
}

#[actix_web::test]
async fn a_body_trickling_a_byte_every_200_ms_is_cut_off_within_the_deadline() {
    let mock = MockVidu::start().await;
    let app = config(&mock).spawn().await;
    let (port, token) = (app.port, app.token("alice", "marketing"));
    let (elapsed, res, closed) = blocking(move || {
        let body = quote_body(1000);
        let mut raw = Raw::post(port, "/gateway/v1/img2video/quote", &token, body.len());
        let mut writer = raw.try_clone();
        let started = Instant::now();
        // The trickle goes on after the answer: the server must still close the connection.
        std::thread::spawn(move || {
            for b in body {
                if writer.send(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let res = raw.response(Duration::from_secs(10));
        let elapsed = started.elapsed();
        (elapsed, res, raw.closed_within(Duration::from_secs(3)))
    })
    .await;
    assert_408(&res, "server.body_min_bytes_per_sec");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "cut off at T = 1 s plus what 5 bytes earn (+ slack), not {elapsed:?}"
    );
    assert!(
        closed,
        "the connection is closed although the client keeps sending"
    );
}

#[actix_web::test]
async fn a_chunked_body_trickling_after_its_408_does_not_hold_the_connection() {
    let mock = MockVidu::start().await;
    let app = config(&mock).spawn().await;
    let (port, token) = (app.port, app.token("alice", "marketing"));
    let (res, closed) = blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let head = format!(
            "POST /gateway/v1/img2video/quote HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut raw = Raw { stream };
        let mut writer = raw.try_clone();
        std::thread::spawn(move || {
            for _ in 0..100 {
                if writer.send(b"1\r\n \r\n").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let res = raw.response(Duration::from_secs(10));
        (res, raw.closed_within(Duration::from_secs(3)))
    })
    .await;
    assert_408(&res, "server.body_min_bytes_per_sec");
    assert!(
        closed,
        "the connection is closed, not drained for as long as the client trickles"
    );
}

#[actix_web::test]
async fn a_body_that_stalls_midway_is_cut_off_although_its_bytes_earned_more_time() {
    let mock = MockVidu::start().await;
    let app = config(&mock).spawn().await;
    let (port, token) = (app.port, app.token("alice", "marketing"));
    let (elapsed, res) = blocking(move || {
        // 1 MiB at once earns 16 s at 64 KiB/s; a pause of T = 1 s still ends it.
        let mut raw = Raw::post(port, "/gateway/v1/img2video/quote", &token, 2 << 20);
        raw.send(&vec![b' '; 1 << 20]).unwrap();
        let sent = Instant::now();
        let res = raw.response(Duration::from_secs(20));
        (sent.elapsed(), res)
    })
    .await;
    assert_408(&res, "stalled");
    assert!(
        elapsed < Duration::from_millis(2500),
        "cut off about T after the last byte, not {elapsed:?}"
    );
}

#[actix_web::test]
async fn a_slow_but_steady_upload_above_the_minimum_rate_passes() {
    let mock = MockVidu::start().await;
    let app = config(&mock).spawn().await;
    let (port, token) = (app.port, app.token("alice", "marketing"));
    let (elapsed, res) = blocking(move || {
        // 192 KiB at ~96 KiB/s: about 2 s, twice T, above R = 64 KiB/s.
        let body = quote_body(192 * 1024);
        let mut raw = Raw::post(port, "/gateway/v1/img2video/quote", &token, body.len());
        let started = Instant::now();
        for (i, piece) in body.chunks(8 * 1024).enumerate() {
            raw.send(piece).unwrap();
            let next = started + Duration::from_millis(83 * (i as u64 + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let res = raw.response(Duration::from_secs(10));
        (started.elapsed(), res)
    })
    .await;
    assert!(elapsed > Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(res.status, 200, "{}", res.body);
    assert!(res.body.is_object(), "{}", res.body);
}

#[actix_web::test]
async fn bodies_beyond_max_buffered_body_bytes_get_503_with_retry_after() {
    let mock = MockVidu::start().await;
    let app = config(&mock)
        .server(|s| {
            s.max_body_bytes = 65536;
            s.max_buffered_body_bytes = 100_000;
        })
        .spawn()
        .await;
    let (port, token) = (app.port, app.token("alice", "marketing"));
    let (crowded, first, after) = blocking(move || {
        // A stalled upload holds 60 000 of the 100 000 bytes...
        let mut stalled = Raw::post(port, "/gateway/v1/img2video/quote", &token, 60_000);
        stalled.send(b"{").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // ... so another 60 000 do not fit: 503 at once.
        let body = quote_body(60_000);
        let mut second = Raw::post(port, "/gateway/v1/img2video/quote", &token, body.len());
        second.send(&body).unwrap();
        let crowded = second.response(Duration::from_secs(5));
        // The stalled one is cut off, which frees its share: the same upload now passes.
        let first = stalled.response(Duration::from_secs(5));
        let mut third = Raw::post(port, "/gateway/v1/img2video/quote", &token, body.len());
        third.send(&body).unwrap();
        (crowded, first, third.response(Duration::from_secs(5)))
    })
    .await;
    assert_eq!(crowded.status, 503, "{}", crowded.body);
    assert_eq!(crowded.body["reason"], "ServiceUnavailable");
    assert_eq!(crowded.body["metadata"]["source"], "gateway");
    let message = crowded.body["message"].as_str().unwrap();
    assert!(
        message.contains("server.max_buffered_body_bytes"),
        "{message}"
    );
    assert_eq!(crowded.header("retry-after"), Some("1"));
    assert_eq!(first.status, 408, "{}", first.body);
    assert_eq!(after.status, 200, "{}", after.body);
}
