//! `POST /ent/v2/img2video` and `POST /gateway/v1/img2video/quote`: thin handlers over `crate::flow` (and, for a
//! create's `Idempotency-Key`, `crate::idempotency`; the quote ignores the header).

use std::sync::Arc;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::auth::Identity;
use crate::config::LoadedConfig;
use crate::flow::{self, Body, Context};
use crate::forward::stream::{self, Outgoing};
use crate::forward::upstream::Upstream;
use crate::http::app_state::{AppState, request_id};
use crate::http::error::GatewayError;
use crate::http::openapi::{
    Error400, Error401, Error403, Error408, Error409, Error413, Error415, Error422, Error429,
    Error502, Error503, Error504, GATEWAY, Img2VideoBody, VIDU, ViduAnswer,
};
use crate::http::responses;
use crate::idempotency::{self, Held, Keeper};
use crate::read;
use crate::validate::scan::Scanned;

/// What both handlers start from: the configuration in force for the whole request (read once), the caller,
/// the body's declared length (steps 1–2 of the flow), and the request id.
struct Begun {
    config: Arc<LoadedConfig>,
    identity: Identity,
    declared: Option<usize>,
    request_id: String,
}

impl Begun {
    async fn new(req: &HttpRequest, state: &AppState) -> Result<Self, GatewayError> {
        let config = state.config.current();
        let declared = read::check_declared_length(req, config.settings.server.max_body_bytes)?;
        let identity = state.authenticate(req).await?;
        read::require_json_content_type(req)?;
        Ok(Self {
            config,
            identity,
            declared,
            request_id: request_id(req),
        })
    }

    /// Reads the whole body (the read of step 3).
    async fn read(self, payload: web::Payload) -> Result<Started, GatewayError> {
        let limit = self.config.settings.server.max_body_bytes;
        let bytes = read::read(payload, self.declared, limit).await?;
        Ok(Started { begun: self, bytes })
    }

    fn context<'a>(&'a self, state: &'a AppState) -> Context<'a> {
        Context {
            settings: &self.config.settings,
            store: &state.store,
            metrics: &state.metrics,
            now: state.clock.now(),
            request_id: &self.request_id,
        }
    }
}

/// A request whose body was read whole.
struct Started {
    begun: Begun,
    bytes: Bytes,
}

/// A create's body once read: whole, or read while its `images` value went to Vidu (`forward::stream`).
enum Incoming {
    Whole(Bytes),
    Streamed {
        scanned: Scanned,
        hash: Option<[u8; 32]>,
        outgoing: Outgoing,
    },
}

impl Incoming {
    /// Reads the body: a large one (and a real Vidu behind) streams, others are read whole.
    async fn read(
        begun: &Begun,
        payload: web::Payload,
        state: &AppState,
        upstream: &web::Data<Upstream>,
        hash: bool,
    ) -> Result<Self, GatewayError> {
        let settings = &begun.config.settings;
        let limit = settings.server.max_body_bytes;
        let declared = match begun.declared {
            Some(len) if len >= stream::STREAM_FROM && upstream.streams() => len,
            declared => {
                return read::read(payload, declared, limit)
                    .await
                    .map(Incoming::Whole);
            }
        };
        let start = |len: u64| {
            let (upstream, metrics) = (upstream.clone(), state.metrics.clone());
            let request_id = begun.request_id.clone();
            Outgoing::start(len, move |body, answer| {
                actix_web::rt::spawn(async move {
                    let result = upstream.send_streamed(body, &request_id, &metrics).await;
                    let _ = answer.send(result);
                });
            })
        };
        let (growth, holds) = flow::streaming(settings);
        let received =
            stream::receive(payload, declared, limit, growth, holds, hash, start).await?;
        Ok(match received.outgoing {
            Some(outgoing) => Incoming::Streamed {
                scanned: received.scanned,
                hash: received.hash,
                outgoing,
            },
            // Nothing was sent (no `images` array, or a head that holds): the skeleton is the whole body.
            None => Incoming::Whole(Bytes::from(received.scanned.skeleton)),
        })
    }

    fn hash(&self) -> [u8; 32] {
        match self {
            Incoming::Whole(bytes) => Sha256::digest(bytes).into(),
            Incoming::Streamed { hash, .. } => hash.unwrap_or_default(),
        }
    }

    fn body(&self) -> Body<'_> {
        match self {
            Incoming::Whole(bytes) => Body::Whole(bytes),
            Incoming::Streamed {
                scanned, outgoing, ..
            } => Body::Streamed {
                scanned,
                room: usize::try_from(outgoing.room()).unwrap_or(usize::MAX),
            },
        }
    }
}

fn prefer_never(req: &HttpRequest) -> bool {
    flow::prefers_never_off_peak(req.headers().get("prefer").and_then(|v| v.to_str().ok()))
}

/// Create an image-to-video task.
///
/// The body is validated, policy applied (forced off-peak, allowed models and settings), the credits estimated
/// and reserved against every budget, rate limit and slot that applies (all or nothing), then forwarded to Vidu;
/// Vidu's answer comes back unchanged (its errors too), with the gateway's headers. The reservation settles to
/// Vidu's `credits` and follows the task to its end (failed and cancelled tasks are refunded).
///
/// With an `Idempotency-Key`, a retry of the same body gets the first answer replayed (`Idempotent-Replayed:
/// true`) and creates nothing; a create refused before forwarding stores nothing, so it can be fixed and retried
/// with the same key.
#[utoipa::path(post, path = "/ent/v2/img2video", tag = VIDU,
    request_body(content = Img2VideoBody, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            description = "1–255 visible ASCII characters, scoped to you, kept `idempotency.ttl_secs`: the same \
                key and body again replay the first answer (nothing forwarded, nothing charged); another body is \
                422 `IdempotencyKeyReused`; while the first runs, 409 `IdempotencyKeyInFlight`."),
        ("Prefer" = Option<String>, Header, nullable = false,
            description = "`off-peak=never`: do not let policy move this request off-peak (refused 429 \
                `OffPeakRequired` when only an off-peak run would fit)."),
    ),
    responses(
        (status = 200, description = "Vidu created the task: its answer (`task_id`, `state`, `credits`, …) \
            unchanged. Vidu's own errors pass through the same way, with their status.", body = ViduAnswer,
            headers(
                ("X-Credits-Estimated" = u64, description = "The gateway's estimate, reserved until Vidu's \
                    `credits` settle it (also on a refused create)."),
                ("X-Credits-Remaining" = u64, description = "What is left of the tightest budget that applies \
                    after this reservation."),
                ("RateLimit-Policy" = String, description = "The tightest rate limit that applies: \
                    `\"<scope>\";q=<per minute>;w=60` (IETF draft-ietf-httpapi-ratelimit-headers)."),
                ("RateLimit" = String, description = "Its state after this request: \
                    `\"<scope>\";r=<remaining>;t=<seconds to reset>`."),
                ("X-Off-Peak-Applied" = String, description = "Set when policy turned `off_peak` on, with why."),
                ("Idempotent-Replayed" = bool, description = "`true` on an answer replayed for an \
                    `Idempotency-Key`: nothing was forwarded or charged."),
            )),
        (status = 400, response = Error400), (status = 401, response = Error401), (status = 403, response = Error403),
        (status = 408, response = Error408), (status = 409, response = Error409), (status = 413, response = Error413),
        (status = 415, response = Error415), (status = 422, response = Error422), (status = 429, response = Error429),
        (status = 502, response = Error502), (status = 503, response = Error503), (status = 504, response = Error504),
    ))]
pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let begun = Begun::new(&req, &state).await?;
    let key = idempotency::key_of(
        req.headers()
            .get_all(idempotency::HEADER)
            .map(HeaderValue::as_bytes),
    )
    .map_err(GatewayError::BadRequest)?;
    let incoming = Incoming::read(&begun, payload, &state, &upstream, key.is_some()).await?;
    let ctx = begun.context(&state);
    // From here on, returning without forwarding drops a streamed create's request to Vidu unfinished.
    let held = match idempotency::begin(
        ctx.store,
        ctx.metrics,
        ctx.settings,
        &begun.identity.user,
        key,
        || incoming.hash(),
    )
    .await
    {
        Ok(held) => held,
        Err(stopped) => return Ok(responses::stopped(stopped)),
    };
    let mut admitted =
        match flow::admit(&ctx, &begun.identity, incoming.body(), prefer_never(&req)).await {
            Ok(a) => a,
            Err(refused) => {
                if let Some(held) = held {
                    held.abandon().await;
                }
                return Ok(responses::refused_response(refused));
            }
        };
    let Begun {
        config,
        identity,
        request_id,
        ..
    } = begun;
    // The caller's body goes before the upstream call (a rewritten one is a new buffer); a streamed create's
    // request to Vidu waits for the rest of its body.
    admitted.outgoing = match incoming {
        Incoming::Whole(_) => None,
        Incoming::Streamed { outgoing, .. } => Some(outgoing),
    };
    let headers = responses::admission_headers(&admitted.decided);
    let timeout_ms = config.settings.upstream.request_timeout_ms;
    let keeper = held.and_then(|held| keeper(held, &headers, &request_id, timeout_ms));
    let answer = flow::forward_admitted(
        upstream.into_inner(),
        state.store.clone(),
        state.metrics.clone(),
        &identity,
        admitted,
        request_id,
        keeper,
    )
    .await;
    let mut res = match answer {
        Ok(a) => responses::upstream_response(a),
        Err(e) => actix_web::ResponseError::error_response(&super::upstream_error(&e, timeout_ms)),
    };
    for (name, value) in headers {
        res.headers_mut().insert(name, value);
    }
    Ok(res)
}

/// The claim of a create about to be forwarded, with the way to render its answer exactly as the caller gets it
/// (the same status, headers and body as the response `create` builds from it) for a retry to replay.
fn keeper(
    held: Held,
    headers: &[(HeaderName, HeaderValue)],
    request_id: &str,
    timeout_ms: u64,
) -> Option<Keeper> {
    let (headers, request_id) = (headers.to_vec(), request_id.to_owned());
    held.keeper(Box::new(move |result| {
        let answer = result
            .as_ref()
            .map_err(|e| super::upstream_error(e, timeout_ms));
        responses::kept_answer(answer, &headers, &request_id)
    }))
}

/// Dry run of a create: what would happen now.
///
/// Validation, policy and admission as a create would see them — the effective parameters (defaults and policy
/// applied), the credit estimate (now, immediate, off-peak), and whether it would be admitted, else the reason a
/// create would get and when it would fit. Nothing is reserved or forwarded; `Idempotency-Key` is ignored. A body
/// validation refuses is an answer too (`valid: false`); only a body that is not a JSON object is an error.
#[utoipa::path(post, path = "/gateway/v1/img2video/quote", tag = GATEWAY,
    request_body(content = Img2VideoBody, content_type = "application/json"),
    params(
        ("Prefer" = Option<String>, Header, nullable = false,
            description = "`off-peak=never`, as on a create."),
    ),
    responses(
        (status = 200, description = "The verdict.", body = crate::flow::Quote),
        (status = 400, response = Error400), (status = 401, response = Error401), (status = 408, response = Error408),
        (status = 413, response = Error413), (status = 415, response = Error415),
    ))]
pub async fn quote(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let started = Begun::new(&req, &state).await?.read(payload).await?;
    let verdict = flow::quote(
        &started.begun.context(&state),
        &started.begun.identity,
        &started.bytes,
        prefer_never(&req),
    )
    .await
    .map_err(GatewayError::Validation)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(verdict))
}
