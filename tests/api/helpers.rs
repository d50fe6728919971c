//! Test harness: a mock Vidu that records what it received, the gateway spawned on port 0 (in process, or the
//! real binary), and token minting.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use vidu_gateway::clock::{ManualClock, SharedClock};
use vidu_gateway::config::{
    AuthSettings, ConfigError, LoadedConfig, Origin, Secret, ServerSettings, Settings,
    StateBackend, StateSettings, TelemetrySettings, UpstreamSettings, load_from_str,
};
use vidu_gateway::startup::{Application, Options};
use vidu_gateway::state::redis::server::RedisServer;

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

/// One request whose head reached the mock, complete or not: how far its body got.
#[derive(Clone, Debug, Default)]
pub struct Arrival {
    pub path: String,
    pub content_length: Option<usize>,
    /// Body bytes received so far.
    pub bytes: usize,
    /// The body arrived to its end (only then is the request recorded and answered).
    pub complete: bool,
    /// The connection ended before the body did.
    pub cut: bool,
}

/// A mock Vidu on 127.0.0.1:<random>: records every request, answers with the current responder.
pub struct MockVidu {
    pub url: String,
    received: Arc<Mutex<Vec<Recorded>>>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    responder: Arc<Mutex<Responder>>,
}

/// A loopback port nothing listens on (bound, then closed again): connections to it are refused.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn created_task(id: &str, credits: u64) -> Value {
    json!({"task_id": id, "state": "created", "model": "viduq2", "credits": credits, "duration": 5,
           "resolution": "720p", "off_peak": false, "created_at": "2026-11-25T00:00:00Z"})
}

impl MockVidu {
    pub async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap()).await
    }

    /// The mock on `listener` (a port a test chose, e.g. one the gateway found closed before).
    pub async fn start_on(listener: TcpListener) -> Self {
        let received: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
        let default: Responder =
            Arc::new(|_| Reply::json(200, created_task("800000000000001", 25)));
        let responder = Arc::new(Mutex::new(default));
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (rec, arr, resp) = (received.clone(), arrivals.clone(), responder.clone());
        let server = HttpServer::new(move || {
            let (rec, arr, resp) = (rec.clone(), arr.clone(), resp.clone());
            App::new().default_service(web::to(
                move |req: HttpRequest, mut payload: web::Payload| {
                    let (rec, arr, resp) = (rec.clone(), arr.clone(), resp.clone());
                    async move {
                        let index = {
                            let mut arr = arr.lock().unwrap();
                            arr.push(Arrival {
                                path: req.uri().to_string(),
                                content_length: req
                                    .headers()
                                    .get("content-length")
                                    .and_then(|v| v.to_str().ok()?.parse().ok()),
                                ..Arrival::default()
                            });
                            arr.len() - 1
                        };
                        let mut body = bytes::BytesMut::new();
                        while let Some(chunk) = payload.next().await {
                            match chunk {
                                Ok(c) => {
                                    body.extend_from_slice(&c);
                                    arr.lock().unwrap()[index].bytes = body.len();
                                }
                                Err(_) => {
                                    arr.lock().unwrap()[index].cut = true;
                                    return HttpResponse::BadRequest().finish();
                                }
                            }
                        }
                        arr.lock().unwrap()[index].complete = true;
                        let r = Recorded {
                            method: req.method().to_string(),
                            path: req.uri().to_string(),
                            headers: req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                                .collect(),
                            body: body.freeze(),
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
                },
            ))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Self {
            url,
            received,
            arrivals,
            responder,
        }
    }

    pub fn respond(&self, f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.responder.lock().unwrap() = Arc::new(f);
    }

    /// Requests received whole (and answered).
    pub fn received(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }

    /// Every request whose head arrived, with how much of its body did.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap().clone()
    }
}

/// The configuration a test gateway runs with: the base settings (the real upstream mode against the mock, the
/// HS256 test secret, no limits, `log_level = "warn"`, the ledger in a temporary directory this value owns),
/// changed by typed edits, then written out as a TOML file and loaded by the real loader — so settings the loader
/// refuses fail here as they would in a file.
///
/// Clones share the temporary directory (and so the ledger); it is removed when the last clone, and the last
/// gateway started from one, is gone.
#[derive(Clone)]
pub struct TestConfig {
    settings: Settings,
    /// TOML laid over the typed settings when the file is written (tables merge key by key).
    overlay: toml::Table,
    /// Holds the ledger; removed when the last clone (and the last gateway started from one) is gone.
    _dir: Arc<tempfile::TempDir>,
    /// The test's own `redis-server`, when it runs on the Redis backend (see [`on_redis`]).
    _redis: Option<Arc<RedisServer>>,
}

thread_local! {
    /// The `redis-server` of the test running on this thread, when it runs on the Redis backend.
    static REDIS: std::cell::RefCell<Option<Arc<RedisServer>>> = const { std::cell::RefCell::new(None) };
}

/// Runs a test on the Redis backend: every `TestConfig` it builds points at one `redis-server` of its own, started
/// here and stopped when the test ends. Without `redis-server` the test fails with the install command (unless
/// `VIDU_GW_SKIP_REDIS_TESTS=1`).
pub async fn on_redis(test: impl std::future::Future<Output = ()>) {
    if vidu_gateway::state::redis::server::skipped() {
        return;
    }
    let server = Arc::new(RedisServer::start().unwrap_or_else(|e| panic!("{e}")));
    REDIS.with(|r| *r.borrow_mut() = Some(server.clone()));
    test.await;
    REDIS.with(|r| r.borrow_mut().take());
    // Proof that the gateway ran on Redis: what it admitted or refused is there (rejections and heartbeats are
    // written by tasks of their own: give them a moment on this runtime).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let keys: i64 = server.query(&["DBSIZE"]).unwrap();
        if keys > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the test ran on the Redis backend but left nothing in Redis"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `redis-server` of the test running on this thread (inside [`on_redis`]).
pub fn current_redis() -> Arc<RedisServer> {
    REDIS
        .with(|r| r.borrow().clone())
        .expect("current_redis() is called inside on_redis")
}

/// Tests that need state shared between processes (several replicas): on the Redis backend only.
#[macro_export]
macro_rules! on_redis_backend {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(
                #[actix_web::test]
                async fn $name() {
                    $crate::helpers::on_redis(super::$name()).await
                }
            )*
        }
    };
}

/// Each test twice, once per state backend: `memory::<name>` and `redis::<name>` (the same body, parameterised).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name().await
                }
            )*
        }
        mod redis {
            $(
                #[actix_web::test]
                async fn $name() {
                    $crate::helpers::on_redis(super::$name()).await
                }
            )*
        }
    };
}

impl TestConfig {
    /// The base configuration against `upstream_url`.
    pub fn new(upstream_url: &str) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let base = format!(
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

[tasks]
# Tests that follow tasks by reconciliation turn it on; the others must not see the reconciler's queries.
reconcile_interval_secs = 0

[balance]
# Likewise the balance watch's reads of GET /ent/v2/credits (tests that turn it on read every 100 ms).
poll_secs = 0

[telemetry]
log_level = "warn"
"#
        );
        // The file's settings before loading: no seed catalog filled in, no validation yet (`load` does both).
        let mut settings: Settings = toml::from_str(&base).unwrap();
        settings.state.ledger_path = dir.path().join("ledger.sqlite3");
        settings.state.spool_path = dir.path().join("spool.sqlite3");
        let redis = REDIS.with(|r| r.borrow().clone());
        if let Some(server) = &redis {
            settings.state.backend = StateBackend::Redis;
            settings.state.redis_url = Secret::new(server.url());
            // Generous: a loaded test machine stalls a round trip now and then; the fault tests set their own.
            settings.state.redis_timeout_ms = 2000;
        }
        Self {
            settings,
            overlay: toml::Table::new(),
            _dir: dir,
            _redis: redis,
        }
    }

    /// Whether this configuration runs on the Redis backend (a test inside `on_redis`).
    pub fn on_redis(&self) -> bool {
        self.settings.state.backend == StateBackend::Redis
    }

    pub fn settings(mut self, edit: impl FnOnce(&mut Settings)) -> Self {
        edit(&mut self.settings);
        self
    }

    pub fn server(self, edit: impl FnOnce(&mut ServerSettings)) -> Self {
        self.settings(|s| edit(&mut s.server))
    }

    pub fn upstream(self, edit: impl FnOnce(&mut UpstreamSettings)) -> Self {
        self.settings(|s| edit(&mut s.upstream))
    }

    pub fn auth(self, edit: impl FnOnce(&mut AuthSettings)) -> Self {
        self.settings(|s| edit(&mut s.auth))
    }

    pub fn state(self, edit: impl FnOnce(&mut StateSettings)) -> Self {
        self.settings(|s| edit(&mut s.state))
    }

    pub fn telemetry(self, edit: impl FnOnce(&mut TelemetrySettings)) -> Self {
        self.settings(|s| edit(&mut s.telemetry))
    }

    /// TOML laid over the settings when the file is written, key by key: policies as an operator writes them
    /// (`[policy.defaults]` tables), and values no typed setting can hold (a wrong type, an unknown key) for the
    /// tests of the loader's messages. A key set here wins over a typed edit of the same key.
    pub fn toml(mut self, fragment: &str) -> Self {
        let fragment: toml::Table = toml::from_str(fragment).unwrap();
        merge(&mut self.overlay, fragment);
        self
    }

    /// The configuration file's text: every setting written out, secrets in clear.
    pub fn text(&self) -> String {
        let toml::Value::Table(mut doc) = toml::Value::try_from(&self.settings).unwrap() else {
            unreachable!("settings are a table")
        };
        // `Secret` serialises redacted: the file gets the values.
        for (key, secret) in self.settings.secrets() {
            if key.ends_with("_file") {
                // Read from a file: not a value the file can hold.
                continue;
            }
            // A dotted key path (`callbacks.teams.video.secret`): the value goes in its innermost table.
            let mut path: Vec<&str> = key.split('.').collect();
            let name = path.pop().unwrap();
            let mut table = &mut doc;
            for part in path {
                table = table
                    .get_mut(part)
                    .and_then(toml::Value::as_table_mut)
                    .unwrap();
            }
            table.insert(name.to_owned(), secret.expose().into());
        }
        merge(&mut doc, self.overlay.clone());
        toml::to_string(&doc).unwrap()
    }

    /// Loads `text()` as the gateway would load the file (no environment overrides).
    pub fn load(&self) -> Result<LoadedConfig, ConfigError> {
        load_from_str(&self.text(), Origin::Builtin, Default::default())
    }

    /// The ledger file (in this configuration's temporary directory unless a test moved it).
    pub fn ledger(&self) -> PathBuf {
        self.settings.state.ledger_path.clone()
    }

    /// Spawns the gateway in this process on port 0.
    pub async fn spawn(self) -> TestApp {
        TestApp::spawn(self).await
    }
}

/// Lays `over` onto `base`: tables merge key by key, any other value replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[allow(dead_code)]
pub struct TestApp {
    pub url: String,
    pub port: u16,
    pub client: awc::Client,
    pub clock: Arc<ManualClock>,
    pub handle: actix_web::dev::ServerHandle,
    pub metrics_port: Option<u16>,
    /// What the gateway was started with (it also keeps the ledger's temporary directory alive).
    pub config: TestConfig,
}

impl TestApp {
    /// The base configuration against `mock`, to change and then `spawn()`.
    pub fn builder(mock: &MockVidu) -> TestConfig {
        TestConfig::new(&mock.url)
    }

    /// Spawns the gateway in this process on port 0 with `config`, on a manual clock set to the current time.
    pub async fn spawn(config: TestConfig) -> Self {
        Self::spawn_on(config, jiff::Timestamp::now(), true).await
    }

    /// Spawns the gateway with its manual clock at `start`; on Redis, `state_reads_clock` makes the scripts read
    /// that clock instead of Redis's `TIME` (false: the replica runs on Redis's time, as in production).
    pub async fn spawn_on(
        config: TestConfig,
        start: jiff::Timestamp,
        state_reads_clock: bool,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // As `main` does: ring for JWT signatures, before any token is minted here.
        vidu_gateway::auth::crypto::install();
        let loaded = config.load().unwrap_or_else(|e| panic!("{e}"));
        let clock = ManualClock::new(start);
        let shared: SharedClock = clock.clone();
        let app = Application::build_with(
            loaded,
            Options {
                clock: shared,
                state_reads_clock,
                // The first beat runs at start; tests beat on demand through `/readyz`.
                heartbeat_every: Duration::from_secs(3600),
                reconcile_every: Duration::from_millis(100),
                balance_every: Some(Duration::from_millis(100)),
                relay_every: Duration::from_millis(50),
            },
        )
        .unwrap();
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
            config,
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

/// Waits until `condition` holds (polling every 10 ms), for at most 5 s.
pub async fn until(condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "the condition did not hold within 5 s"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The real binary, started with a configuration written to a file; its stderr is captured line by line.
pub struct Binary {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Holds the configuration file.
    dir: tempfile::TempDir,
    /// The configuration's own directory (its ledger), kept while the binary runs.
    _config: TestConfig,
}

impl Binary {
    /// Starts `vidu-gateway serve --config <file>` with `config`'s text and `envs`, logging at info; returns once
    /// it logs the port it listens on.
    pub async fn start(config: &TestConfig, envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config.text()).unwrap();
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
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line);
            }
        });
        let mut bin = Self {
            child,
            port: 0,
            log,
            dir,
            _config: config.clone(),
        };
        let line = bin
            .wait_for_line(Duration::from_secs(20), |l| {
                l.contains("vidu-gateway listening")
            })
            .await
            .unwrap_or_else(|| panic!("gateway did not start: {}", bin.logs()));
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        bin.port = v["port"].as_u64().unwrap_or(0) as u16;
        bin
    }

    /// The first log line that satisfies `pred`, waiting for it at most `within`.
    pub async fn wait_for_line(
        &self,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The logs once a line contains `needle` (waiting at most 5 s).
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_line(Duration::from_secs(5), |l| l.contains(needle))
            .await
            .unwrap_or_else(|| panic!("no log line with {needle:?}: {}", self.logs()));
        self.logs()
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
    pub async fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
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

/// The harness itself: typed edits and TOML reach the gateway through the real loader, which refuses what it
/// would refuse in a file; the ledger's temporary directory goes with the last configuration holding it.
#[test]
fn a_test_config_is_loaded_like_a_file_and_removes_its_directory() {
    let cfg = TestConfig::new("http://127.0.0.1:9")
        .server(|s| s.max_body_bytes = 1234)
        .toml("[policy.defaults]\ndaily_credits = 7");
    let loaded = cfg.load().unwrap();
    assert_eq!(loaded.settings.server.max_body_bytes, 1234);
    assert!(
        loaded
            .redacted_toml()
            .contains("[policy.defaults]\ndaily_credits = 7"),
        "{}",
        loaded.redacted_toml()
    );
    assert_eq!(loaded.settings.upstream.api_key.expose(), VIDU_KEY);
    assert_eq!(loaded.settings.auth.hs256_secret.expose(), HS_SECRET);
    assert!(!loaded.settings.models.is_empty(), "the seed catalog");

    let refused = cfg
        .clone()
        .server(|s| s.max_buffered_body_bytes = 1000)
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(
            "server.max_buffered_body_bytes = 1000 is below server.max_body_bytes = 1234"
        ),
        "{refused}"
    );

    let dir = cfg.ledger().parent().unwrap().to_owned();
    assert!(dir.starts_with(std::env::temp_dir()) && dir.is_dir());
    let clone = cfg.clone();
    drop(cfg);
    assert!(dir.is_dir(), "a clone still holds it");
    drop(clone);
    assert!(!dir.exists());
}

/// One request to any gateway URL (a `Binary`'s among them): `GET` or `POST`, with a bearer token and an optional JSON body.
pub async fn send(
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
