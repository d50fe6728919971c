//! The sandbox upstream: an in-process Vidu simulator with Vidu's response shapes, so teams integrate without a
//! key and without spending credits. Tasks go `created` → `processing` → `success` over
//! `upstream.sandbox_complete_after_secs` (read from the injectable clock); unfinished tasks can be cancelled;
//! unknown ids get Vidu's 404 `TaskNotFound`. It never calls a `callback_url`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::exchange::{UpstreamRequest, UpstreamResponse};
use crate::catalog::Model;
use crate::clock::SharedClock;
use crate::config::LiveConfig;

/// Tasks kept before the oldest are forgotten (the sandbox is for integration, not storage).
const MAX_TASKS: usize = 100_000;

#[derive(Debug)]
struct Task {
    created_at: Timestamp,
    cancelled: bool,
    credits: u64,
    off_peak: bool,
    payload: String,
    complete_after_secs: u64,
}

pub struct Sandbox {
    config: Arc<LiveConfig>,
    clock: SharedClock,
    tasks: Mutex<BTreeMap<u64, Task>>,
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
}

impl Sandbox {
    pub fn new(config: Arc<LiveConfig>, clock: SharedClock) -> Self {
        // Vidu's task ids are large decimal numbers; start from the clock so ids differ across restarts.
        let start = clock.now().as_millisecond().unsigned_abs() * 1000;
        Self {
            config,
            clock,
            tasks: Mutex::new(BTreeMap::new()),
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
        let response = json!({
            "task_id": id.to_string(),
            "state": "created",
            "model": model_name,
            "prompt": b.prompt.unwrap_or_default(),
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
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.insert(
            id,
            Task {
                created_at: now,
                cancelled: false,
                credits,
                off_peak,
                payload,
                complete_after_secs: settings.upstream.sandbox_complete_after_secs,
            },
        );
        while tasks.len() > MAX_TASKS {
            tasks.pop_first();
        }
        drop(tasks);
        json_response(StatusCode::OK, &response)
    }

    fn query(&self, id: &str, request_id: &str) -> UpstreamResponse {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let Some(task) = id.parse::<u64>().ok().and_then(|n| tasks.get(&n)) else {
            return task_not_found(request_id);
        };
        let state = self.state_of(task);
        let creations = if state == "success" {
            json!([{
                "id": format!("{id}0"),
                "url": format!("https://sandbox.vidu-gateway.invalid/creations/{id}.mp4"),
                "cover_url": format!("https://sandbox.vidu-gateway.invalid/creations/{id}.jpg"),
                "watermarked_url": format!("https://sandbox.vidu-gateway.invalid/creations/{id}-wm.mp4"),
            }])
        } else {
            json!([])
        };
        let response = json!({
            "id": id,
            "state": state,
            "err_code": if task.cancelled { "UserCancelled" } else { "" },
            "credits": if task.cancelled { 0 } else { task.credits },
            "payload": task.payload,
            "off_peak": task.off_peak,
            "creations": creations,
        });
        json_response(StatusCode::OK, &response)
    }

    fn cancel(&self, id: &str, request_id: &str) -> UpstreamResponse {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let Some(n) = id.parse::<u64>().ok().filter(|n| tasks.contains_key(n)) else {
            return task_not_found(request_id);
        };
        let state = tasks.get(&n).map(|t| self.state_of(t)).unwrap_or("failed");
        if matches!(state, "success" | "failed") {
            return vidu_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("task is already {state} and cannot be cancelled"),
                request_id,
            );
        }
        if let Some(t) = tasks.get_mut(&n) {
            t.cancelled = true;
        }
        json_response(StatusCode::OK, &json!({}))
    }

    fn state_of(&self, task: &Task) -> &'static str {
        if task.cancelled {
            return "failed";
        }
        let elapsed_ms = (self.clock.now() - task.created_at)
            .as_millis()
            .max(0)
            .unsigned_abs();
        let total_ms = u128::from(task.complete_after_secs) * 1000;
        if elapsed_ms >= total_ms {
            "success"
        } else if elapsed_ms * 5 < total_ms {
            "created"
        } else {
            "processing"
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
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::{BUILTIN_CONFIG, Origin, load_from_str};

    fn sandbox() -> Sandbox {
        let config = load_from_str(BUILTIN_CONFIG, Origin::Builtin, Default::default()).unwrap();
        let clock = ManualClock::new(Timestamp::from_second(1_800_000_000).unwrap());
        Sandbox::new(Arc::new(LiveConfig::new(config)), clock)
    }

    fn create(s: &Sandbox, body: serde_json::Value) -> (u16, serde_json::Value) {
        let res = s.handle(&UpstreamRequest {
            endpoint: super::super::exchange::Endpoint::Img2Video,
            method: Method::POST,
            path: "/ent/v2/img2video".into(),
            body: Bytes::from(body.to_string()),
            request_id: "t".into(),
        });
        (
            res.status.as_u16(),
            serde_json::from_slice(&res.body).unwrap(),
        )
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
}
