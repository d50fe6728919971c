//! The sandbox upstream: an in-process Vidu simulator with Vidu's response shapes, so teams integrate without a
//! key and without spending credits. It plays a task's whole lifecycle, read from the injectable clock:
//!
//! - A task goes `created` → `processing` (from a fifth of `upstream.sandbox_complete_after_secs`) → `success`
//!   (at `upstream.sandbox_complete_after_secs`, with `creations[]`).
//! - A prompt containing `[fail]` makes the task end `failed` instead, at the time it would have succeeded:
//!   `err_code` `CreationFailed`, `credits` 0, no creations.
//! - The sandbox has no off-peak capacity: an off-peak task stays `queueing` and is `cancelled`
//!   `upstream.sandbox_offpeak_expire_secs` after its creation (`err_code` `OffPeakExpired`, `credits` 0), as
//!   Vidu cancels an off-peak task it has not run within 48 h.
//! - An unfinished task can be cancelled: it is `cancelled` from then on (`err_code` `UserCancelled`, `credits`
//!   0); a finished one cannot. Unknown ids get Vidu's 404 `TaskNotFound`.
//!
//! Callbacks: a create whose `callback_url` is the gateway's own (`callbacks.public_base_url` +
//! `/gateway/v1/callbacks/vidu`, which the gateway puts there; the sandbox calls no other URL) gets, as from Vidu, a
//! POST of the query answer
//! (`GET /ent/v2/tasks/{id}/creations`) on each state change — `processing` when it starts, then the terminal
//! state (`success`, `failed`, or `cancelled` on expiry and right after a cancel). They are signed as Vidu signs
//! them (`../shared/vidu/CALLBACKS.md`), with [`CALLBACK_KEY`] in place of the enterprise key: the gateway
//! verifies sandbox callbacks with that key. A terminal callback is tried 3 more times, 1 s apart, when it is not
//! answered 2xx; each attempt is bounded by 5 s; redirects are not followed. A failed delivery is logged at WARN
//! with the task id and the URL's host only.
//!
//! Deliveries are scheduled in real time, at the transition's offset from the creation, on the actix worker that
//! took the create (none without an actix runtime, e.g. in unit tests). Their body is the query answer for the
//! state of that transition — built by the same function as the query's, but not from the clock at send time, so
//! that a manual clock (tests) does not hold callbacks back; a task cancelled meanwhile announces `cancelled`
//! instead. The `Date` they are signed with is read from the injectable clock, as the gateway's verification is.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::{Method, StatusCode};
use awc::error::SendRequestError;
use bytes::Bytes;
use futures_util::future::{Either, select};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;
use url::Url;

use super::exchange::{UpstreamRequest, UpstreamResponse};
use crate::callbacks::signature::signed_headers;
use crate::catalog::Model;
use crate::clock::SharedClock;
use crate::config::LiveConfig;

/// The key the sandbox signs its callbacks with (Vidu signs with the enterprise key; the sandbox has none).
pub const CALLBACK_KEY: &str = "vidu-sandbox-callback-key";

/// Tasks kept before the oldest are forgotten (the sandbox is for integration, not storage).
const MAX_TASKS: usize = 100_000;
/// A prompt containing this makes the task fail.
const FAIL_MARKER: &str = "[fail]";
/// The sandbox account's balance before any task: `GET /ent/v2/credits` answers it minus what tasks were charged.
pub const SANDBOX_BALANCE: u64 = 1_000_000;
/// Tasks the sandbox account runs at once (Vidu's default per organisation); the others count as queued.
const SANDBOX_CONCURRENCY: u64 = 5;
/// Attempts at delivering a terminal callback (Vidu retries it 3 times); other states get one.
const TERMINAL_ATTEMPTS: u32 = 4;
/// The wait between two attempts at one callback.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// One attempt at a callback, connect to answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

type Tasks = BTreeMap<u64, Task>;

#[derive(Debug)]
struct Task {
    created_at: Timestamp,
    cancelled: bool,
    credits: u64,
    off_peak: bool,
    /// The prompt asked for a failure (`[fail]`).
    fail: bool,
    payload: String,
    complete_after_secs: u64,
    offpeak_expire_secs: u64,
    callback: Option<Callback>,
}

/// Where a task's state changes are posted.
#[derive(Debug)]
struct Callback {
    url: Url,
    /// Wakes the task's scheduled deliveries on a cancel (none: nothing scheduled, or the schedule has ended).
    cancel: Option<oneshot::Sender<()>>,
}

/// A task's state, as Vidu names it in `state` and `err_code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Created,
    Queueing,
    Processing,
    Success,
    /// The prompt asked for a failure.
    Failed,
    /// Cancelled through the API.
    UserCancelled,
    /// An off-peak task not run in time.
    OffPeakExpired,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Queueing => "queueing",
            Self::Processing => "processing",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::UserCancelled | Self::OffPeakExpired => "cancelled",
        }
    }

    fn err_code(self) -> &'static str {
        match self {
            Self::Failed => "CreationFailed",
            Self::UserCancelled => "UserCancelled",
            Self::OffPeakExpired => "OffPeakExpired",
            _ => "",
        }
    }

    fn terminal(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failed | Self::UserCancelled | Self::OffPeakExpired
        )
    }

    /// Whether the task is charged in this state (a failed or cancelled one is not).
    fn charged(self) -> bool {
        !matches!(
            self,
            Self::Failed | Self::UserCancelled | Self::OffPeakExpired
        )
    }
}

impl Task {
    /// The state changes the task goes through on its own, in order, each with its time after the creation (ms):
    /// what the callbacks announce. [`Task::state_at`] reports the same states from the same times.
    fn transitions(&self) -> Vec<(u64, State)> {
        if self.off_peak {
            return vec![(
                self.offpeak_expire_secs.saturating_mul(1000),
                State::OffPeakExpired,
            )];
        }
        let total = self.complete_after_secs.saturating_mul(1000);
        let end = if self.fail {
            State::Failed
        } else {
            State::Success
        };
        let processing = processing_from(total);
        if processing < total {
            vec![(processing, State::Processing), (total, end)]
        } else {
            vec![(total, end)]
        }
    }

    /// The state at `now`.
    fn state_at(&self, now: Timestamp) -> State {
        if self.cancelled {
            return State::UserCancelled;
        }
        let elapsed_ms = now
            .duration_since(self.created_at)
            .as_millis()
            .max(0)
            .unsigned_abs();
        if self.off_peak {
            return if elapsed_ms >= u128::from(self.offpeak_expire_secs) * 1000 {
                State::OffPeakExpired
            } else {
                State::Queueing
            };
        }
        let total = self.complete_after_secs.saturating_mul(1000);
        if elapsed_ms >= u128::from(total) {
            if self.fail {
                State::Failed
            } else {
                State::Success
            }
        } else if elapsed_ms < u128::from(processing_from(total)) {
            State::Created
        } else {
            State::Processing
        }
    }
}

/// When processing starts (ms after the creation), for a task done `total` ms after it: at a fifth.
fn processing_from(total: u64) -> u64 {
    total.div_ceil(5)
}

/// The query answer for task `id` in `state`: what `GET /ent/v2/tasks/{id}/creations` answers, and what a
/// callback carries.
fn answer(id: u64, task: &Task, state: State) -> Value {
    let creations = if state == State::Success {
        json!([{
            "id": format!("{id}0"),
            "url": format!("https://sandbox.vidu-gateway.invalid/creations/{id}.mp4"),
            "cover_url": format!("https://sandbox.vidu-gateway.invalid/creations/{id}.jpg"),
            "watermarked_url": format!("https://sandbox.vidu-gateway.invalid/creations/{id}-wm.mp4"),
        }])
    } else {
        json!([])
    };
    json!({
        "id": id.to_string(),
        "state": state.name(),
        "err_code": state.err_code(),
        "credits": if state.charged() { task.credits } else { 0 },
        "payload": task.payload,
        "off_peak": task.off_peak,
        "creations": creations,
    })
}

pub struct Sandbox {
    config: Arc<LiveConfig>,
    clock: SharedClock,
    /// Shared with the scheduled callback deliveries, which read the task when they send.
    tasks: Arc<Mutex<Tasks>>,
    next_id: AtomicU64,
}

/// The fields the simulator reads; everything else in the body is accepted and ignored, as Vidu does.
#[derive(Deserialize)]
struct CreateBody<'a> {
    model: Option<String>,
    #[serde(borrow)]
    images: Option<Vec<&'a RawValue>>,
    prompt: Option<String>,
    duration: Option<u32>,
    seed: Option<u64>,
    resolution: Option<String>,
    movement_amplitude: Option<String>,
    payload: Option<String>,
    off_peak: Option<bool>,
    watermark: Option<bool>,
    audio: Option<bool>,
    is_rec: Option<bool>,
    callback_url: Option<String>,
}

impl Sandbox {
    pub fn new(config: Arc<LiveConfig>, clock: SharedClock) -> Self {
        // Vidu's task ids are large decimal numbers; start from the clock so ids differ across restarts.
        let start = clock.now().as_millisecond().unsigned_abs() * 1000;
        Self {
            config,
            clock,
            tasks: Arc::new(Mutex::new(BTreeMap::new())),
            next_id: AtomicU64::new(start),
        }
    }

    pub fn handle(&self, req: &UpstreamRequest) -> UpstreamResponse {
        let path = req.path.as_str();
        let task_path = path
            .strip_prefix("/ent/v2/tasks/")
            .and_then(|rest| rest.split_once('/'));
        match (&req.method, path, task_path) {
            (&Method::POST, "/ent/v2/img2video", _) => self.create(&req.body, &req.request_id),
            (&Method::GET, _, Some((id, "creations"))) => self.query(id, &req.request_id),
            (&Method::POST, _, Some((id, "cancel"))) => self.cancel(id, &req.request_id),
            (&Method::GET, "/ent/v2/credits", _) => self.credits(),
            _ => vidu_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "not found",
                &req.request_id,
            ),
        }
    }

    fn create(&self, body: &Bytes, request_id: &str) -> UpstreamResponse {
        let config = self.config.current();
        let settings = &config.settings;
        let b: CreateBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(_) => {
                return vidu_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid request body",
                    request_id,
                );
            }
        };
        let invalid = |field: &str| {
            vidu_error(
                StatusCode::BAD_REQUEST,
                "FieldInvalid",
                &format!("invalid field: {field}"),
                request_id,
            )
        };
        let Some(model_name) = b.model else {
            return vidu_error(
                StatusCode::BAD_REQUEST,
                "FieldLacking",
                "field lacking: model",
                request_id,
            );
        };
        let Some(model) = Model::find(&settings.models, &model_name) else {
            return invalid("model");
        };
        let spec = model.spec();
        let images = match b.images {
            None => {
                return vidu_error(
                    StatusCode::BAD_REQUEST,
                    "FieldLacking",
                    "field lacking: images",
                    request_id,
                );
            }
            Some(i) if i.len() != 1 => {
                return vidu_error(
                    StatusCode::BAD_REQUEST,
                    "FieldItemCountOutOfRange",
                    "field item count out of range: images",
                    request_id,
                );
            }
            Some(i) => i,
        };
        let duration = b.duration.unwrap_or(spec.durations.default);
        if !(spec.durations.min..=spec.durations.max).contains(&duration) {
            return invalid("duration");
        }
        let offer = match &b.resolution {
            None => model.default_offer(),
            Some(r) => match model.offer(r) {
                Some(offer) => offer,
                None => return invalid("resolution"),
            },
        };
        let audio = b.audio.unwrap_or(spec.audio_default);
        let off_peak = b.off_peak.unwrap_or(false);
        if off_peak && audio && !spec.off_peak_with_audio {
            return invalid("off_peak");
        }
        let credits = offer.price().estimate(
            duration,
            off_peak,
            b.is_rec == Some(true),
            &settings.pricing,
        );
        let seed = match b.seed {
            Some(s) if s != 0 => s,
            _ => self.next_id.load(Ordering::Relaxed) % 2_147_483_647,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let payload = b.payload.unwrap_or_default();
        let prompt = b.prompt.unwrap_or_default();
        let fail = prompt.contains(FAIL_MARKER);
        let response = json!({
            "task_id": id.to_string(),
            "state": "created",
            "model": model_name,
            "prompt": prompt,
            "images": images,
            "duration": duration,
            "seed": seed,
            "resolution": offer.resolution(),
            "movement_amplitude": b.movement_amplitude.unwrap_or_else(|| "auto".into()),
            "payload": payload,
            "off_peak": off_peak,
            "credits": credits,
            "watermark": b.watermark.unwrap_or(false),
            "created_at": now.to_string(),
        });
        let mut task = Task {
            created_at: now,
            cancelled: false,
            credits,
            off_peak,
            fail,
            payload,
            complete_after_secs: settings.upstream.sandbox_complete_after_secs,
            offpeak_expire_secs: settings.upstream.sandbox_offpeak_expire_secs,
            callback: None,
        };
        let mut schedule = None;
        // Only the gateway's own callback URL is called: the sandbox never fetches a URL a caller chose.
        let own = settings.callbacks.own_url();
        if let Some(url) = b
            .callback_url
            .as_deref()
            .filter(|u| Some(*u) == own.as_deref())
            .and_then(callback_url)
        {
            let cancel = if runtime() {
                let (tx, rx) = oneshot::channel();
                schedule = Some((self.delivery(id, url.clone()), task.transitions(), rx));
                Some(tx)
            } else {
                None
            };
            task.callback = Some(Callback { url, cancel });
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.insert(id, task);
        while tasks.len() > MAX_TASKS {
            tasks.pop_first();
        }
        drop(tasks);
        if let Some((delivery, transitions, cancelled)) = schedule {
            actix_web::rt::spawn(delivery.follow(Instant::now(), transitions, cancelled));
        }
        json_response(StatusCode::OK, &response)
    }

    fn query(&self, id: &str, request_id: &str) -> UpstreamResponse {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let Some((n, task)) = id
            .parse::<u64>()
            .ok()
            .and_then(|n| tasks.get(&n).map(|t| (n, t)))
        else {
            return task_not_found(request_id);
        };
        let response = answer(n, task, task.state_at(self.clock.now()));
        drop(tasks);
        json_response(StatusCode::OK, &response)
    }

    /// The account, as Vidu answers `GET /ent/v2/credits`: the balance left after every task still charged (a
    /// failed or cancelled one is given back), tasks running (at most the concurrency limit) and queued.
    fn credits(&self) -> UpstreamResponse {
        let now = self.clock.now();
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let (mut charged, mut unfinished) = (0u64, 0u64);
        for task in tasks.values() {
            let state = task.state_at(now);
            if state.charged() {
                charged = charged.saturating_add(task.credits);
            }
            if !state.terminal() {
                unfinished += 1;
            }
        }
        drop(tasks);
        let running = unfinished.min(SANDBOX_CONCURRENCY);
        json_response(
            StatusCode::OK,
            &json!({"remains": [{
                "type": "sandbox",
                "credit_remain": SANDBOX_BALANCE.saturating_sub(charged),
                "concurrency_limit": SANDBOX_CONCURRENCY,
                "current_concurrency": running,
                "queue_count": unfinished - running,
            }]}),
        )
    }

    fn cancel(&self, id: &str, request_id: &str) -> UpstreamResponse {
        let now = self.clock.now();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let Some((n, task)) = id
            .parse::<u64>()
            .ok()
            .and_then(|n| tasks.get_mut(&n).map(|t| (n, t)))
        else {
            return task_not_found(request_id);
        };
        let state = task.state_at(now);
        if state.terminal() {
            return vidu_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("task is already {} and cannot be cancelled", state.name()),
                request_id,
            );
        }
        task.cancelled = true;
        // The scheduled deliveries announce the cancel; when none are left to (the schedule ended early, as it
        // can when a test's manual clock lags real time), one delivery is sent on its own.
        let alone = match task.callback.as_mut() {
            Some(callback) => {
                let woken = callback
                    .cancel
                    .take()
                    .is_some_and(|wake| wake.send(()).is_ok());
                (!woken && runtime()).then(|| self.delivery(n, callback.url.clone()))
            }
            None => None,
        };
        drop(tasks);
        if let Some(delivery) = alone {
            actix_web::rt::spawn(async move {
                delivery
                    .announce(&callback_client(), State::UserCancelled)
                    .await;
            });
        }
        json_response(StatusCode::OK, &json!({}))
    }

    fn delivery(&self, id: u64, url: Url) -> Delivery {
        Delivery {
            tasks: self.tasks.clone(),
            clock: self.clock.clone(),
            id,
            url,
        }
    }
}

/// A caller's `callback_url` the sandbox posts to: an absolute http(s) URL with a host.
fn callback_url(raw: &str) -> Option<Url> {
    Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// Whether callbacks can be scheduled: an actix runtime runs on this thread.
fn runtime() -> bool {
    actix_web::rt::System::try_current().is_some()
}

/// The client of one task's callbacks: no redirects, each attempt bounded.
fn callback_client() -> awc::Client {
    awc::Client::builder()
        .disable_redirects()
        .timeout(ATTEMPT_TIMEOUT)
        .finish()
}

/// The callbacks of one task.
struct Delivery {
    tasks: Arc<Mutex<Tasks>>,
    clock: SharedClock,
    id: u64,
    url: Url,
}

impl Delivery {
    /// Announces each of `transitions` when it is due (ms after `created`, real time), or the cancel as soon as
    /// `cancelled` wakes; ends after the terminal state (or when the task is forgotten).
    async fn follow(
        self,
        created: Instant,
        transitions: Vec<(u64, State)>,
        mut cancelled: oneshot::Receiver<()>,
    ) {
        let client = callback_client();
        let mut last = None;
        for (after_ms, state) in transitions {
            let due = pin!(tokio::time::sleep_until(
                created + Duration::from_millis(after_ms)
            ));
            if let Either::Right((Err(_), _)) = select(due, &mut cancelled).await {
                // The task was forgotten (its waker dropped with it).
                return;
            }
            last = self.announce(&client, state).await;
            match last {
                None => return,
                Some(s) if s.terminal() => break,
                Some(_) => {}
            }
        }
        // A cancel accepted while the terminal state was being announced (a manual clock behind real time).
        if last != Some(State::UserCancelled) && cancelled.try_recv().is_ok() {
            self.announce(&client, State::UserCancelled).await;
        }
    }

    /// Posts the query answer of the task in `state` (in `cancelled` if it was cancelled meanwhile); returns the
    /// state announced, `None` when the task is forgotten.
    async fn announce(&self, client: &awc::Client, state: State) -> Option<State> {
        let (body, state) = {
            let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            let task = tasks.get(&self.id)?;
            let state = if task.cancelled {
                State::UserCancelled
            } else {
                state
            };
            (answer(self.id, task, state), state)
        };
        let attempts = if state.terminal() {
            TERMINAL_ATTEMPTS
        } else {
            1
        };
        self.deliver(
            client,
            Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            attempts,
        )
        .await;
        Some(state)
    }

    /// Up to `attempts` signed POSTs of `body`, until one is answered 2xx.
    async fn deliver(&self, client: &awc::Client, body: Bytes, attempts: u32) {
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(RETRY_AFTER).await;
            }
            let nonce = uuid::Uuid::new_v4().to_string();
            let mut request = client
                .post(self.url.as_str())
                .insert_header((CONTENT_TYPE, "application/json"));
            for (name, value) in
                signed_headers(CALLBACK_KEY.as_bytes(), &self.url, self.clock.now(), &nonce)
            {
                request = request.insert_header((name, value));
            }
            let failure = match request.send_body(body.clone()).await {
                Ok(res) if res.status().is_success() => return,
                Ok(res) => format!("answered {}", res.status().as_u16()),
                Err(SendRequestError::Timeout) => {
                    format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
                }
                Err(SendRequestError::Connect(e)) => format!("could not connect ({e})"),
                Err(_) => "the request failed".to_owned(),
            };
            tracing::warn!(
                task_id = self.id,
                host = self.url.host_str().unwrap_or_default(),
                attempt,
                attempts,
                "a sandbox callback was not delivered: {failure}; the callback_url must answer 2xx within {} s",
                ATTEMPT_TIMEOUT.as_secs()
            );
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> UpstreamResponse {
    UpstreamResponse {
        status,
        content_type: Some("application/json".into()),
        body: Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
    }
}

/// Vidu's own error envelope (no `source`: this stands for Vidu's answer).
fn vidu_error(
    status: StatusCode,
    reason: &str,
    message: &str,
    request_id: &str,
) -> UpstreamResponse {
    json_response(
        status,
        &json!({"code": status.as_u16(), "reason": reason, "message": message, "metadata": {"trace_id": request_id}}),
    )
}

fn task_not_found(request_id: &str) -> UpstreamResponse {
    vidu_error(
        StatusCode::NOT_FOUND,
        "TaskNotFound",
        "task not found",
        request_id,
    )
}

#[cfg(test)]
mod tests {
    use super::super::exchange::Endpoint;
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::{BUILTIN_CONFIG, Origin, load_from_str};

    fn sandbox() -> Sandbox {
        sandbox_on_clock().0
    }

    /// The sandbox of the built-in configuration (done after 10 s, off-peak expiry after 30 s) and its clock.
    fn sandbox_on_clock() -> (Sandbox, Arc<ManualClock>) {
        let config = load_from_str(BUILTIN_CONFIG, Origin::Builtin, Default::default()).unwrap();
        let clock = ManualClock::new(Timestamp::from_second(1_800_000_000).unwrap());
        let s = Sandbox::new(Arc::new(LiveConfig::new(config)), clock.clone());
        (s, clock)
    }

    fn call(s: &Sandbox, method: Method, path: &str, body: &str) -> (u16, serde_json::Value) {
        let endpoint = match path {
            "/ent/v2/img2video" => Endpoint::Img2Video,
            p if p.ends_with("/cancel") => Endpoint::TaskCancel,
            _ => Endpoint::TaskCreations,
        };
        let res = s.handle(&UpstreamRequest {
            endpoint,
            method,
            path: path.into(),
            body: Bytes::from(body.to_owned()),
            request_id: "t".into(),
        });
        (
            res.status.as_u16(),
            serde_json::from_slice(&res.body).unwrap(),
        )
    }

    fn create(s: &Sandbox, body: serde_json::Value) -> (u16, serde_json::Value) {
        call(s, Method::POST, "/ent/v2/img2video", &body.to_string())
    }

    /// Creates `body` (asserting 200) and returns the task id.
    fn created(s: &Sandbox, body: serde_json::Value) -> String {
        let (status, task) = create(s, body);
        assert_eq!(status, 200, "{task}");
        task["task_id"].as_str().unwrap().to_owned()
    }

    fn query(s: &Sandbox, id: &str) -> serde_json::Value {
        let (status, answer) = call(s, Method::GET, &format!("/ent/v2/tasks/{id}/creations"), "");
        assert_eq!(status, 200, "{answer}");
        answer
    }

    fn cancel(s: &Sandbox, id: &str) -> (u16, serde_json::Value) {
        call(s, Method::POST, &format!("/ent/v2/tasks/{id}/cancel"), "")
    }

    /// `state`, `err_code` and `credits` of an answer.
    fn outcome(answer: &serde_json::Value) -> (&str, &str, u64) {
        (
            answer["state"].as_str().unwrap(),
            answer["err_code"].as_str().unwrap(),
            answer["credits"].as_u64().unwrap(),
        )
    }

    fn secs(n: i64) -> jiff::SignedDuration {
        jiff::SignedDuration::from_secs(n)
    }

    /// What Vidu itself refuses, the simulator refuses in Vidu's envelope (without the gateway's `source`).
    #[test]
    fn the_simulator_refuses_what_vidu_would_refuse() {
        let s = sandbox();
        let img = json!(["https://e.com/a.png"]);
        for (body, reason) in [
            (json!({"images": img}), "FieldLacking"),
            (json!({"model": "viduq2"}), "FieldLacking"),
            (json!({"model": "viduq9", "images": img}), "FieldInvalid"),
            (
                json!({"model": "viduq2", "images": [], }),
                "FieldItemCountOutOfRange",
            ),
            (
                json!({"model": "viduq2", "images": img, "duration": 12}),
                "FieldInvalid",
            ),
            (
                json!({"model": "viduq1", "images": img, "resolution": "720p"}),
                "FieldInvalid",
            ),
            (
                json!({"model": "viduq3-pro", "images": img, "off_peak": true}),
                "FieldInvalid",
            ),
        ] {
            let (status, answer) = create(&s, body.clone());
            assert_eq!(status, 400, "{body}");
            assert_eq!(answer["reason"], reason, "{body}");
            assert!(answer["metadata"].get("source").is_none());
        }
        assert_eq!(create(&s, json!({"model": "viduq2", "images": img})).0, 200);
    }

    /// The simulator charges what the gateway estimates: one pricing for both.
    #[test]
    fn the_simulator_charges_the_gateways_estimate() {
        let s = sandbox();
        let config = s.config.current();
        for extra in [
            json!({}),
            json!({"model": "viduq3-pro", "duration": 16, "resolution": "1080p"}),
            json!({"off_peak": true, "is_rec": true}),
            json!({"model": "viduq1"}),
        ] {
            let mut body = json!({"model": "viduq2", "images": ["https://e.com/a.png"]});
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            let bytes = body.to_string();
            let validated = crate::validate::validate(bytes.as_bytes(), &config.settings).unwrap();
            let (status, answer) = create(&s, body.clone());
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                answer["credits"],
                validated.params.estimate(&config.settings),
                "{body}"
            );
        }
    }

    /// `[fail]` in the prompt: created and priced as usual, then `failed` when it would have succeeded, nothing
    /// charged, no creations.
    #[test]
    fn a_fail_prompt_fails_the_task_when_it_would_have_succeeded() {
        let (s, clock) = sandbox_on_clock();
        let body =
            json!({"model": "viduq2", "images": ["https://e.com/a.png"], "prompt": "a cat [fail]"});
        let (status, task) = create(&s, body.clone());
        assert_eq!((status, task["state"].clone()), (200, json!("created")));
        assert_eq!(task["credits"], 55, "the estimate, as for any task");
        let id = task["task_id"].as_str().unwrap();
        assert_eq!(outcome(&query(&s, id)), ("created", "", 55));
        clock.advance(secs(5));
        assert_eq!(outcome(&query(&s, id)), ("processing", "", 55));
        clock.advance(secs(5));
        let answer = query(&s, id);
        assert_eq!(outcome(&answer), ("failed", "CreationFailed", 0));
        assert_eq!(answer["creations"], json!([]));
        assert_eq!(cancel(&s, id).0, 400, "a failed task cannot be cancelled");

        let ok = created(
            &s,
            json!({"model": "viduq2", "images": ["https://e.com/a.png"], "prompt": "a cat"}),
        );
        clock.advance(secs(10));
        assert_eq!(outcome(&query(&s, &ok)), ("success", "", 55));
    }

    /// No off-peak capacity: an off-peak task queues, then is cancelled `sandbox_offpeak_expire_secs` (30 s here)
    /// after its creation, nothing charged.
    #[test]
    fn an_off_peak_task_queues_then_expires() {
        let (s, clock) = sandbox_on_clock();
        let body = json!({"model": "viduq2", "images": ["https://e.com/a.png"], "off_peak": true});
        let (status, task) = create(&s, body);
        assert_eq!((status, task["state"].clone()), (200, json!("created")));
        let id = task["task_id"].as_str().unwrap();
        assert_eq!(outcome(&query(&s, id)), ("queueing", "", 28));
        clock.advance(secs(29));
        assert_eq!(
            outcome(&query(&s, id)),
            ("queueing", "", 28),
            "not run, even past sandbox_complete_after_secs"
        );
        clock.advance(secs(1));
        let answer = query(&s, id);
        assert_eq!(outcome(&answer), ("cancelled", "OffPeakExpired", 0));
        assert_eq!(answer["creations"], json!([]));
        let (status, refusal) = cancel(&s, id);
        assert_eq!(status, 400, "an expired task cannot be cancelled");
        assert_eq!(
            refusal["message"],
            "task is already cancelled and cannot be cancelled"
        );
    }

    /// A cancel through the API: `cancelled` by the user from then on, nothing charged; no second cancel.
    #[test]
    fn a_cancelled_task_answers_cancelled_by_the_user() {
        let (s, clock) = sandbox_on_clock();
        for (body, at) in [
            (
                json!({"model": "viduq2", "images": ["https://e.com/a.png"]}),
                1,
            ),
            (
                json!({"model": "viduq2", "images": ["https://e.com/a.png"]}),
                5,
            ),
            (
                json!({"model": "viduq2", "images": ["https://e.com/a.png"], "off_peak": true}),
                20,
            ),
        ] {
            let id = created(&s, body.clone());
            clock.advance(secs(at));
            assert_eq!(cancel(&s, &id), (200, json!({})), "{body} at {at} s");
            let answer = query(&s, &id);
            assert_eq!(
                outcome(&answer),
                ("cancelled", "UserCancelled", 0),
                "{body}"
            );
            assert_eq!(answer["creations"], json!([]));
            clock.advance(secs(60));
            assert_eq!(
                outcome(&query(&s, &id)),
                ("cancelled", "UserCancelled", 0),
                "it stays cancelled: {body}"
            );
            assert_eq!(cancel(&s, &id).0, 400, "{body}");
        }
        let done = created(
            &s,
            json!({"model": "viduq2", "images": ["https://e.com/a.png"]}),
        );
        clock.advance(secs(10));
        let (status, refusal) = cancel(&s, &done);
        assert_eq!(status, 400);
        assert_eq!(
            refusal["message"],
            "task is already success and cannot be cancelled"
        );
        assert_eq!(outcome(&query(&s, &done)), ("success", "", 55));
    }

    /// The callbacks announce the states the query reports, from the times it reports them.
    #[test]
    fn the_callback_schedule_follows_the_states_the_query_reports() {
        let created_at = Timestamp::from_second(1_800_000_000).unwrap();
        for (complete_after_secs, fail, off_peak, expected) in [
            (
                10,
                false,
                false,
                vec![(2000, State::Processing), (10_000, State::Success)],
            ),
            (
                1,
                true,
                false,
                vec![(200, State::Processing), (1000, State::Failed)],
            ),
            (0, false, false, vec![(0, State::Success)]),
            (10, false, true, vec![(30_000, State::OffPeakExpired)]),
        ] {
            let task = Task {
                created_at,
                cancelled: false,
                credits: 55,
                off_peak,
                fail,
                payload: String::new(),
                complete_after_secs,
                offpeak_expire_secs: 30,
                callback: None,
            };
            assert_eq!(task.transitions(), expected);
            let mut before = if off_peak {
                State::Queueing
            } else {
                State::Created
            };
            for (after_ms, state) in expected {
                let at = created_at + jiff::SignedDuration::from_millis(after_ms as i64);
                assert_eq!(task.state_at(at), state, "{after_ms} ms");
                if after_ms > 0 {
                    let just_before = at - jiff::SignedDuration::from_millis(1);
                    assert_eq!(task.state_at(just_before), before, "{after_ms} ms");
                }
                before = state;
            }
        }
    }

    /// Without an actix runtime nothing is scheduled, and the task lives on as without a `callback_url`.
    #[test]
    fn without_a_runtime_a_callback_url_schedules_nothing() {
        let (s, clock) = sandbox_on_clock();
        let id = created(
            &s,
            json!({"model": "viduq2", "images": ["https://e.com/a.png"],
                   "callback_url": "http://127.0.0.1:8080/gateway/v1/callbacks/vidu"}),
        );
        // Another URL (a caller's) is never called: nothing is kept for it.
        let foreign = created(
            &s,
            json!({"model": "viduq2", "images": ["https://e.com/a.png"], "callback_url": "http://127.0.0.1:9/cb"}),
        );
        {
            let tasks = s.tasks.lock().unwrap();
            let callback = tasks[&id.parse::<u64>().unwrap()]
                .callback
                .as_ref()
                .unwrap();
            assert_eq!(
                callback.url.as_str(),
                "http://127.0.0.1:8080/gateway/v1/callbacks/vidu"
            );
            assert!(callback.cancel.is_none());
            assert!(tasks[&foreign.parse::<u64>().unwrap()].callback.is_none());
        }
        assert_eq!(cancel(&s, &id), (200, json!({})));
        clock.advance(secs(10));
        assert_eq!(outcome(&query(&s, &id)), ("cancelled", "UserCancelled", 0));
    }
}
