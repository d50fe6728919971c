//! The img2video rules through HTTP. Each field reason once: a 400 in the gateway's envelope whose
//! `metadata.fields` names the field, the fine reason and what to change, and nothing reaches the mock Vidu; every
//! field at its last valid value passes and is forwarded byte-for-byte. The boundary tables (each model's limits,
//! each type, each malformed image) are the validator's unit tests. Also what only a whole body shows: JSON escapes,
//! a real data-URI image and nulls forwarded as sent, both `validation.unknown_fields` modes, several problems at
//! once; a catalog edited in config, the credit estimate and the quote.

use actix_web::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use vidu_gateway::config::UnknownFields;

use crate::helpers::*;

const IMG: &str = "https://example.com/first-frame.png";
const CREATE: &str = "/ent/v2/img2video";
const QUOTE: &str = "/gateway/v1/img2video/quote";

/// The seed catalog (config/default.toml): model, duration range, resolutions.
const SEED_MODELS: &[(&str, i64, i64, &[&str])] = &[
    ("viduq2", 1, 10, &["540p", "720p", "1080p"]),
    ("viduq1", 5, 5, &["1080p"]),
    ("viduq3-turbo", 1, 16, &["540p", "720p", "1080p"]),
    ("viduq3-pro", 1, 16, &["540p", "720p", "1080p"]),
];

type Headers = Vec<(String, String)>;

/// One violation as the caller sees it: (field, reason, message).
type Violation = (String, String, String);

/// A gateway (the base configuration as `config` changes it) in front of its own recording mock Vidu, and a
/// user's token.
struct Gw {
    mock: MockVidu,
    app: TestApp,
    token: String,
}

/// `validation.unknown_fields = "strip"`.
fn strip_unknown_fields(config: TestConfig) -> TestConfig {
    config.settings(|s| s.validation.unknown_fields = UnknownFields::Strip)
}

impl Gw {
    async fn start() -> Self {
        Self::with_config(|c| c).await
    }

    async fn with_config(config: impl FnOnce(TestConfig) -> TestConfig) -> Self {
        let mock = MockVidu::start().await;
        let app = config(TestApp::builder(&mock)).spawn().await;
        let token = app.token("vera", "video");
        Self { mock, app, token }
    }

    /// The bodies Vidu received, in order.
    fn bodies(&self) -> Vec<Bytes> {
        self.mock.received().into_iter().map(|r| r.body).collect()
    }

    async fn create(&self, body: &str) -> (StatusCode, Headers, Value) {
        self.app.post(CREATE, &self.token, body.to_owned()).await
    }

    async fn quote(&self, body: &str) -> (StatusCode, Headers, Value) {
        self.app.post(QUOTE, &self.token, body.to_owned()).await
    }

    fn forwarded(&self) -> usize {
        self.bodies().len()
    }

    /// 200, forwarded once: what Vidu received, and the gateway's response headers.
    async fn expect_forwarded(&self, body: &str) -> (Bytes, Headers) {
        let before = self.forwarded();
        let (status, headers, answer) = self.create(body).await;
        assert_eq!(status, StatusCode::OK, "{} -> {answer}", short(body));
        let got = self.bodies();
        assert_eq!(got.len(), before + 1, "forwarded once: {}", short(body));
        (got[before].clone(), headers)
    }

    /// 200, and Vidu received exactly the caller's bytes.
    async fn expect_ok(&self, body: impl ToString) -> Headers {
        let body = body.to_string();
        let (received, headers) = self.expect_forwarded(&body).await;
        assert!(
            received == body.as_bytes(),
            "not forwarded byte-for-byte: {}",
            short(&body)
        );
        headers
    }

    /// 400 with `top` as the envelope's reason and a (`field`, `reason`) entry in `metadata.fields`, nothing
    /// forwarded. Returns that entry's message.
    async fn expect_refused(
        &self,
        body: impl ToString,
        top: &str,
        field: &str,
        reason: &str,
    ) -> String {
        let body = body.to_string();
        let (got_top, fields) = self.refusal(&body).await;
        assert_eq!(got_top, top, "{fields:?} for {}", short(&body));
        fields
            .iter()
            .find(|(f, r, _)| f == field && r == reason)
            .map(|(_, _, m)| m.clone())
            .unwrap_or_else(|| panic!("no {field}/{reason} in {fields:?} for {}", short(&body)))
    }

    /// A 400 validation refusal in the envelope: its top-level reason and every violation. Asserts that nothing
    /// was forwarded and that the top-level message names every field at fault.
    async fn refusal(&self, body: &str) -> (String, Vec<Violation>) {
        let before = self.forwarded();
        let (status, headers, answer) = self.create(body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{} -> {answer}",
            short(body)
        );
        let top = answer["reason"].as_str().unwrap().to_owned();
        assert_envelope(status, &headers, &answer, &top);
        assert_eq!(
            self.forwarded(),
            before,
            "refused, yet forwarded: {}",
            short(body)
        );
        let fields = violations(&answer["metadata"]["fields"]);
        assert!(!fields.is_empty(), "{answer}");
        let message = answer["message"].as_str().unwrap();
        for (field, _, m) in &fields {
            assert!(!m.is_empty(), "{answer}");
            assert!(message.contains(field.as_str()), "{message} names {field}");
        }
        (top, fields)
    }
}

fn violations(fields: &Value) -> Vec<Violation> {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    fields
        .as_array()
        .unwrap_or_else(|| panic!("no fields array: {fields}"))
        .iter()
        .map(|f| (s(f, "field"), s(f, "reason"), s(f, "message")))
        .collect()
}

/// At most 160 characters of a body, for assertion messages (some bodies are megabytes).
fn short(body: &str) -> String {
    let mut s: String = body.chars().take(160).collect();
    if s.len() < body.len() {
        s.push('…');
    }
    s
}

fn assert_says(message: &str, fragments: &[&str]) {
    for f in fragments {
        assert!(message.contains(f), "{message:?} should say {f:?}");
    }
}

/// `{"model": model, "images": [IMG]}` plus the members of `extra` (which may override both).
fn req(model: &str, extra: Value) -> Value {
    let mut v = json!({"model": model, "images": [IMG]});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

/// A viduq2 body whose `field` holds the raw JSON text `raw` (replacing `model` or `images` when named).
fn with_raw(field: &str, raw: &str) -> String {
    match field {
        "model" => format!(r#"{{"images":["{IMG}"],"model":{raw}}}"#),
        "images" => format!(r#"{{"model":"viduq2","images":{raw}}}"#),
        _ => format!(r#"{{"model":"viduq2","images":["{IMG}"],"{field}":{raw}}}"#),
    }
}

fn credits_header(headers: &[(String, String)]) -> u64 {
    header(headers, "x-credits-estimated")
        .expect("X-Credits-Estimated on a create")
        .parse()
        .unwrap()
}

/// Top-level members as (decoded key, raw value text), in body order.
fn members(body: &[u8]) -> Vec<(String, String)> {
    struct Members(Vec<(String, String)>);
    impl<'de> Deserialize<'de> for Members {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Members;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                    let mut out = Vec::new();
                    while let Some(k) = map.next_key::<String>()? {
                        let v: Box<RawValue> = map.next_value()?;
                        out.push((k, v.get().to_owned()));
                    }
                    Ok(Members(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Members>(body).unwrap().0
}

// -------------------------------------------------------------------------------------------------------------
// Hand-built images: just the header bytes `imagesize` and the magic-byte checks read.

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// PNG signature, IHDR (8-bit RGB) with a correct CRC, `idat` bytes of IDAT, IEND.
pub(crate) fn png_with(width: u32, height: u32, idat: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    if !idat.is_empty() {
        png_chunk(&mut out, b"IDAT", idat);
    }
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn png(width: u32, height: u32) -> Vec<u8> {
    png_with(width, height, &[])
}

/// SOI, `filler` bytes of APP1 (EXIF-like) segments, SOF0 (baseline, 3 components) with the dimensions, EOI.
fn jpeg_with_metadata(width: u32, height: u32, filler: usize) -> Vec<u8> {
    let (w, h) = (
        u16::try_from(width).unwrap(),
        u16::try_from(height).unwrap(),
    );
    let mut out = vec![0xFF, 0xD8];
    let mut left = filler;
    while left > 0 {
        let n = left.min(60_000);
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&u16::try_from(n + 2).unwrap().to_be_bytes());
        out.extend(std::iter::repeat_n(b' ', n));
        left -= n;
    }
    out.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
    out.extend_from_slice(&h.to_be_bytes());
    out.extend_from_slice(&w.to_be_bytes());
    out.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    jpeg_with_metadata(width, height, 0)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn data_uri(media: &str, bytes: &[u8]) -> String {
    format!("data:{media};base64,{}", b64(bytes))
}

fn image_req(image: &str) -> Value {
    json!({"model": "viduq2", "images": [image]})
}

// -------------------------------------------------------------------------------------------------------------
// One case per reason. The boundaries themselves (every model's limits, every type, every malformed image) are
// the validator's unit tables; here each reason is shown once through HTTP, in the envelope, with nothing
// forwarded.

#[actix_web::test]
async fn each_field_reason_is_a_400_in_the_envelope_naming_the_field_and_nothing_is_forwarded() {
    let gw = Gw::start().await;
    let cases: Vec<(String, &str, &str, &str, &[&str])> = vec![
        (
            json!({"images": [IMG]}).to_string(),
            "FieldLacking",
            "model",
            "Missing",
            &[
                "model is required",
                "viduq1",
                "viduq2",
                "viduq3-turbo",
                "viduq3-pro",
            ],
        ),
        (
            json!({"model": "viduq2"}).to_string(),
            "FieldLacking",
            "images",
            "Missing",
            &["images is required", "http(s) URL", "data:image/"],
        ),
        (
            json!({"model": "viduq2", "images": [IMG, null, IMG]}).to_string(),
            "FieldItemCountOutOfRange",
            "images",
            "CountOutOfRange",
            &["images must hold exactly 1 image, got 3"],
        ),
        (
            with_raw("callbackUrl", r#""https://example.com/cb""#),
            "FieldUnwanted",
            "callbackUrl",
            "Unknown",
            &["unknown field \"callbackUrl\"", "remove it", "callback_url"],
        ),
        (
            image_req(&data_uri("image/jpeg", &jpeg(401, 100))).to_string(),
            "ImageFormatInvalid",
            "images[0]",
            "ImageInvalid",
            &["401x100", "1:4 to 4:1"],
        ),
        (
            req("VIDUQ2", json!({})).to_string(),
            "FieldInvalid",
            "model",
            "NotInCatalog",
            &[
                "unknown model \"VIDUQ2\"",
                "viduq1, viduq2, viduq3-pro, viduq3-turbo",
            ],
        ),
        (
            with_raw("duration", r#""5""#),
            "FieldInvalid",
            "duration",
            "WrongType",
            &["expected an integer", "send 5 without quotes"],
        ),
        (
            req("viduq3-turbo", json!({"prompt": "🐱".repeat(2001)})).to_string(),
            "FieldInvalid",
            "prompt",
            "TooLong",
            &[
                "viduq3-turbo allows at most 2000 characters",
                "got 2001",
                "shorten",
            ],
        ),
        (
            req("viduq2", json!({"duration": -1})).to_string(),
            "FieldInvalid",
            "duration",
            "OutOfRange",
            &["viduq2 allows 1..=10 seconds, got -1"],
        ),
        (
            req("viduq1", json!({"resolution": "720p"})).to_string(),
            "FieldInvalid",
            "resolution",
            "NotAllowed",
            &["viduq1 allows resolution 1080p, got \"720p\""],
        ),
        (
            req("viduq2", json!({"meta_data": "{"})).to_string(),
            "FieldInvalid",
            "meta_data",
            "InvalidJson",
            &["meta_data must be a string holding a JSON object"],
        ),
        (
            req("viduq2", json!({"callback_url": "javascript:alert(1)"})).to_string(),
            "FieldInvalid",
            "callback_url",
            "InvalidUrl",
            &["absolute http(s) URL"],
        ),
        (
            req("viduq3-pro", json!({"off_peak": true})).to_string(),
            "FieldInvalid",
            "off_peak",
            "Conflict",
            &[
                "send \"audio\": false",
                "viduq3-pro",
                "audio is on by default",
            ],
        ),
        (
            format!(r#"{{"model":"viduq2","images":["{IMG}"],"duration":5,"duration":6}}"#),
            "FieldInvalid",
            "duration",
            "Duplicate",
            &["duration appears 2 times", "send it once"],
        ),
    ];
    for (body, top, field, reason, fragments) in cases {
        let (got_top, fields) = gw.refusal(&body).await;
        assert_eq!(got_top, top, "{fields:?} for {}", short(&body));
        assert_eq!(
            fields.len(),
            1,
            "one problem: {fields:?} for {}",
            short(&body)
        );
        let (got_field, got_reason, message) = &fields[0];
        assert_eq!(
            (got_field.as_str(), got_reason.as_str()),
            (field, reason),
            "{}",
            short(&body)
        );
        assert_says(message, fragments);
    }
    assert!(gw.bodies().is_empty());
}

/// Every known field at its last valid value, on every seed model: accepted and forwarded as sent.
#[actix_web::test]
async fn every_field_at_its_last_valid_value_passes_and_is_forwarded_byte_for_byte() {
    let gw = Gw::start().await;
    for &(model, _, max, resolutions) in SEED_MODELS {
        gw.expect_ok(req(
            model,
            json!({"prompt": "🐱".repeat(2000), "duration": max, "resolution": resolutions.last().unwrap(),
                   "seed": 2_147_483_647, "watermark": true, "wm_position": 4,
                   "wm_url": "https://example.com/wm.png", "meta_data": r#"{"Label":"x"}"#,
                   "movement_amplitude": "large", "payload": "é".repeat(1_048_576), "is_rec": true,
                   "bgm": true, "audio_type": "sound_effect_only", "voice_id": "v1", "off_peak": false}),
        ))
        .await;
    }
}

// -------------------------------------------------------------------------------------------------------------
// What only a whole body shows: JSON escapes, data URIs and nulls as sent, unknown fields stripped, several
// problems at once.

#[actix_web::test]
async fn json_escaped_prompt_characters_count_once_decoded() {
    let gw = Gw::start().await;
    // 字 as \u5b57 (6 bytes of JSON), 🐱 as a surrogate pair (12 bytes), a newline as \n.
    for unit in [r"\u5b57", r"\ud83d\udc31", r"\n"] {
        let body = |n: usize| {
            format!(
                r#"{{"model":"viduq2","images":["{IMG}"],"prompt":"{}"}}"#,
                unit.repeat(n)
            )
        };
        gw.expect_ok(body(2000)).await;
        gw.expect_refused(body(2001), "FieldInvalid", "prompt", "TooLong")
            .await;
    }
}

#[actix_web::test]
async fn a_valid_data_uri_request_is_forwarded_byte_for_byte() {
    let gw = Gw::start().await;
    // 300 KB of 0xFF image data: its base64 is full of '/', sent once plain and once JSON-escaped as "\/".
    let image = data_uri("image/png", &png_with(1280, 720, &[0xFF; 300_000]));
    assert!(image.contains('/'));
    let plain = format!(
        concat!(
            "{{ \"prompt\":\"caf\\u00e9 \u{1F431}\",\n  \"images\" : [\"{image}\"],\"model\":\"viduq3-pro\" , ",
            "\"duration\":16,\"resolution\":\"1080p\",\"audio\":false,\"off_peak\":true}}\n"
        ),
        image = image
    );
    let headers = gw.expect_ok(&plain).await;
    assert_eq!(credits_header(&headers), 192, "ceil(24 × 16 × 0.5)");
    let escaped = plain.replace(&image, &image.replace('/', "\\/"));
    assert_ne!(escaped, plain);
    gw.expect_ok(&escaped).await;
    let (_, _, quote) = gw.quote(&escaped).await;
    assert_eq!(
        quote["image"],
        json!({"kind": "data_uri", "format": "png", "width": 1280, "height": 720,
               "decoded_bytes": png_with(1280, 720, &[0xFF; 300_000]).len()}),
        "{quote}"
    );
}

#[actix_web::test]
async fn json_null_counts_as_absent_and_is_forwarded_unchanged() {
    let gw = Gw::start().await;
    let mut body = format!(r#"{{"model":"viduq3-turbo","images":["{IMG}"]"#);
    for field in [
        "prompt",
        "duration",
        "seed",
        "resolution",
        "movement_amplitude",
        "payload",
        "off_peak",
        "watermark",
        "wm_position",
        "wm_url",
        "meta_data",
        "callback_url",
        "audio",
        "voice_id",
        "is_rec",
        "bgm",
        "audio_type",
    ] {
        body.push_str(&format!(r#","{field}":null"#));
    }
    body.push('}');
    let headers = gw.expect_ok(&body).await;
    assert_eq!(
        credits_header(&headers),
        60,
        "viduq3-turbo defaults: 720p, 5 s × 12"
    );
    let (_, _, quote) = gw.quote(&body).await;
    let e = &quote["effective"];
    assert_eq!(
        (
            e["duration"].clone(),
            e["resolution"].clone(),
            e["audio"].clone()
        ),
        (json!(5), json!("720p"), json!(true)),
        "{quote}"
    );
}

#[actix_web::test]
async fn with_unknown_fields_strip_the_field_is_removed_and_everything_else_forwarded_byte_for_byte()
 {
    let gw = Gw::with_config(strip_unknown_fields).await;
    let i = format!("[\"{IMG}\"]");
    let cases = [
        (
            format!(
                r#"{{"model":"viduq2","colour":"red","images":{i},"prompt":"a \u00e9 cat","duration":5}}"#
            ),
            format!(r#"{{"model":"viduq2","images":{i},"prompt":"a \u00e9 cat","duration":5}}"#),
        ),
        (
            format!(r#"{{"x-trace":{{"a":[1,2]}},"model":"viduq2","images":{i}}}"#),
            format!(r#"{{"model":"viduq2","images":{i}}}"#),
        ),
        (
            format!(r#"{{"model":"viduq2","images":{i},"extra":null}}"#),
            format!(r#"{{"model":"viduq2","images":{i}}}"#),
        ),
        (
            format!(r#"{{"a":1,"model":"viduq2","b":"2","images":{i},"a":3,"seed":7}}"#),
            format!(r#"{{"model":"viduq2","images":{i},"seed":7}}"#),
        ),
    ];
    for (sent, expected) in &cases {
        let (received, _) = gw.expect_forwarded(sent).await;
        assert_eq!(
            std::str::from_utf8(&received).unwrap(),
            expected,
            "sent {sent}"
        );
    }
    // Odd whitespace: every remaining member keeps its bytes and its place.
    let sent = format!(
        concat!(
            "{{ \"model\" : \"viduq3-pro\",\n  \"colour\": \"red\",\n",
            "  \"images\": {i},\t\"prompt\":\"a \\u00e9 cat\" , \"z\":[1, 2] }}"
        ),
        i = i
    );
    let (received, _) = gw.expect_forwarded(&sent).await;
    let mut kept = members(sent.as_bytes());
    kept.retain(|(k, _)| k != "colour" && k != "z");
    assert_eq!(members(&received), kept);
    let (_, _, quote) = gw.quote(&sent).await;
    assert_eq!(quote["valid"], true, "{quote}");
    assert_eq!(quote["stripped_fields"], json!(["colour", "z"]));
    // Known fields are still checked.
    gw.expect_refused(
        req("viduq2", json!({"colour": "red", "duration": 11})),
        "FieldInvalid",
        "duration",
        "OutOfRange",
    )
    .await;
}

#[actix_web::test]
async fn escaped_keys_are_the_fields_they_spell_in_both_unknown_field_modes() {
    let gw = Gw::start().await;
    let msg = gw
        .expect_refused(
            format!(r#"{{"model":"viduq2","images":["{IMG}"],"dur\u0061tion":11}}"#),
            "FieldInvalid",
            "duration",
            "OutOfRange",
        )
        .await;
    assert_eq!(msg, "viduq2 allows 1..=10 seconds, got 11");
    gw.expect_refused(
        format!(r#"{{"model":"viduq2","images":["{IMG}"],"duration":5,"dur\u0061tion":6}}"#),
        "FieldInvalid",
        "duration",
        "Duplicate",
    )
    .await;
    gw.expect_refused(
        format!(r#"{{"model":"viduq2","images":["{IMG}"],"colo\u0072":1}}"#),
        "FieldUnwanted",
        "color",
        "Unknown",
    )
    .await;
    // JSON escapes inside values are what they spell too.
    gw.expect_ok(format!(
        r#"{{"model":"vidu\u00712","images":["{}"],"resolution":"1080\u0070"}}"#,
        IMG.replace('/', "\\/")
    ))
    .await;
    gw.expect_ok(image_req(
        &data_uri("image/png", &png(64, 64)).replacen("data:", "DATA:", 1),
    ))
    .await;

    let gw = Gw::with_config(strip_unknown_fields).await;
    let (received, _) = gw
        .expect_forwarded(&format!(
            r#"{{"model":"viduq2","colo\u0072":"red","images":["{IMG}"]}}"#
        ))
        .await;
    assert_eq!(
        std::str::from_utf8(&received).unwrap(),
        format!(r#"{{"model":"viduq2","images":["{IMG}"]}}"#)
    );
}

#[actix_web::test]
async fn a_request_with_several_problems_gets_all_of_them_and_the_top_reason_by_precedence() {
    let gw = Gw::start().await;
    let body = json!({"model": "viduq2", "images": [IMG], "prompt": "x".repeat(2001), "duration": 12,
                      "resolution": "4k", "seed": -1, "wm_position": 9, "movement_amplitude": "huge",
                      "payload": 3, "off_peak": "yes", "wm_url": "ftp://x", "meta_data": "{",
                      "callback_url": "x", "audio_type": "loud", "extra": true});
    let (top, fields) = gw.refusal(&body.to_string()).await;
    assert_eq!(top, "FieldUnwanted");
    let got: Vec<_> = fields
        .iter()
        .map(|(f, r, _)| (f.as_str(), r.as_str()))
        .collect();
    let expected = [
        ("prompt", "TooLong"),
        ("duration", "OutOfRange"),
        ("resolution", "NotAllowed"),
        ("seed", "OutOfRange"),
        ("wm_position", "OutOfRange"),
        ("movement_amplitude", "NotAllowed"),
        ("payload", "WrongType"),
        ("off_peak", "WrongType"),
        ("wm_url", "InvalidUrl"),
        ("meta_data", "InvalidJson"),
        ("callback_url", "InvalidUrl"),
        ("audio_type", "NotAllowed"),
        ("extra", "Unknown"),
    ];
    for e in expected {
        assert!(got.contains(&e), "{e:?} missing from {got:?}");
    }
    assert_eq!(got.len(), expected.len(), "{got:?}");

    // The error envelope, exactly: the fine reasons under `metadata.fields`.
    let (status, _, answer) = gw
        .create(&req("viduq2", json!({"duration": 12})).to_string())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The top-level message carries the first field's own message, for clients that log only `message`.
    assert_eq!(
        answer["message"],
        "invalid field: duration — viduq2 allows 1..=10 seconds, got 12"
    );
    assert_eq!(
        answer["metadata"]["fields"],
        json!([{"field": "duration", "reason": "OutOfRange", "message": "viduq2 allows 1..=10 seconds, got 12"}])
    );
    assert!(gw.bodies().is_empty());
}

// -------------------------------------------------------------------------------------------------------------
// Catalog in config, pricing, quote.

const FAST_MODEL: &str = r#"
[models.viduq3-pro-fast]
durations = { min = 1, max = 8, default = 4 }
resolutions = ["720p", "1080p"]
default_resolution = "1080p"
prompt_max_chars = 5000
audio_default = true
off_peak_with_audio = true
credits = { base = { "720p" = 2, "1080p" = 3 }, per_second = { "720p" = 10.5, "1080p" = 12 } }
"#;

#[actix_web::test]
async fn a_model_added_in_config_is_valid_with_no_code_change_and_replaces_the_seed_catalog() {
    let gw = Gw::with_config(|c| c.toml(FAST_MODEL)).await;
    let m = "viduq3-pro-fast";
    let headers = gw.expect_ok(req(m, json!({}))).await;
    assert_eq!(credits_header(&headers), 51, "1080p 4 s: 3 + 12 × 4");
    gw.expect_ok(req(
        m,
        json!({"duration": 8, "resolution": "720p", "prompt": "p".repeat(5000)}),
    ))
    .await;
    let headers = gw
        .expect_ok(req(
            m,
            json!({"duration": 3, "resolution": "720p", "off_peak": true}),
        ))
        .await;
    assert_eq!(
        credits_header(&headers),
        17,
        "ceil((2 + 10.5 × 3) × 0.5) = ceil(16.75)"
    );
    let msg = gw
        .expect_refused(
            req(m, json!({"duration": 9})),
            "FieldInvalid",
            "duration",
            "OutOfRange",
        )
        .await;
    assert_eq!(msg, "viduq3-pro-fast allows 1..=8 seconds, got 9");
    gw.expect_refused(
        req(m, json!({"resolution": "540p"})),
        "FieldInvalid",
        "resolution",
        "NotAllowed",
    )
    .await;
    gw.expect_refused(
        req(m, json!({"prompt": "p".repeat(5001)})),
        "FieldInvalid",
        "prompt",
        "TooLong",
    )
    .await;
    let msg = gw
        .expect_refused(
            req("viduq2", json!({})),
            "FieldInvalid",
            "model",
            "NotInCatalog",
        )
        .await;
    assert_eq!(
        msg,
        "unknown model \"viduq2\": this gateway's catalog has viduq3-pro-fast"
    );
    let (_, _, quote) = gw.quote(&req(m, json!({})).to_string()).await;
    let e = &quote["effective"];
    assert_eq!(
        (
            e["duration"].clone(),
            e["resolution"].clone(),
            e["audio"].clone()
        ),
        (json!(4), json!("1080p"), json!(true)),
        "{quote}"
    );
}

#[actix_web::test]
async fn x_credits_estimated_on_a_create_is_the_catalog_estimate() {
    let gw = Gw::start().await;
    let cases: &[(&str, Value, u64)] = &[
        (
            "viduq3-pro",
            json!({"resolution": "1080p", "duration": 8}),
            192,
        ),
        (
            "viduq3-pro",
            json!({"resolution": "540p", "duration": 1}),
            9,
        ),
        (
            "viduq3-pro",
            json!({"resolution": "1080p", "duration": 16, "off_peak": true, "audio": false}),
            192,
        ),
        (
            "viduq3-turbo",
            json!({"resolution": "1080p", "duration": 16}),
            208,
        ),
        (
            "viduq3-turbo",
            json!({"duration": 3, "off_peak": true, "audio": false, "is_rec": true}),
            28,
        ),
        ("viduq2", json!({}), 55),
        ("viduq2", json!({"off_peak": true}), 28),
        ("viduq2", json!({"off_peak": true, "is_rec": true}), 38),
        ("viduq2", json!({"is_rec": true}), 65),
        ("viduq2", json!({"is_rec": false}), 55),
        ("viduq2", json!({"resolution": "540p", "duration": 1}), 5),
        (
            "viduq2",
            json!({"resolution": "1080p", "duration": 10}),
            190,
        ),
        ("viduq1", json!({}), 80),
        ("viduq1", json!({"off_peak": true}), 40),
    ];
    for (model, extra, credits) in cases {
        let body = req(model, extra.clone());
        let headers = gw.expect_ok(&body).await;
        assert_eq!(credits_header(&headers), *credits, "{body}");
    }
}

#[actix_web::test]
async fn the_quote_reports_effective_parameters_estimates_and_policy_without_reaching_vidu() {
    let gw = Gw::start().await;
    let (status, _, q) = gw.quote(&req("viduq1", json!({})).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{q}");
    assert_eq!(q["valid"], true);
    let e = &q["effective"];
    assert_eq!(e["model"], "viduq1");
    assert_eq!(e["duration"], 5);
    assert_eq!(e["resolution"], "1080p");
    assert_eq!(e["audio"], false);
    assert_eq!(e["off_peak"], false);
    let defaulted = e["defaulted"].as_array().unwrap();
    assert!(
        defaulted.contains(&json!("duration")) && defaulted.contains(&json!("resolution")),
        "{q}"
    );
    assert_eq!(
        q["estimated_credits"],
        json!({"now": 80, "immediate": 80, "off_peak": 40})
    );
    assert_eq!(q["policy"]["admitted"], true, "{q}");
    assert_eq!(q["image"]["kind"], "url");

    let body = req(
        "viduq3-pro",
        json!({"resolution": "1080p", "duration": 8, "off_peak": true, "audio": false}),
    );
    let (_, _, q) = gw.quote(&body.to_string()).await;
    assert_eq!(
        q["estimated_credits"],
        json!({"now": 96, "immediate": 192, "off_peak": 96}),
        "{q}"
    );
    assert_eq!(q["policy"]["estimated_credits"], 96);
    assert_eq!(q["effective"]["off_peak"], true);

    // An invalid body: 200 with the verdict, in the shape a create's refusal has.
    let bad = req(
        "viduq3-pro",
        json!({"duration": 17, "off_peak": true, "colour": "red"}),
    )
    .to_string();
    let (status, _, q) = gw.quote(&bad).await;
    assert_eq!(status, StatusCode::OK, "{q}");
    assert_eq!(q["valid"], false);
    assert_eq!(q["reason"], "FieldUnwanted");
    let fields = violations(&q["fields"]);
    assert_eq!(fields.len(), 3, "{fields:?}");
    let (status, _, refusal) = gw.create(&bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(q["reason"], refusal["reason"]);
    assert_eq!(q["fields"], refusal["metadata"]["fields"]);

    // A body that is not a JSON object is a bad request, as on a create.
    for not_object in ["[1,2]", "\"text\"", "null", "not json", "", "{\"model\": "] {
        let (status, headers, body) = gw.quote(not_object).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{not_object:?}: {body}");
        assert_envelope(status, &headers, &body, "BadRequest");
        assert!(body["metadata"].get("fields").is_none(), "{body}");
    }
    assert!(gw.bodies().is_empty(), "a quote is never forwarded");
}
