//! Test harness: a mock Vidu that records what it received, the gateway spawned on port 0 (in process, or the
//! real binary), and token minting.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use vidu_gateway::clock::{ManualClock, SharedClock};
use vidu_gateway::config::{LoadedConfig, Origin, load_from_str};
use vidu_gateway::startup::{Application, Options};

pub const VIDU_KEY: &str = "vidu-test-enterprise-key-0123456789";
pub const HS_SECRET: &str = "test-hs256-secret-that-is-long-enough-0123456789";

/// One request as the mock Vidu saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the mock answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    /// Extra response headers (a `content-type` here replaces the default `application/json`).
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A mock Vidu on 127.0.0.1:<random>: records every request, answers with the current responder.
pub struct MockVidu {
    pub url: String,
    received: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Mutex<Responder>>,
}

pub fn created_task(id: &str, credits: u64) -> Value {
    json!({"task_id": id, "state": "created", "model": "viduq2", "credits": credits, "duration": 5,
           "resolution": "720p", "off_peak": false, "created_at": "2026-11-25T00:00:00Z"})
}

impl MockVidu {
    pub async fn start() -> Self {
        let received: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let default: Responder =
            Arc::new(|_| Reply::json(200, created_task("800000000000001", 25)));
        let responder = Arc::new(Mutex::new(default));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (rec, resp) = (received.clone(), responder.clone());
        let server = HttpServer::new(move || {
            let (rec, resp) = (rec.clone(), resp.clone());
            App::new()
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .default_service(web::to(move |req: HttpRequest, body: Bytes| {
                    let (rec, resp) = (rec.clone(), resp.clone());
                    async move {
                        let r = Recorded {
                            method: req.method().to_string(),
                            path: req.uri().to_string(),
                            headers: req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                                .collect(),
                            body,
                        };
                        let reply = (resp.lock().unwrap().clone())(&r);
                        rec.lock().unwrap().push(r);
                        if !reply.delay.is_zero() {
                            actix_web::rt::time::sleep(reply.delay).await;
                        }
                        let mut res =
                            HttpResponse::build(StatusCode::from_u16(reply.status).unwrap());
                        res.content_type("application/json");
                        for (name, value) in &reply.headers {
                            res.insert_header((name.as_str(), value.as_str()));
                        }
                        res.body(reply.body)
                    }
                }))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Self {
            url,
            received,
            responder,
        }
    }

    pub fn respond(&self, f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.responder.lock().unwrap() = Arc::new(f);
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }
}

/// The base test configuration: real upstream mode against `upstream_url`, HS256 test secret, no limits.
pub fn base_config(upstream_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
mode = "vidu"
base_url = "{upstream_url}"
api_key = "{VIDU_KEY}"
connect_timeout_ms = 1000
request_timeout_ms = 2000

[auth]
algorithms = ["HS256"]
hs256_secret = "{HS_SECRET}"
admin_role = "gw-admin"

[state]
ledger_path = "{ledger}"

[telemetry]
log_level = "warn"
"#,
        ledger = std::env::temp_dir()
            .join(format!("vidu-gw-test-{}.sqlite3", uuid_like()))
            .display()
    )
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn load(text: &str) -> LoadedConfig {
    load_from_str(text, Origin::Builtin, Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[allow(dead_code)]
pub struct TestApp {
    pub url: String,
    pub port: u16,
    pub client: awc::Client,
    pub clock: Arc<ManualClock>,
    pub handle: actix_web::dev::ServerHandle,
    pub metrics_port: Option<u16>,
}

impl TestApp {
    /// Spawns the gateway in this process on port 0 with `config` (TOML text).
    pub async fn spawn(config: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // As `main` does: ring for JWT signatures, before any token is minted here.
        vidu_gateway::auth::crypto::install();
        let clock = ManualClock::new(jiff::Timestamp::now());
        let shared: SharedClock = clock.clone();
        let app = Application::build_with(load(config), Options { clock: shared }).unwrap();
        let port = app.port();
        let metrics_port = app.metrics_port();
        let handle = app.handle();
        actix_web::rt::spawn(app.run_until_stopped());
        Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
            clock,
            handle,
            metrics_port,
        }
    }

    /// Valid for 60 days, so tests may move the clock ahead by days.
    pub fn token(&self, sub: &str, team: &str) -> String {
        let exp = jiff::Timestamp::now().as_second() + 60 * 86_400;
        mint(json!({"sub": sub, "team": team, "exp": exp}))
    }

    pub fn admin_token(&self) -> String {
        let exp = jiff::Timestamp::now().as_second() + 60 * 86_400;
        mint(json!({"sub": "root", "team": "ops", "roles": ["gw-admin"], "exp": exp}))
    }

    /// A GET without a token (`/healthz`, `/readyz`).
    pub async fn get_open(&self, path: &str) -> (StatusCode, Vec<(String, String)>, Value) {
        let mut res = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        read(&mut res).await
    }

    /// `POST /ent/v2/img2video` with `body`.
    pub async fn create(
        &self,
        token: &str,
        body: &Value,
    ) -> (StatusCode, Vec<(String, String)>, Value) {
        self.post("/ent/v2/img2video", token, body.to_string())
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: impl Into<Bytes>,
    ) -> (StatusCode, Vec<(String, String)>, Value) {
        let mut res = self
            .client
            .post(format!("{}{path}", self.url))
            .insert_header(("authorization", format!("Bearer {token}")))
            .insert_header(("content-type", "application/json"))
            .send_body(body.into())
            .await
            .unwrap();
        read(&mut res).await
    }

    /// `/metrics` on the main listener (asserting 200), as text.
    pub async fn metrics_text(&self) -> String {
        let mut res = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Vec<(String, String)>, Value) {
        let mut res = self
            .client
            .get(format!("{}{path}", self.url))
            .insert_header(("authorization", format!("Bearer {token}")))
            .send()
            .await
            .unwrap();
        read(&mut res).await
    }
}

pub async fn read(
    res: &mut awc::ClientResponse<
        impl futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
    >,
) -> (StatusCode, Vec<(String, String)>, Value) {
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = res.body().limit(64 * 1024 * 1024).await.unwrap();
    let value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
    (res.status(), headers, value)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// HS256 token with `claims`, `exp` one hour ahead unless given.
pub fn mint(mut claims: Value) -> String {
    vidu_gateway::auth::crypto::install();
    let now = jiff::Timestamp::now().as_second();
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now + 3600);
    }
    jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn small_request() -> Value {
    json!({"model": "viduq2", "images": ["https://example.com/cat.png"], "prompt": "a cat", "duration": 5})
}

/// Asserts the gateway envelope: code = status, reason, trace id, source.
pub fn assert_envelope(
    status: StatusCode,
    headers: &[(String, String)],
    body: &Value,
    reason: &str,
) {
    assert_eq!(body["code"], status.as_u16(), "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert_eq!(body["metadata"]["source"], "gateway", "{body}");
    let trace = body["metadata"]["trace_id"].as_str().unwrap();
    assert_eq!(
        Some(trace),
        header(headers, "x-request-id"),
        "trace_id = X-Request-Id"
    );
    assert!(!body["message"].as_str().unwrap().is_empty());
}

/// The real binary, started with `config` written to a file; its stderr is captured line by line.
pub struct Binary {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

impl Binary {
    pub fn start(config: &str, envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vidu-gateway"));
        cmd.arg("serve").arg("--config").arg(&path);
        // The "listening" line (with the port) is logged at info.
        cmd.env("VIDU_GW__TELEMETRY__LOG_LEVEL", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("vidu-gateway listening") {
                    let v: Value = serde_json::from_str(&line).unwrap_or_default();
                    let _ = tx.send(v["port"].as_u64().unwrap_or(0) as u16);
                }
                log2.lock().unwrap().push(line);
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("gateway did not start: {:?}", log.lock().unwrap()));
        Self {
            child,
            port,
            log,
            dir,
        }
    }

    /// The config file the binary was started with (tests rewrite it to reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("gateway.toml")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits for the process to exit (at most `within`), returning its exit code.
    pub fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vidu-gateway"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child process killed when the test ends, even when it fails first.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
