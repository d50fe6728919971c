//! The API description served at `GET /gateway/v1/openapi.json` (OpenAPI 3.1): each route's `#[utoipa::path]`
//! beside its handler, collected where `routes::configure` registers the route (what is served is what is
//! described), completed once at start with what every route shares — the auth schemes, the error envelope with
//! its reasons and headers (read from `GatewayError::every_kind`), `X-Request-Id` — and serialised once.
//!
//! Also here: the schemas the gateway has no serialised type for — the img2video body (from the validator's field
//! table, `validate::fields::FIELDS`) and Vidu's own answers, passed through unchanged — and the error-response
//! names the annotations use (`response = Error429`).

use std::borrow::Cow;
use std::collections::BTreeSet;

use actix_web::ResponseError;
use bytes::Bytes;
use serde_json::Value;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::info::{InfoBuilder, LicenseBuilder};
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::server::ServerBuilder;
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{Components, ContentBuilder, OpenApi, Ref, RefOr, Required};
use utoipa::{PartialSchema, ToSchema};

use crate::config::Settings;
use crate::http::error::{Envelope, GatewayError};
use crate::validate::fields::{
    AUDIO_TYPES, Absent, DEFAULT_MOVEMENT_AMPLITUDE, DEFAULT_WM_POSITION, FIELDS, Field, Json,
    MOVEMENT_AMPLITUDES, PAYLOAD_MAX_CHARS, SEED_MAX, WM_POSITIONS,
};
use crate::validate::{FieldReason, validate};

/// The document as served: built once at start, the same bytes for every request.
pub struct ApiDocument {
    json: Bytes,
}

impl ApiDocument {
    /// `routes`: what the route table's annotations say (`routes::described`), completed here.
    pub fn new(routes: OpenApi) -> Self {
        Self {
            json: Bytes::from(serde_json::to_vec(&complete(routes)).unwrap_or_default()),
        }
    }

    /// The JSON document (a shared buffer: no copy).
    pub fn json(&self) -> Bytes {
        self.json.clone()
    }
}

/// The tags the annotations use, in the order a viewer lists them.
pub const TAGS: &[(&str, &str)] = &[
    (
        VIDU,
        "Vidu's own paths, bodies and answers: a Vidu client works after changing only its base URL and key \
         (the JWT). Vidu's answers, its errors included, pass through unchanged.",
    ),
    (
        GATEWAY,
        "The gateway's own endpoints: the quote, usage, tasks with their lifecycle, unsettled reservations, the \
         configuration in force, Vidu's callbacks, this description.",
    ),
    (OPERATIONS, "For load balancers and Prometheus: no token."),
];
pub const VIDU: &str = "vidu";
pub const GATEWAY: &str = "gateway";
pub const OPERATIONS: &str = "operations";

/// The security schemes: one JWT, sent either way.
pub const BEARER: &str = "bearer";
pub const TOKEN: &str = "token";

/// The route table's description, completed: info, tags, the auth schemes (required unless an operation says
/// `security(())`), the error answers, `X-Request-Id` on every request and answer, and every operation's 500.
pub fn complete(mut api: OpenApi) -> OpenApi {
    api.info = InfoBuilder::new()
        .title("vidu-gateway")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(DESCRIPTION))
        .license(Some(
            LicenseBuilder::new()
                .name("Apache-2.0")
                .identifier(Some("Apache-2.0"))
                .build(),
        ))
        .build();
    api.tags = Some(
        TAGS.iter()
            .map(|(name, about)| {
                TagBuilder::new()
                    .name(*name)
                    .description(Some(*about))
                    .build()
            })
            .collect(),
    );
    // Relative: the gateway this document was fetched from, whatever its address behind proxies.
    api.servers = Some(vec![
        ServerBuilder::new()
            .url("/")
            .description(Some("this gateway (where this document was fetched from)"))
            .build(),
    ]);
    api.security = Some(vec![
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
        SecurityRequirement::new(TOKEN, Vec::<String>::new()),
    ]);
    let components = api.components.get_or_insert_with(Components::new);
    components.security_schemes.insert(
        BEARER.into(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "`Authorization: Bearer <JWT>`: a token from the company's identity provider (or minted with \
                     `vidu-gateway token`); `sub` is the user, the team and roles come from the claims \
                     `auth.*` names.",
                ))
                .build(),
        )),
    );
    components.security_schemes.insert(
        TOKEN.into(),
        RefOr::T(SecurityScheme::ApiKey(ApiKey::Header(
            ApiKeyValue::with_description(
                "Authorization",
                "`Authorization: Token <JWT>`, the scheme Vidu's clients send: the same JWT as `bearer`, \
                 accepted the same way (never a Vidu API key).",
            ),
        ))),
    );
    let mut schemas = vec![(Envelope::name().into_owned(), Envelope::schema())];
    Envelope::schemas(&mut schemas);
    components.schemas.extend(schemas);
    for (name, header) in shared_headers() {
        components.headers.insert(name.into(), RefOr::T(header));
    }
    components.parameters.insert(
        REQUEST_ID.into(),
        RefOr::T(
            ParameterBuilder::new()
                .name(REQUEST_ID)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Your request id (1–128 visible ASCII characters), kept in the answer, the logs and the \
                     call to Vidu; a new one is made when absent or not sane.",
                ))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String).max_length(Some(128))))
                .build(),
        ),
    );
    for (name, status) in ERROR_RESPONSES {
        components
            .responses
            .insert((*name).into(), RefOr::T(error_response(*status)));
    }
    for item in api.paths.paths.values_mut() {
        for op in operations(item) {
            op.parameters
                .get_or_insert_with(Vec::new)
                .push(RefOr::Ref(Ref::new(format!(
                    "#/components/parameters/{REQUEST_ID}"
                ))));
            op.responses
                .responses
                .entry("500".into())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Error500")));
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(r) = response {
                    r.headers
                        .entry(REQUEST_ID.into())
                        .or_insert_with(|| header_ref(REQUEST_ID));
                }
            }
        }
    }
    api
}

const DESCRIPTION: &str = "The one company endpoint in front of Vidu's image-to-video API: Vidu's own routes \
(same paths, bodies and answers; a client changes only its base URL and its key, a JWT) with budgets, limits, \
policy and a ledger in front, and the gateway's own routes under `/gateway/v1`.\n\n\
**Errors** the gateway makes itself use Vidu's envelope with `metadata.source = \"gateway\"` (`ErrorEnvelope`); \
`reason` is stable — match on it. Vidu's own answers, its errors included, pass through with their status, \
`Content-Type` and body. An unknown path is 404 `NotFound`, a known path with another method 405 \
`MethodNotAllowed`.\n\n\
**Headers**: `X-Request-Id` on every answer (yours when sane, else new; also `metadata.trace_id`). On a create: \
`X-Credits-Estimated`, `X-Credits-Remaining`, `RateLimit-Policy`/`RateLimit` (IETF draft), `X-Off-Peak-Applied`, \
and `Idempotent-Replayed` on a replayed `Idempotency-Key`; `Retry-After` on 409, 429 and 503.";

/// Every operation of a path item, whatever its method.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The request id header, request and answer.
const REQUEST_ID: &str = "X-Request-Id";

fn header_ref(name: &str) -> RefOr<Header> {
    RefOr::Ref(Ref::new(format!("#/components/headers/{name}")))
}

/// The headers every route shares (`components.headers`): the request id, and those of error answers.
fn shared_headers() -> [(&'static str, Header); 5] {
    let text = |about: &str| {
        HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some(about))
            .build()
    };
    [
        (
            REQUEST_ID,
            text(
                "The request id: yours when sane (1–128 visible ASCII characters), else a new one. Also \
                 `metadata.trace_id` of an error, sent to Vidu, and on the request's log line.",
            ),
        ),
        (
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                ))
                .description(Some("Seconds after which the same request can succeed."))
                .build(),
        ),
        (
            "WWW-Authenticate",
            text(
                "`Bearer`; with `error=\"invalid_token\", error_description=\"…\"` when a token was sent but \
                 does not verify (RFC 6750).",
            ),
        ),
        (
            "RateLimit-Policy",
            text(
                "On a 429 `TooManyRequests`: the rate limit that refused, `\"<scope>\";q=<per minute>;w=60` \
                 (IETF draft-ietf-httpapi-ratelimit-headers).",
            ),
        ),
        (
            "RateLimit",
            text(
                "On a 429 `TooManyRequests`: `\"<scope>\";r=0;t=<seconds until a request is allowed again>`.",
            ),
        ),
    ]
}

/// The names the annotations give error answers (`(status = 429, response = Error429)`), one per status the
/// gateway answers with its envelope; `components.responses` holds each, built from the errors of that status.
macro_rules! error_responses {
    ($($name:ident = $status:literal,)*) => {
        $(
            #[doc = concat!("The gateway's own ", stringify!($status), " answers (`components.responses.",
                stringify!($name), "`).")]
            pub struct $name;

            /// A reference to `components.responses`, which [`complete`] fills once (annotations only name it: the
            /// route table is collected on every worker's start).
            impl<'r> utoipa::ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), RefOr::Ref(Ref::from_response_name(stringify!($name))))
                }
            }
        )*

        /// Every error answer's name and status.
        pub const ERROR_RESPONSES: &[(&str, u16)] = &[$((stringify!($name), $status)),*];
    };
}

error_responses! {
    Error400 = 400,
    Error401 = 401,
    Error403 = 403,
    Error404 = 404,
    Error405 = 405,
    Error408 = 408,
    Error409 = 409,
    Error413 = 413,
    Error415 = 415,
    Error422 = 422,
    Error429 = 429,
    Error500 = 500,
    Error502 = 502,
    Error503 = 503,
    Error504 = 504,
}

/// The errors of one status, as the code answers them: the reasons, the headers they carry, the first as the
/// example.
fn error_response(status: u16) -> Response {
    let kinds: Vec<GatewayError> = GatewayError::every_kind()
        .into_iter()
        .filter(|e| e.status_code().as_u16() == status)
        .collect();
    let mut reasons: Vec<&str> = Vec::new();
    let mut headers = BTreeSet::new();
    for e in &kinds {
        if !reasons.contains(&e.reason()) {
            reasons.push(e.reason());
        }
        headers.extend(e.headers().into_iter().map(|(name, _)| name.to_string()));
    }
    let phrase = actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let listed: Vec<String> = reasons.iter().map(|r| format!("`{r}`")).collect();
    let mut content = ContentBuilder::new().schema(Some(Ref::from_schema_name(Envelope::name())));
    if let Some(first) = kinds.first() {
        let example: Value =
            serde_json::from_slice(&first.envelope("3f1c0d5e9a7b4c21b8e6f0a2d4c6e8f0"))
                .unwrap_or_default();
        content = content.example(Some(example));
    }
    let mut response = ResponseBuilder::new()
        .description(format!("{phrase}: `reason` is {}.", listed.join(", ")))
        .content("application/json", content.build())
        .build();
    response
        .headers
        .insert(REQUEST_ID.into(), header_ref(REQUEST_ID));
    for name in headers {
        let shown = shown_name(&name);
        response.headers.insert(shown.clone(), header_ref(&shown));
    }
    // Set by the edge on a rate limit's refusal (`http/responses.rs`), not by the error itself.
    if status == 429 {
        for name in ["RateLimit-Policy", "RateLimit"] {
            response.headers.insert(name.into(), header_ref(name));
        }
    }
    response
}

/// A header's name as the description shows it (`retry-after` → `Retry-After`).
fn shown_name(lower: &str) -> String {
    shared_headers()
        .into_iter()
        .map(|(name, _)| name)
        .find(|name| name.eq_ignore_ascii_case(lower))
        .map_or_else(|| lower.to_owned(), str::to_owned)
}

/// Vidu's answer, passed through unchanged (status, `Content-Type`, body): the gateway has no type of its own
/// for it. The operation's description says what Vidu sends.
pub struct ViduAnswer;

impl PartialSchema for ViduAnswer {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Vidu's answer, passed through unchanged (see Vidu's API reference). Any occurrence of the \
                 enterprise key is replaced with `[REDACTED]`.",
            ))
            .into()
    }
}

impl ToSchema for ViduAnswer {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ViduAnswer")
    }
}

/// The img2video body (`POST /ent/v2/img2video`, the quote): Vidu's fields, from the validator's field table —
/// its JSON types, what applies when a field is absent, the fields a body must have (those `{}` is refused for)
/// and the validator's fixed ranges and values. Model-dependent rules (duration, resolution, prompt length) are
/// the catalog's, in `GET /gateway/v1/config`.
pub struct Img2VideoBody;

impl PartialSchema for Img2VideoBody {
    fn schema() -> RefOr<Schema> {
        let mut body = ObjectBuilder::new().schema_type(Type::Object).description(Some(
            "Vidu's img2video request. Unknown fields are refused (400 `FieldUnwanted`) or removed before \
             forwarding, by `validation.unknown_fields`; every problem is reported at once in \
             `metadata.fields`.",
        ));
        for field in FIELDS {
            body = body.property(field.name, field_schema(field));
        }
        for name in required_fields() {
            body = body.required(name);
        }
        RefOr::T(body.into())
    }
}

impl ToSchema for Img2VideoBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Img2VideoRequest")
    }
}

/// The fields a body must have: those the validator reports `Missing` in `{}`.
fn required_fields() -> Vec<String> {
    match validate(b"{}", &Settings::default()) {
        Ok(_) => Vec::new(),
        Err(r) => r
            .fields
            .into_iter()
            .filter(|f| f.reason == FieldReason::Missing)
            .map(|f| f.field)
            .collect(),
    }
}

/// What each img2video field means, for people; its type and limits come from the field table.
pub const FIELD_DOCS: &[(&str, &str)] = &[
    (
        "model",
        "A model of this gateway's catalog (`GET /gateway/v1/config`, `models`), e.g. `viduq2`.",
    ),
    (
        "images",
        "Exactly one image: an http(s) URL (Vidu fetches it) or `data:image/<png|jpeg|jpg|webp>;base64,…`; aspect \
         ratio within 1:4..4:1.",
    ),
    (
        "prompt",
        "What should happen; at most the model's `prompt_max_chars` characters.",
    ),
    (
        "duration",
        "Seconds of video, within the model's `durations` (its default when absent).",
    ),
    ("seed", "0 or absent: random."),
    (
        "resolution",
        "One the model offers (its `default_resolution` when absent), e.g. `720p`.",
    ),
    (
        "movement_amplitude",
        "How much moves (ignored by q2 models).",
    ),
    ("payload", "Anything; echoed back by Vidu unprocessed."),
    (
        "off_peak",
        "Run off-peak: cheaper, done within 48 h or cancelled and refunded. Policy may turn it on \
         (`X-Off-Peak-Applied`).",
    ),
    ("watermark", "Add a watermark."),
    (
        "wm_position",
        "Watermark position: 1 top-left, 2 top-right, 3 bottom-right, 4 bottom-left.",
    ),
    (
        "wm_url",
        "Watermark image URL (absolute http(s)); empty: Vidu's.",
    ),
    (
        "meta_data",
        "A string holding a JSON object (keys like `Label`, `ContentProducer`, `ProduceID`).",
    ),
    (
        "callback_url",
        "Where task state changes are POSTed, signed (absolute http(s)). With relaying on, the gateway relays to \
         it, signed with the team's relay secret, and only to `callbacks.relay_hosts`.",
    ),
    (
        "audio",
        "Generate audio (the model's `audio_default` when absent).",
    ),
    (
        "voice_id",
        "Voice for the audio; Vidu recommends one when absent.",
    ),
    ("is_rec", "Use a recommended prompt (+10 credits)."),
    ("bgm", "Add background music (older models)."),
    ("audio_type", "Which audio to generate."),
];

/// One field's schema: its JSON type, description, fixed limits and the default that applies when absent.
fn field_schema(field: &Field) -> Schema {
    let about = FIELD_DOCS
        .iter()
        .find(|(name, _)| *name == field.name)
        .map(|(_, about)| *about);
    let default = match field.absent {
        Absent::ViduDefault => vidu_default(field.name),
        Absent::Unset | Absent::CatalogDefault => None,
    };
    if field.json == Json::ImageArray {
        return ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::String))
            .min_items(Some(1))
            .max_items(Some(1))
            .description(about)
            .into();
    }
    let mut schema = ObjectBuilder::new()
        .schema_type(match field.json {
            Json::Integer => Type::Integer,
            Json::Boolean => Type::Boolean,
            Json::String | Json::JsonObjectString | Json::ImageArray => Type::String,
        })
        .description(about)
        .default(default);
    if field.json == Json::Integer {
        schema = schema.format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)));
    }
    if field.json == Json::JsonObjectString {
        schema = schema.content_media_type("application/json");
    }
    match field.name {
        "seed" => schema.minimum(Some(0)).maximum(Some(SEED_MAX)),
        "wm_position" => schema
            .minimum(Some(*WM_POSITIONS.start()))
            .maximum(Some(*WM_POSITIONS.end())),
        "payload" => schema.max_length(Some(PAYLOAD_MAX_CHARS)),
        "movement_amplitude" => schema.enum_values(Some(MOVEMENT_AMPLITUDES.iter().copied())),
        "audio_type" => schema.enum_values(Some(AUDIO_TYPES.iter().copied())),
        "wm_url" | "callback_url" => schema.format(Some(SchemaFormat::Custom("uri".into()))),
        _ => schema,
    }
    .into()
}

/// Vidu's documented default of a field the table marks `ViduDefault`.
fn vidu_default(name: &str) -> Option<Value> {
    Some(match name {
        "seed" => Value::from(0),
        "movement_amplitude" => Value::from(DEFAULT_MOVEMENT_AMPLITUDE),
        "wm_position" => Value::from(DEFAULT_WM_POSITION),
        "off_peak" | "watermark" | "is_rec" => Value::from(false),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::http::request_context::X_REQUEST_ID;
    use crate::http::responses::{
        RATELIMIT, RATELIMIT_POLICY, X_CREDITS_ESTIMATED, X_CREDITS_REMAINING, X_OFF_PEAK_APPLIED,
    };
    use crate::idempotency;

    fn document(metrics_here: bool) -> Value {
        let doc = ApiDocument::new(crate::http::routes::described(metrics_here));
        serde_json::from_slice(&doc.json()).unwrap()
    }

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_reference_resolves() {
        let doc = document(true);
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["servers"][0]["url"], "/");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 50, "{}", found.len());
        for r in found {
            let pointer = r.strip_prefix('#').unwrap();
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn every_operation_has_a_tag_a_summary_and_its_request_id() {
        let doc = document(true);
        let tags: BTreeSet<&str> = TAGS.iter().map(|(name, _)| *name).collect();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let at = format!("{method} {path}");
                let tag = op["tags"][0]
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}: no tag"));
                assert!(tags.contains(tag), "{at}: unknown tag {tag}");
                assert!(
                    op["summary"].is_string(),
                    "{at}: no summary (a /// line on the handler)"
                );
                assert!(op["responses"]["500"].is_object(), "{at}");
                let ok = op["responses"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .find(|(status, _)| status.starts_with('2'))
                    .unwrap_or_else(|| panic!("{at}: no success answer"))
                    .1;
                assert!(ok["headers"]["X-Request-Id"].is_object(), "{at}");
            }
        }
    }

    #[test]
    fn only_probes_the_description_and_vidus_callbacks_need_no_token() {
        let doc = document(true);
        let mut open = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for op in item.as_object().unwrap().values() {
                if op["security"] == serde_json::json!([{}]) {
                    open.insert(path.as_str());
                } else {
                    assert!(op.get("security").is_none(), "{path}: {}", op["security"]);
                }
            }
        }
        assert_eq!(
            open,
            BTreeSet::from([
                "/gateway/v1/callbacks/vidu",
                "/gateway/v1/openapi.json",
                "/healthz",
                "/metrics",
                "/readyz"
            ])
        );
        assert_eq!(
            doc["security"],
            serde_json::json!([{BEARER: []}, {TOKEN: []}])
        );
    }

    #[test]
    fn metrics_is_described_where_it_is_served() {
        assert!(document(true)["paths"]["/metrics"]["get"].is_object());
        assert!(document(false)["paths"].get("/metrics").is_none());
    }

    #[test]
    fn every_img2video_field_is_described_and_the_body_needs_model_and_images() {
        let described: Vec<&str> = FIELD_DOCS.iter().map(|(name, _)| *name).collect();
        let table: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        assert_eq!(
            described, table,
            "FIELD_DOCS follows validate::fields::FIELDS"
        );
        assert_eq!(required_fields(), ["model", "images"]);
        let body = &document(true)["components"]["schemas"]["Img2VideoRequest"];
        assert_eq!(body["properties"].as_object().unwrap().len(), FIELDS.len());
        assert_eq!(body["properties"]["seed"]["maximum"], SEED_MAX);
        assert_eq!(body["properties"]["images"]["maxItems"], 1);
    }

    #[test]
    fn every_error_status_has_its_named_answer_with_reasons_and_headers() {
        let statuses: BTreeSet<u16> = GatewayError::every_kind()
            .iter()
            .map(|e| e.status_code().as_u16())
            .collect();
        let named: BTreeSet<u16> = ERROR_RESPONSES.iter().map(|(_, s)| *s).collect();
        assert_eq!(statuses, named);
        let doc = document(true);
        let responses = &doc["components"]["responses"];
        assert!(responses["Error429"]["headers"]["Retry-After"].is_object());
        assert!(responses["Error429"]["headers"]["RateLimit"].is_object());
        assert!(responses["Error429"]["headers"]["RateLimit-Policy"].is_object());
        assert!(responses["Error503"]["headers"]["Retry-After"].is_object());
        assert!(responses["Error409"]["headers"]["Retry-After"].is_object());
        assert!(responses["Error401"]["headers"]["WWW-Authenticate"].is_object());
        assert!(
            responses["Error400"]["headers"]
                .get("Retry-After")
                .is_none()
        );
        let described = responses["Error429"]["description"].as_str().unwrap();
        assert!(described.contains("`RunningTasksLimited`"), "{described}");
        let reasons =
            &doc["components"]["schemas"]["ErrorEnvelope"]["properties"]["reason"]["enum"];
        for e in GatewayError::every_kind() {
            assert!(
                reasons
                    .as_array()
                    .unwrap()
                    .contains(&Value::from(e.reason()))
            );
        }
    }

    /// Every header the code reads or writes by name is in the document.
    #[test]
    fn the_gateways_headers_are_described() {
        let doc = document(true);
        let mut names = BTreeSet::new();
        let collect = |names: &mut BTreeSet<String>, v: &Value| {
            if let Some(m) = v.as_object() {
                names.extend(m.keys().map(|k| k.to_ascii_lowercase()));
            }
        };
        collect(&mut names, &doc["components"]["headers"]);
        for r in doc["components"]["responses"].as_object().unwrap().values() {
            collect(&mut names, &r["headers"]);
        }
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for r in op["responses"].as_object().unwrap().values() {
                    collect(&mut names, &r["headers"]);
                }
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["in"] == "header" {
                        names.insert(p["name"].as_str().unwrap().to_ascii_lowercase());
                    }
                }
            }
        }
        for p in doc["components"]["parameters"]
            .as_object()
            .unwrap()
            .values()
        {
            names.insert(p["name"].as_str().unwrap().to_ascii_lowercase());
        }
        for header in [
            X_REQUEST_ID.as_str(),
            X_CREDITS_ESTIMATED.as_str(),
            X_CREDITS_REMAINING.as_str(),
            X_OFF_PEAK_APPLIED.as_str(),
            RATELIMIT_POLICY.as_str(),
            RATELIMIT.as_str(),
            idempotency::HEADER,
            idempotency::REPLAYED,
            "retry-after",
            "www-authenticate",
            "prefer",
        ] {
            assert!(
                names.contains(header),
                "{header} is not described: {names:?}"
            );
        }
    }

    /// The callback URL the gateway gives Vidu (`callbacks.public_base_url` + `CALLBACK_PATH`) is the path served.
    #[test]
    fn vidus_callbacks_arrive_where_they_are_served() {
        use crate::http::routes::lifecycle;
        use utoipa::Path as _;
        assert_eq!(
            lifecycle::__path_vidu_callback::path(),
            lifecycle::CALLBACK_PATH
        );
    }

    #[test]
    fn the_document_is_built_once_and_shared() {
        let doc = ApiDocument::new(crate::http::routes::described(true));
        assert_eq!(doc.json().as_ptr(), doc.json().as_ptr());
    }
}
