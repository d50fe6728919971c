//! `validate()` end to end: every rule, reason and default through the phase's entry point.

use super::*;
use crate::config::{BUILTIN_CONFIG, Origin, UnknownFields, load_from_str};
use crate::validate::fields::{AUDIO_TYPES, MOVEMENT_AMPLITUDES, field_names};
use crate::validate::image::test_images;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::LazyLock;

const IMG: &str = "https://example.com/first-frame.png";
const MODELS: &[&str] = &["viduq1", "viduq2", "viduq3-turbo", "viduq3-pro"];

static BUILT_IN: LazyLock<Settings> = LazyLock::new(settings);

fn settings() -> Settings {
    load_from_str(BUILTIN_CONFIG, Origin::Builtin, Default::default())
        .unwrap()
        .settings
}

fn strip_settings() -> Settings {
    let mut s = settings();
    s.validation.unknown_fields = UnknownFields::Strip;
    s
}

/// A minimal valid body for `model`, with `extra` merged in (a `Value::Null` in `extra` is sent as null).
fn body(model: &str, extra: Value) -> Vec<u8> {
    let mut v = json!({"model": model, "images": [IMG]});
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    serde_json::to_vec(&v).unwrap()
}

/// Validated against the built-in settings (the body is leaked so the effective parameters can be returned).
fn check(model: &str, extra: Value) -> Result<Effective<'static>, Rejection> {
    let b: &'static [u8] = Box::leak(body(model, extra).into_boxed_slice());
    validate(b, &BUILT_IN).map(|v| v.params)
}

/// Refused with exactly one violation: returns (top-level reason, field, field reason, message).
fn one(model: &str, extra: Value) -> (Reason, String, FieldReason, String) {
    let r = check(model, extra.clone()).expect_err(&format!("{model} {extra} should be refused"));
    assert_eq!(r.fields.len(), 1, "{r:?}");
    let f = &r.fields[0];
    (r.reason, f.field.clone(), f.reason, f.message.clone())
}

fn ok(model: &str, extra: Value) -> Effective<'static> {
    match check(model, extra.clone()) {
        Ok(e) => e,
        Err(r) => panic!("{model} {extra} should pass: {r:?}"),
    }
}

#[test]
fn an_escaped_image_string_is_still_read_and_checked() {
    let b = br#"{"model":"viduq2","images":["https:\/\/example.com\/a.png"]}"#;
    assert!(validate(b, &settings()).is_ok());
    let b = br#"{"model":"viduq2","images":["https://example.com/a.png", "https://example.com/b.png"]}"#;
    let e = validate(b, &settings()).err().unwrap();
    assert!(format!("{e:?}").contains("exactly 1 image"), "{e:?}");
}

#[test]
fn a_minimal_body_passes_for_every_seed_model_with_its_defaults() {
    let s = settings();
    for &m in MODELS {
        let e = ok(m, json!({}));
        let spec = &s.models[m];
        assert_eq!(e.model.name(), m);
        assert_eq!(e.duration, spec.durations.default);
        assert_eq!(e.resolution, spec.default_resolution);
        assert_eq!(e.audio, spec.audio_default);
        assert!(!e.off_peak && !e.is_rec && !e.watermark && !e.bgm);
        assert_eq!((e.seed, e.wm_position), (0, 3));
        assert_eq!(e.movement_amplitude, "auto");
        assert!(e.defaulted.contains(&"duration") && e.defaulted.contains(&"audio"));
    }
    assert!(ok("viduq3-pro", json!({})).audio);
    assert!(!ok("viduq2", json!({})).audio);
    assert_eq!(ok("viduq1", json!({})).resolution, "1080p");
}

#[test]
fn explicit_values_become_the_effective_parameters() {
    let e = ok(
        "viduq3-turbo",
        json!({"duration": 16, "resolution": "1080p", "audio": false, "off_peak": true, "is_rec": true,
               "seed": 42, "movement_amplitude": "large", "watermark": true, "wm_position": 1, "bgm": true,
               "audio_type": "speech_only", "prompt": "海边的猫", "callback_url": "https://team.example/cb",
               "voice_id": "v1"}),
    );
    assert_eq!(
        (e.duration, e.resolution, e.audio, e.off_peak, e.is_rec),
        (16, "1080p", false, true, true)
    );
    assert_eq!(
        (e.seed, e.wm_position, e.watermark, e.bgm),
        (42, 1, true, true)
    );
    assert_eq!(e.movement_amplitude, "large");
    assert_eq!(e.audio_type.as_deref(), Some("speech_only"));
    assert_eq!(e.prompt_chars, 4);
    assert_eq!(e.callback_url.as_deref(), Some("https://team.example/cb"));
    assert_eq!(e.voice_id.as_deref(), Some("v1"));
    assert!(e.defaulted.is_empty(), "{:?}", e.defaulted);
}

#[test]
fn prompt_length_is_counted_in_characters_per_model() {
    for &m in MODELS {
        ok(m, json!({"prompt": "a".repeat(2000)}));
        ok(m, json!({"prompt": "字".repeat(2000)})); // 6000 bytes, 2000 characters
        ok(m, json!({"prompt": "🎬".repeat(2000)}));
        for p in ["a".repeat(2001), "字".repeat(2001)] {
            let (top, field, reason, msg) = one(m, json!({ "prompt": p }));
            assert_eq!(
                (top, field.as_str(), reason),
                (Reason::FieldInvalid, "prompt", FieldReason::TooLong)
            );
            assert_eq!(
                msg,
                format!("{m} allows at most 2000 characters in prompt, got 2001: shorten it")
            );
        }
    }
}

#[test]
fn prompt_limit_is_the_catalog_value() {
    let mut s = settings();
    s.models.get_mut("viduq3-pro").unwrap().prompt_max_chars = 5000;
    let b = body("viduq3-pro", json!({"prompt": "x".repeat(5000)}));
    assert!(validate(&b, &s).is_ok());
    let b = body("viduq3-pro", json!({"prompt": "x".repeat(5001)}));
    assert_eq!(
        validate(&b, &s).unwrap_err().fields[0].reason,
        FieldReason::TooLong
    );
}

#[test]
fn payload_is_limited_to_1_048_576_characters() {
    ok("viduq2", json!({"payload": "p".repeat(1_048_576)}));
    ok("viduq2", json!({"payload": "é".repeat(1_048_576)})); // 2 MiB of bytes, 1,048,576 characters
    let (top, field, reason, msg) = one("viduq2", json!({"payload": "p".repeat(1_048_577)}));
    assert_eq!(
        (top, field.as_str(), reason),
        (Reason::FieldInvalid, "payload", FieldReason::TooLong)
    );
    assert_eq!(
        msg,
        "payload may hold at most 1048576 characters, got 1048577: shorten it"
    );
    let (.., reason, _) = one("viduq2", json!({"payload": "é".repeat(1_048_577)}));
    assert_eq!(reason, FieldReason::TooLong);
    let (.., reason, msg) = one("viduq2", json!({"payload": {"a": 1}}));
    assert_eq!(
        (reason, msg.as_str()),
        (
            FieldReason::WrongType,
            "payload: expected a string, got an object"
        )
    );
}

#[test]
fn duration_boundaries_for_every_model() {
    let s = settings();
    for &m in MODELS {
        let r = s.models[m].durations;
        assert_eq!(ok(m, json!({"duration": r.min})).duration, r.min);
        assert_eq!(ok(m, json!({"duration": r.max})).duration, r.max);
        for bad in [i64::from(r.min) - 1, i64::from(r.max) + 1] {
            let (top, field, reason, msg) = one(m, json!({ "duration": bad }));
            assert_eq!(
                (top, field.as_str(), reason),
                (Reason::FieldInvalid, "duration", FieldReason::OutOfRange)
            );
            let allowed = if r.min == r.max {
                format!("only {} seconds", r.min)
            } else {
                format!("{}..={} seconds", r.min, r.max)
            };
            assert_eq!(msg, format!("{m} allows {allowed}, got {bad}"));
        }
    }
    let (.., msg) = one("viduq2", json!({"duration": 12}));
    assert_eq!(msg, "viduq2 allows 1..=10 seconds, got 12");
    let b = br#"{"model":"viduq2","images":["https://e.x/a.png"],"duration":99999999999999999999}"#;
    let r = validate(b, &settings()).unwrap_err();
    assert_eq!(
        r.fields[0].message,
        "viduq2 allows 1..=10 seconds, got 9223372036854775807"
    );
}

#[test]
fn viduq1_takes_5_seconds_at_1080p_only() {
    ok("viduq1", json!({"duration": 5, "resolution": "1080p"}));
    for d in [1, 4, 6, 8, 10] {
        let (.., msg) = one("viduq1", json!({ "duration": d }));
        assert_eq!(msg, format!("viduq1 allows only 5 seconds, got {d}"));
    }
    for r in ["540p", "720p"] {
        let (top, field, reason, msg) = one("viduq1", json!({ "resolution": r }));
        assert_eq!(
            (top, field.as_str(), reason),
            (Reason::FieldInvalid, "resolution", FieldReason::NotAllowed)
        );
        assert_eq!(msg, format!("viduq1 allows resolution 1080p, got \"{r}\""));
    }
}

#[test]
fn each_resolution_of_each_model_passes_and_others_are_refused() {
    let s = settings();
    for &m in MODELS {
        for r in &s.models[m].resolutions {
            assert_eq!(&ok(m, json!({ "resolution": r })).resolution, r);
        }
        for bad in ["4k", "1080P", "360p", ""] {
            let (.., reason, _) = one(m, json!({ "resolution": bad }));
            assert_eq!(reason, FieldReason::NotAllowed, "{m} {bad}");
        }
    }
    let (.., msg) = one("viduq2", json!({"resolution": "4k"}));
    assert_eq!(
        msg,
        "viduq2 allows resolution 540p, 720p, 1080p, got \"4k\""
    );
}

#[test]
fn wm_position_is_1_to_4() {
    for p in 1..=4u8 {
        assert_eq!(ok("viduq2", json!({ "wm_position": p })).wm_position, p);
    }
    for p in [0, 5, -1] {
        let (top, field, reason, msg) = one("viduq2", json!({ "wm_position": p }));
        assert_eq!(
            (top, field.as_str(), reason),
            (Reason::FieldInvalid, "wm_position", FieldReason::OutOfRange)
        );
        assert!(msg.ends_with(&format!("got {p}")), "{msg}");
        assert!(msg.contains("3 (bottom-right)"), "{msg}");
    }
}

#[test]
fn seed_is_0_to_2147483647() {
    assert_eq!(ok("viduq2", json!({"seed": 0})).seed, 0);
    assert_eq!(ok("viduq2", json!({"seed": 2147483647})).seed, 2147483647);
    for s in [
        json!(-1),
        json!(2147483648u64),
        json!(18446744073709551615u64),
        json!(-9223372036854775808i64),
    ] {
        let (top, field, reason, msg) = one("viduq2", json!({ "seed": s }));
        assert_eq!(
            (top, field.as_str(), reason),
            (Reason::FieldInvalid, "seed", FieldReason::OutOfRange)
        );
        assert_eq!(
            msg,
            format!("seed must be an integer in 0..=2147483647 (0 = random), got {s}")
        );
    }
}

#[test]
fn numbers_and_booleans_sent_as_strings_or_floats_are_wrong_types() {
    let cases = [
        (
            json!({"duration": "5"}),
            "duration",
            "duration: expected an integer, got a string (\"5\"): send 5 without quotes",
        ),
        (
            json!({"duration": 5.0}),
            "duration",
            "duration: expected an integer, got a number (5.0): send a whole number such as 5",
        ),
        (
            json!({"duration": 5.5}),
            "duration",
            "duration: expected an integer, got a number (5.5): send a whole number such as 5",
        ),
        (
            json!({"seed": "1"}),
            "seed",
            "seed: expected an integer, got a string (\"1\"): send 1 without quotes",
        ),
        (
            json!({"wm_position": "3"}),
            "wm_position",
            "wm_position: expected an integer, got a string (\"3\"): send 3 without quotes",
        ),
        (
            json!({"wm_position": true}),
            "wm_position",
            "wm_position: expected an integer, got a boolean (true)",
        ),
        (
            json!({"off_peak": "true"}),
            "off_peak",
            "off_peak: expected a boolean (true or false), got a string (\"true\"): send true without quotes",
        ),
        (
            json!({"audio": 1}),
            "audio",
            "audio: expected a boolean (true or false), got a number (1)",
        ),
        (
            json!({"watermark": "no"}),
            "watermark",
            "watermark: expected a boolean (true or false), got a string (\"no\")",
        ),
        (
            json!({"is_rec": 0}),
            "is_rec",
            "is_rec: expected a boolean (true or false), got a number (0)",
        ),
        (
            json!({"bgm": []}),
            "bgm",
            "bgm: expected a boolean (true or false), got an array",
        ),
        (
            json!({"prompt": 5}),
            "prompt",
            "prompt: expected a string, got a number (5)",
        ),
        (
            json!({"voice_id": 7}),
            "voice_id",
            "voice_id: expected a string, got a number (7)",
        ),
        (
            json!({"resolution": 720}),
            "resolution",
            "resolution: expected a string, got a number (720)",
        ),
        (
            json!({"movement_amplitude": false}),
            "movement_amplitude",
            "movement_amplitude: expected a string, got a boolean (false)",
        ),
    ];
    for (extra, field, msg) in cases {
        let (top, f, reason, m) = one("viduq2", extra);
        assert_eq!(
            (top, f.as_str(), reason),
            (Reason::FieldInvalid, field, FieldReason::WrongType)
        );
        assert_eq!(m, msg);
    }
    let (top, f, reason, m) = one("viduq2", json!({"duration": 1e1}));
    assert_eq!(
        (top, f.as_str(), reason),
        (Reason::FieldInvalid, "duration", FieldReason::WrongType)
    );
    assert!(m.contains("10.0"), "{m}");
    let b = br#"{"model":"viduq2","images":["https://e.x/a.png"],"duration":5e0}"#;
    assert_eq!(
        validate(b, &settings()).unwrap_err().fields[0].reason,
        FieldReason::WrongType
    );
}

#[test]
fn model_must_be_a_catalog_string() {
    let (top, field, reason, msg) = one("viduq9", json!({}));
    assert_eq!(
        (top, field.as_str(), reason),
        (Reason::FieldInvalid, "model", FieldReason::NotInCatalog)
    );
    assert_eq!(
        msg,
        "unknown model \"viduq9\": this gateway's catalog has viduq1, viduq2, viduq3-pro, viduq3-turbo"
    );
    let r = validate(
        br#"{"model": 2, "images": ["https://e.x/a.png"]}"#,
        &settings(),
    )
    .unwrap_err();
    assert_eq!(
        (r.reason, r.fields[0].reason),
        (Reason::FieldInvalid, FieldReason::WrongType)
    );
}

#[test]
fn model_dependent_rules_are_skipped_when_the_model_is_unknown() {
    let r = check(
        "nope",
        json!({"prompt": "x".repeat(9000), "duration": 99, "resolution": "9k", "off_peak": true,
               "duration_typo": 1}),
    )
    .unwrap_err();
    let fields: Vec<_> = r
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.reason))
        .collect();
    // (json! sorts keys: the body order is duration_typo, …, model)
    assert_eq!(
        fields,
        [
            ("duration_typo", FieldReason::Unknown),
            ("model", FieldReason::NotInCatalog)
        ]
    );
    // Type errors do not depend on the model and are still reported.
    let r = check("nope", json!({"duration": "5"})).unwrap_err();
    assert_eq!(r.fields.len(), 2);
}

#[test]
fn adding_a_model_to_the_catalog_makes_it_valid_without_code() {
    let mut s = settings();
    let b = body(
        "viduq3-pro-fast",
        json!({"duration": 8, "resolution": "1080p"}),
    );
    assert_eq!(
        validate(&b, &s).unwrap_err().fields[0].reason,
        FieldReason::NotInCatalog
    );
    let mut spec = s.models["viduq3-pro"].clone();
    spec.durations.max = 8;
    s.models.insert("viduq3-pro-fast".into(), spec);
    let v = validate(&b, &s).unwrap();
    assert_eq!(
        (v.params.model.name(), v.params.duration),
        ("viduq3-pro-fast", 8)
    );
    let b = body("viduq3-pro-fast", json!({"duration": 9}));
    assert_eq!(
        validate(&b, &s).unwrap_err().fields[0].message,
        "viduq3-pro-fast allows 1..=8 seconds, got 9"
    );
}

#[test]
fn a_catalog_from_a_config_file_is_the_whole_catalog() {
    let text = r#"
[auth]
algorithms = ["HS256"]
hs256_secret = "a-test-secret-that-is-long-enough-for-hs256"

[models.viduq3-pro-fast]
durations = { min = 2, max = 8, default = 4 }
resolutions = ["720p"]
default_resolution = "720p"
credits = { base = { "720p" = 3 }, per_second = { "720p" = 10 } }
"#;
    let s = load_from_str(text, Origin::Builtin, Default::default())
        .unwrap()
        .settings;
    let b = body("viduq3-pro-fast", json!({}));
    let v = validate(&b, &s).unwrap();
    assert_eq!((v.params.duration, v.params.resolution), (4, "720p"));
    assert_eq!(v.params.estimate(&s), 43);
    assert_eq!(
        validate(&body("viduq2", json!({})), &s).unwrap_err().fields[0].reason,
        FieldReason::NotInCatalog
    );
}

#[test]
fn images_must_hold_exactly_one_string() {
    let s = settings();
    for (imgs, top, field, reason) in [
        (
            json!([]),
            Reason::FieldItemCountOutOfRange,
            "images",
            FieldReason::CountOutOfRange,
        ),
        (
            json!([IMG, IMG]),
            Reason::FieldItemCountOutOfRange,
            "images",
            FieldReason::CountOutOfRange,
        ),
        (
            json!(IMG),
            Reason::FieldInvalid,
            "images",
            FieldReason::WrongType,
        ),
        (
            json!({"0": IMG}),
            Reason::FieldInvalid,
            "images",
            FieldReason::WrongType,
        ),
        (
            json!([5]),
            Reason::FieldInvalid,
            "images[0]",
            FieldReason::WrongType,
        ),
        (
            json!([null]),
            Reason::FieldInvalid,
            "images[0]",
            FieldReason::WrongType,
        ),
        (
            json!([[IMG]]),
            Reason::FieldInvalid,
            "images[0]",
            FieldReason::WrongType,
        ),
    ] {
        let b = serde_json::to_vec(&json!({"model": "viduq2", "images": imgs})).unwrap();
        let r = validate(&b, &s).unwrap_err();
        assert_eq!(r.fields.len(), 1, "{r:?}");
        assert_eq!(
            (r.reason, r.fields[0].field.as_str(), r.fields[0].reason),
            (top, field, reason),
            "{imgs}"
        );
    }
    let b = serde_json::to_vec(&json!({"model": "viduq2", "images": [IMG, IMG]})).unwrap();
    assert_eq!(
        validate(&b, &s).unwrap_err().fields[0].message,
        "images must hold exactly 1 image, got 2"
    );
    let b = serde_json::to_vec(&json!({"model": "viduq2", "images": IMG})).unwrap();
    assert!(
        validate(&b, &s).unwrap_err().fields[0]
            .message
            .contains("wrap it as \"images\": [\"...\"]")
    );
}

#[test]
fn image_problems_are_image_format_invalid_at_images_0() {
    for v in [
        "ftp://example.com/a.png",
        "file:///tmp/a.png",
        "data:text/plain;base64,aGk=",
        "example.com/a.png",
    ] {
        let b = serde_json::to_vec(&json!({"model": "viduq2", "images": [v]})).unwrap();
        let r = validate(&b, &settings()).unwrap_err();
        assert_eq!(
            (r.reason, r.fields[0].field.as_str(), r.fields[0].reason),
            (
                Reason::ImageFormatInvalid,
                "images[0]",
                FieldReason::ImageInvalid
            ),
            "{v}"
        );
        assert!(
            r.message.starts_with("invalid field: images[0] — "),
            "{}",
            r.message
        );
    }
}

#[test]
fn data_uri_images_are_checked_and_reported() {
    let s = settings();
    let uri = test_images::data_uri("image/png", &test_images::png(400, 100));
    let b = serde_json::to_vec(&json!({"model": "viduq2", "images": [uri]})).unwrap();
    let v = validate(&b, &s).unwrap();
    assert!(matches!(
        v.image,
        ImageInfo::DataUri {
            width: 400,
            height: 100,
            ..
        }
    ));
    let uri = test_images::data_uri("image/webp", &test_images::png(401, 100));
    let b = serde_json::to_vec(&json!({"model": "viduq2", "images": [uri]})).unwrap();
    let r = validate(&b, &s).unwrap_err();
    assert_eq!(r.reason, Reason::ImageFormatInvalid);
    assert!(r.fields[0].message.contains("is a PNG image"));
    // Escaped slashes (as some encoders write them) decode to the same base64.
    let uri = test_images::data_uri("image/jpeg", &test_images::jpeg(300, 300));
    let escaped = uri.replace('/', "\\/");
    let b = format!(r#"{{"model":"viduq2","images":["{escaped}"]}}"#);
    assert!(validate(b.as_bytes(), &s).is_ok());
}

#[test]
fn meta_data_is_a_string_holding_a_json_object() {
    ok(
        "viduq2",
        json!({"meta_data": r#"{"Label": "your_label", "ContentProducer": "x"}"#}),
    );
    ok("viduq2", json!({"meta_data": ""}));
    let (top, field, reason, msg) = one("viduq2", json!({"meta_data": {"Label": "x"}}));
    assert_eq!(
        (top, field.as_str(), reason),
        (Reason::FieldInvalid, "meta_data", FieldReason::WrongType)
    );
    assert!(msg.contains("serialised as a JSON string"), "{msg}");
    for bad in ["{not json", "[1, 2]", "\"text\"", "{\"a\": 1} trailing"] {
        let (top, field, reason, msg) = one("viduq2", json!({ "meta_data": bad }));
        assert_eq!(
            (top, field.as_str(), reason),
            (Reason::FieldInvalid, "meta_data", FieldReason::InvalidJson),
            "{bad}"
        );
        assert!(
            msg.starts_with("meta_data must be a string holding a JSON object"),
            "{msg}"
        );
    }
}

#[test]
fn urls_must_be_absolute_http_or_https_with_a_host() {
    for field in ["wm_url", "callback_url"] {
        for good in [
            "https://example.com/w.png",
            "http://10.0.0.1:8080/cb?x=1",
            "",
        ] {
            ok("viduq2", json!({ field: good }));
        }
        for bad in [
            "ftp://example.com/w.png",
            "/relative/path",
            "example.com",
            "https://",
            "http:// x.com",
            "javascript:alert(1)",
        ] {
            let (top, f, reason, msg) = one("viduq2", json!({ field: bad }));
            assert_eq!(
                (top, f.as_str(), reason),
                (Reason::FieldInvalid, field, FieldReason::InvalidUrl),
                "{bad}"
            );
            assert!(msg.starts_with("expected an absolute http(s) URL"), "{msg}");
        }
    }
}

#[test]
fn enumerations_take_their_documented_values_only() {
    for m in MOVEMENT_AMPLITUDES {
        assert_eq!(
            &ok("viduq3-pro", json!({ "movement_amplitude": m })).movement_amplitude,
            m
        );
    }
    let (.., reason, msg) = one("viduq2", json!({"movement_amplitude": "huge"}));
    assert_eq!(reason, FieldReason::NotAllowed);
    assert_eq!(
        msg,
        "movement_amplitude must be one of auto, small, medium, large, got \"huge\""
    );
    for t in AUDIO_TYPES {
        ok("viduq3-pro", json!({ "audio_type": t }));
    }
    let (.., reason, _) = one("viduq3-pro", json!({"audio_type": "music"}));
    assert_eq!(reason, FieldReason::NotAllowed);
}

#[test]
fn off_peak_with_audio_is_refused_where_the_model_cannot_do_both() {
    for m in ["viduq3-pro", "viduq3-turbo"] {
        // audio on by the model's default
        let (top, field, reason, msg) = one(m, json!({"off_peak": true}));
        assert_eq!(
            (top, field.as_str(), reason),
            (Reason::FieldInvalid, "off_peak", FieldReason::Conflict)
        );
        assert!(
            msg.starts_with(&format!(
                "send \"audio\": false to use off_peak with {m} (off-peak cannot run with audio"
            )),
            "{msg}"
        );
        // audio explicit
        let (.., msg) = one(m, json!({"off_peak": true, "audio": true}));
        assert!(msg.contains("you sent \"audio\": true"), "{msg}");
        let e = ok(m, json!({"off_peak": true, "audio": false}));
        assert!(e.off_peak && !e.audio);
        ok(m, json!({"off_peak": false}));
    }
    ok("viduq2", json!({"off_peak": true}));
    let (.., reason, _) = one("viduq2", json!({"off_peak": true, "audio": true}));
    assert_eq!(reason, FieldReason::Conflict);
    // A catalog entry that can do both.
    let mut s = settings();
    s.models.get_mut("viduq3-pro").unwrap().off_peak_with_audio = true;
    assert!(validate(&body("viduq3-pro", json!({"off_peak": true})), &s).is_ok());
    // An ill-typed audio is reported once, not also as a conflict.
    let (.., reason, _) = one("viduq3-pro", json!({"off_peak": true, "audio": "false"}));
    assert_eq!(reason, FieldReason::WrongType);
}

#[test]
fn null_counts_as_absent_except_for_unknown_fields() {
    let e = ok(
        "viduq3-pro",
        json!({"duration": null, "resolution": null, "audio": null, "prompt": null, "seed": null, "meta_data": null}),
    );
    assert_eq!((e.duration, e.resolution, e.audio), (5, "720p", true));
    let r = validate(br#"{"model": null, "images": null}"#, &settings()).unwrap_err();
    assert_eq!(r.reason, Reason::FieldLacking);
    assert_eq!(
        r.fields
            .iter()
            .map(|f| (f.field.as_str(), f.reason))
            .collect::<Vec<_>>(),
        [
            ("model", FieldReason::Missing),
            ("images", FieldReason::Missing)
        ]
    );
    let (top, field, reason, msg) = one("viduq2", json!({"colour": null}));
    assert_eq!(
        (top, field.as_str(), reason),
        (Reason::FieldUnwanted, "colour", FieldReason::Unknown)
    );
    assert!(
        msg.starts_with("unknown field \"colour\": img2video accepts model, images, prompt"),
        "{msg}"
    );
}

#[test]
fn unknown_fields_are_rejected_or_stripped_per_config() {
    let b = body("viduq2", json!({"colour": "red", "size": 3}));
    let r = validate(&b, &settings()).unwrap_err();
    assert_eq!(r.reason, Reason::FieldUnwanted);
    assert!(
        r.message
            .starts_with("invalid fields: colour, size — unknown field \"colour\""),
        "{}",
        r.message
    );
    assert!(
        r.message.ends_with("(and 1 more in metadata.fields)"),
        "{}",
        r.message
    );
    let s = strip_settings();
    let v = validate(&b, &s).unwrap();
    assert_eq!(v.stripped, ["colour", "size"]);
    let shared = Bytes::from(b.clone());
    let fwd = v.forward_body(&shared, &[]);
    let fwd: Value = serde_json::from_slice(&fwd).unwrap();
    assert_eq!(fwd, json!({"model": "viduq2", "images": [IMG]}));
    assert!(v.needs_rewrite(&[]));
}

#[test]
fn a_known_field_sent_twice_is_refused() {
    let b = br#"{"model":"viduq2","images":["https://e.x/a.png"],"duration":5,"duration":6}"#;
    let r = validate(b, &settings()).unwrap_err();
    assert_eq!((r.reason, r.fields.len()), (Reason::FieldInvalid, 1));
    assert_eq!(
        (
            r.fields[0].field.as_str(),
            r.fields[0].reason,
            r.fields[0].message.as_str()
        ),
        (
            "duration",
            FieldReason::Duplicate,
            "duration appears 2 times: send it once"
        )
    );
    let b = br#"{"model":"viduq2","model":"viduq1","images":["https://e.x/a.png"],"prompt":"x"}"#;
    let r = validate(b, &settings()).unwrap_err();
    assert_eq!(r.fields.len(), 1, "{r:?}");
}

#[test]
fn escaped_keys_are_the_fields_they_spell() {
    let b = br#"{"model":"viduq2","images":["https://e.x/a.png"],"dur\u0061tion":7}"#;
    assert_eq!(validate(b, &settings()).unwrap().params.duration, 7);
}

#[test]
fn several_problems_are_all_reported_with_reason_precedence() {
    let s = settings();
    let cases: [(Value, Reason); 5] = [
        (
            json!({"images": [], "colour": 1, "duration": "5"}),
            Reason::FieldLacking,
        ),
        (
            json!({"model": "viduq2", "images": [], "colour": 1, "duration": "5"}),
            Reason::FieldItemCountOutOfRange,
        ),
        (
            json!({"model": "viduq2", "images": ["ftp://x/a.png"], "colour": 1, "duration": "5"}),
            Reason::FieldUnwanted,
        ),
        (
            json!({"model": "viduq2", "images": ["ftp://x/a.png"], "duration": "5"}),
            Reason::ImageFormatInvalid,
        ),
        (
            json!({"model": "viduq2", "images": [IMG], "duration": "5", "seed": -1}),
            Reason::FieldInvalid,
        ),
    ];
    for (v, top) in cases {
        let r = validate(&serde_json::to_vec(&v).unwrap(), &s).unwrap_err();
        assert_eq!(r.reason, top, "{v}");
    }
    let v = json!({"model": "viduq2", "images": [IMG], "prompt": "x".repeat(2001), "duration": 12,
                   "resolution": "4k", "seed": -1, "wm_position": 9, "movement_amplitude": "huge",
                   "payload": 3, "off_peak": "yes", "wm_url": "ftp://x", "meta_data": "{", "callback_url": "x",
                   "audio_type": "loud", "extra": true});
    let r = validate(&serde_json::to_vec(&v).unwrap(), &s).unwrap_err();
    let got: Vec<_> = r
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.reason))
        .collect();
    assert_eq!(r.reason, Reason::FieldUnwanted);
    assert_eq!(got.len(), 13, "{got:?}");
    for expected in [
        ("prompt", FieldReason::TooLong),
        ("duration", FieldReason::OutOfRange),
        ("resolution", FieldReason::NotAllowed),
        ("seed", FieldReason::OutOfRange),
        ("wm_position", FieldReason::OutOfRange),
        ("movement_amplitude", FieldReason::NotAllowed),
        ("payload", FieldReason::WrongType),
        ("off_peak", FieldReason::WrongType),
        ("wm_url", FieldReason::InvalidUrl),
        ("meta_data", FieldReason::InvalidJson),
        ("callback_url", FieldReason::InvalidUrl),
        ("audio_type", FieldReason::NotAllowed),
        ("extra", FieldReason::Unknown),
    ] {
        assert!(got.contains(&expected), "{expected:?} missing from {got:?}");
    }
    let r = check("viduq2", json!({"duration": 12, "resolution": "4k"})).unwrap_err();
    assert_eq!(
        r.message,
        "invalid fields: duration, resolution — viduq2 allows 1..=10 seconds, got 12 \
         (and 1 more in metadata.fields)"
    );
    assert_eq!(r.fields[0].message, "viduq2 allows 1..=10 seconds, got 12");
}

#[test]
fn violations_follow_body_order_with_missing_fields_first() {
    let b = br#"{"seed":-1,"images":["https://e.x/a.png"],"duration":"x","zzz":1}"#;
    let r = validate(b, &settings()).unwrap_err();
    let got: Vec<_> = r.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(got, ["model", "seed", "duration", "zzz"]);
    let b = br#"{"duration":"x","images":["https://e.x/a.png"]}"#;
    let r = validate(b, &settings()).unwrap_err();
    let got: Vec<_> = r.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(got, ["model", "duration"]);
}

#[test]
fn bodies_that_are_not_json_objects_are_bad_requests() {
    let s = settings();
    for b in [
        &b""[..],
        b"   ",
        b"[1,2]",
        b"\"text\"",
        b"null",
        b"{\"model\": ",
        b"{\"model\":\"viduq2\"} trailing",
        b"\xff\xfe{}",
        b"{'model': 'viduq2'}",
    ] {
        let r = validate(b, &s).unwrap_err();
        assert_eq!(r.reason, Reason::BadRequest, "{b:?}");
        assert!(r.fields.is_empty());
        assert!(r.message.contains("JSON object"), "{}", r.message);
    }
    let r = validate(b"\xff{}", &s).unwrap_err();
    assert!(r.message.starts_with("the body is not UTF-8"));
}

#[test]
fn estimates_follow_the_catalog_price_table() {
    let s = settings();
    let e = ok("viduq2", json!({}));
    assert_eq!(e.estimate(&s), 55); // 5 + 10 × 5
    assert_eq!(e.estimate_with_off_peak(&s, true), 28); // ceil(27.5)
    let e = ok("viduq2", json!({"is_rec": true, "off_peak": true}));
    assert_eq!(e.estimate(&s), 38);
    assert_eq!(e.estimate_with_off_peak(&s, false), 65);
    assert_eq!(ok("viduq1", json!({})).estimate(&s), 80);
    assert_eq!(
        ok("viduq3-pro", json!({"duration": 16, "resolution": "1080p"})).estimate(&s),
        384
    );
}

#[test]
fn defaulted_lists_the_fields_the_table_defaults_that_the_body_left_out() {
    assert_eq!(
        ok("viduq2", json!({})).defaulted,
        [
            "duration",
            "seed",
            "resolution",
            "movement_amplitude",
            "off_peak",
            "watermark",
            "wm_position",
            "audio",
            "is_rec"
        ]
    );
    let e = ok(
        "viduq2",
        json!({"duration": 4, "seed": null, "bgm": true, "prompt": "x"}),
    );
    assert!(!e.defaulted.contains(&"duration") && e.defaulted.contains(&"seed"));
    assert!(!e.defaulted.contains(&"bgm") && !e.defaulted.contains(&"prompt"));
}

#[test]
fn the_effective_model_is_the_catalog_entry_it_was_validated_against() {
    let e = ok("viduq3-pro", json!({}));
    assert!(std::ptr::eq(e.model.spec(), &BUILT_IN.models["viduq3-pro"]));
    assert_eq!(
        e.resolution,
        BUILT_IN.models["viduq3-pro"].default_resolution
    );
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(
        (&v["model"], &v["resolution"]),
        (&json!("viduq3-pro"), &json!("720p"))
    );
    assert!(v.get("price").is_none());
}

/// A catalog entry configuration validation would refuse (a resolution without a price) never estimates 0: the
/// resolution is not offered.
#[test]
fn a_resolution_without_a_price_is_not_offered() {
    let mut s = settings();
    let spec = s.models.get_mut("viduq2").unwrap();
    spec.credits.per_second.remove("1080p");
    let b = body("viduq2", json!({"resolution": "1080p"}));
    let r = validate(&b, &s).unwrap_err();
    assert_eq!(
        (r.fields[0].field.as_str(), r.fields[0].reason),
        ("resolution", FieldReason::NotAllowed)
    );
    let b = body("viduq2", json!({}));
    assert_eq!(validate(&b, &s).unwrap().params.estimate(&s), 55);
}

// --- properties ----------------------------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("viduq2"),
                Just("viduq1"),
                Just("viduq3-pro"),
                Just("540p"),
                Just("1080p"),
                Just("auto"),
                Just("https://e.x/a.png"),
                Just("data:image/png;base64,iVBORw0KGgo="),
                Just("{}"),
                Just("5"),
                Just("data:image/png;base64,"),
                Just("http://"),
                Just("true")
            ]
            .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(field_names().collect::<Vec<_>>()).prop_map(str::to_owned),
            1 => ".{0,8}",
        ]
    }

    fn assert_sane(body: &[u8], s: &Settings) {
        match validate(body, s) {
            Ok(v) => {
                assert!(s.models.contains_key(v.params.model.name()));
                let _ = v.params.estimate(s);
            }
            Err(r) => {
                assert!(!r.message.is_empty());
                assert!(
                    r.reason == Reason::BadRequest || !r.fields.is_empty(),
                    "{r:?}"
                );
                for f in &r.fields {
                    assert!(!f.field.is_empty() || f.reason == FieldReason::Unknown);
                    assert!(!f.message.is_empty());
                }
            }
        }
    }

    /// `images[0]` values for the streamed-body property: short and long, valid and not, some JSON-escaped.
    fn image_texts() -> Vec<String> {
        let mut png = test_images::png(1920, 1080);
        png.extend(std::iter::repeat_n(0x5Au8, 80_000));
        let long = test_images::data_uri("image/png", &png);
        let mut bad = long.clone().into_bytes();
        bad[70_000] = b'*';
        vec![
            serde_json::to_string(&long).unwrap(),
            serde_json::to_string(&long).unwrap().replace('/', "\\/"),
            serde_json::to_string(&String::from_utf8(bad).unwrap()).unwrap(),
            serde_json::to_string(&test_images::data_uri(
                "image/png",
                &test_images::png(500, 100),
            ))
            .unwrap(),
            serde_json::to_string(&test_images::data_uri("image/jpeg", &png)).unwrap(),
            r#""https://e.x/a.png""#.into(),
            r#""https:\/\/e.x\/a.png""#.into(),
            format!("\"https://e.x/{}\"", "a".repeat(70_000)),
            r#""""#.into(),
            "5".into(),
        ]
    }

    /// The body's members as text, `images` among them at `at`, separated by `ws`.
    fn body_text(members: &[(String, Value)], images: &str, at: usize, ws: &str) -> Vec<u8> {
        let mut parts: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("{}{ws}:{ws}{v}", Value::String(k.clone())))
            .collect();
        parts.insert(
            at.min(parts.len()),
            format!("\"images\":{ws}[{ws}{images}{ws}]"),
        );
        format!("{{{ws}{}{ws}}}", parts.join(&format!("{ws},{ws}"))).into_bytes()
    }

    fn verdicts_agree(
        whole: &Result<Validated<'_>, Rejection>,
        streamed: &Result<Validated<'_>, Rejection>,
    ) {
        match (whole, streamed) {
            (Ok(a), Ok(b)) => {
                assert_eq!(format!("{:?}", a.params), format!("{:?}", b.params));
                assert_eq!(a.image, b.image);
                assert_eq!(a.stripped, b.stripped);
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.reason, b.reason, "{a:?} / {b:?}");
                if a.reason != Reason::BadRequest {
                    assert_eq!(format!("{a:?}"), format!("{b:?}"));
                }
            }
            _ => panic!("the verdicts differ: whole {whole:?}, streamed {streamed:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            assert_sane(&bytes, &settings());
        }

        #[test]
        fn arbitrary_json_ish_text_never_panics(text in r#"[{}\[\]",:0-9a-z\\ .eE+-]{0,80}"#) {
            assert_sane(text.as_bytes(), &settings());
        }

        #[test]
        fn arbitrary_objects_never_panic_in_either_unknown_field_mode(
            members in prop::collection::vec((key(), json_value()), 0..10),
            strip in any::<bool>(),
        ) {
            let mut s = settings();
            if strip {
                s.validation.unknown_fields = UnknownFields::Strip;
            }
            let obj: serde_json::Map<String, Value> = members.into_iter().collect();
            let body = serde_json::to_vec(&Value::Object(obj)).unwrap();
            assert_sane(&body, &s);
        }

        #[test]
        fn arbitrary_values_at_every_known_field_never_panic(field in key(), value in json_value()) {
            let mut v = json!({"model": "viduq3-pro", "images": ["https://e.x/a.png"]});
            v[field.as_str()] = value;
            assert_sane(&serde_json::to_vec(&v).unwrap(), &settings());
        }

        #[test]
        fn a_body_scanned_in_pieces_gets_the_whole_bodys_verdict_and_forwards_the_same_object(
            members in prop::collection::vec((key(), json_value()), 0..6),
            image in 0usize..10,
            at in 0usize..6,
            ws in prop::sample::select(vec!["", " ", "\n\t "]),
            pieces in prop::collection::vec(1usize..40_000, 1..5),
            strip in any::<bool>(),
            off_peak in any::<bool>(),
            with_model in any::<bool>(),
        ) {
            let mut members = members;
            if with_model {
                // Often a valid body (the other members are random), so that forwarding is checked too.
                members.retain(|(k, _)| k != "model" && k != "images");
                members.insert(0, ("model".into(), json!("viduq2")));
                members.truncate(2);
            }
            check_streamed(&members, image, at, ws, &pieces, strip, off_peak);
        }
    }

    #[test]
    fn valid_bodies_scanned_in_pieces_are_forwarded_as_the_whole_body_would_be() {
        let members = vec![
            ("model".to_owned(), json!("viduq2")),
            ("prompt".to_owned(), json!("a \"cat\"")),
            ("off_peak".to_owned(), json!(false)),
        ];
        let mut valid = 0;
        for image in 0..image_texts().len() {
            for at in 0..4 {
                for (pieces, off_peak) in [(&[1_000_000][..], false), (&[7, 4096][..], true)] {
                    valid += usize::from(check_streamed(
                        &members, image, at, " ", pieces, false, off_peak,
                    ));
                }
            }
        }
        assert_eq!(
            valid, 24,
            "4 valid images × 3 positions before off_peak × 2 splits"
        );
    }

    /// The property: the streamed verdict is the whole body's, and what goes out is the whole body's forward.
    /// True when the body was valid and streamed.
    fn check_streamed(
        members: &[(String, Value)],
        image: usize,
        at: usize,
        ws: &str,
        pieces: &[usize],
        strip: bool,
        off_peak: bool,
    ) -> bool {
        let mut s = settings();
        if strip {
            s.validation.unknown_fields = UnknownFields::Strip;
        }
        let images = &image_texts()[image];
        let body = body_text(members, images, at, ws);
        let whole = validate(&body, &s);
        let holds = crate::validate::scan::Holds {
            callback_url: false,
            off_peak: true,
            unknown: strip,
        };
        let (scanned, sent) = crate::validate::scan::tests::scan_holding(&body, pieces, holds);
        if sent.is_empty() {
            // Nothing went out: the skeleton is the whole body, forwarded as such.
            assert_eq!(scanned.skeleton, body);
            return false;
        }
        let streamed = validate_scanned(&scanned, &s);
        verdicts_agree(&whole, &streamed);
        if let (Ok(w), Ok(v)) = (&whole, &streamed) {
            let set = if off_peak {
                vec![("off_peak", Value::Bool(true))]
            } else {
                vec![]
            };
            let growth =
                crate::forward::rewrite::streamed_growth(&[("off_peak", Value::Bool(true))]);
            let room = body.len() + growth - sent.len();
            let tail = v
                .streamed_tail(&set, &[], scanned.images_end, room)
                .expect("the tail fits its room");
            let mut sent = sent.clone();
            sent.extend_from_slice(&tail);
            assert_eq!(sent.len(), body.len() + growth);
            let expected = w.forward_body_without(&Bytes::copy_from_slice(&body), &set, &[]);
            if expected == body {
                // Unchanged: the caller's bytes, then spaces up to the declared length.
                assert_eq!(&sent[..body.len()], &body[..]);
                assert!(sent[body.len()..].iter().all(|&b| b == b' '));
            }
            let sent: Value = serde_json::from_slice(&sent).unwrap();
            let expected: Value = serde_json::from_slice(&expected).unwrap();
            assert_eq!(sent, expected);
            true
        } else {
            false
        }
    }
}
