//! Micro-benchmark of `validate::validate`: a small request and a ~15 MB data-URI request; and of the same 15 MB
//! body read as it arrives (`validate::scan::BodyScanner`, in the 64 KiB pieces a socket read gives, then the
//! skeleton validated), which is what a large create costs the gateway since it is forwarded while checked.
//!
//! Run: `cargo bench --bench validate`. The 15 MB case measures the whole check — UTF-8 and JSON scan of the
//! body, base64 alphabet scan of the image, header-prefix decode — which must stay far below a network round trip
//! and must not grow with a full decode of the image.

use std::hint::black_box;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vidu_gateway::config::{BUILTIN_CONFIG, Origin, Settings, load_from_str};
use vidu_gateway::forward::rewrite::rewrite;
use vidu_gateway::validate::scan::{BodyScanner, Holds};
use vidu_gateway::validate::{validate, validate_scanned};

fn settings() -> Settings {
    match load_from_str(BUILTIN_CONFIG, Origin::Builtin, Default::default()) {
        Ok(loaded) => loaded.settings,
        Err(e) => panic!("built-in config: {e}"),
    }
}

/// A PNG signature and IHDR (1920×1080) followed by filler: a realistic header, `total` bytes long.
fn png_bytes(total: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    out.extend_from_slice(&1920u32.to_be_bytes());
    out.extend_from_slice(&1080u32.to_be_bytes());
    out.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    let mut x: u32 = 0x9E37_79B9;
    while out.len() < total {
        // xorshift filler: base64 of it uses the whole alphabet, like compressed image data.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(total);
    out
}

fn bench(c: &mut Criterion) {
    let s = settings();

    let small = br#"{"model":"viduq3-pro","images":["https://example.com/first-frame.png"],"prompt":"A cat walks along the beach at sunset","duration":8,"resolution":"1080p","audio":false,"off_peak":true,"seed":42,"movement_amplitude":"auto","meta_data":"{\"Label\":\"team-a\"}","callback_url":"https://team.example.com/vidu/callback"}"#;
    assert!(validate(small, &s).is_ok());

    // ~15 MB body: 11.25 MB of image → 15 MB of base64.
    let image = base64::engine::general_purpose::STANDARD.encode(png_bytes(11_250_000));
    let large = format!(
        r#"{{"model":"viduq2","images":["data:image/png;base64,{image}"],"prompt":"A cat","duration":5}}"#
    )
    .into_bytes();
    assert!(validate(&large, &s).is_ok());
    let mut scanner = BodyScanner::new(Holds::default(), large.len());
    for piece in large.chunks(64 * 1024) {
        scanner.feed(piece);
    }
    assert!(validate_scanned(&scanner.finish(), &s).is_ok());

    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("small", |b| {
        b.iter(|| validate(black_box(small), &s).is_ok())
    });
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.sample_size(20);
    g.bench_function("data_uri_15MB", |b| {
        b.iter(|| validate(black_box(&large), &s).is_ok())
    });
    // As a streamed create reads it: pieces of 64 KiB through the scanner, then the skeleton's validation.
    g.bench_function("data_uri_15MB_streamed", |b| {
        b.iter(|| {
            let mut scanner = BodyScanner::new(Holds::default(), large.len());
            let mut forwarded = 0;
            for piece in black_box(&large).chunks(64 * 1024) {
                forwarded += scanner.feed(piece).len();
            }
            let scanned = scanner.finish();
            (forwarded, validate_scanned(&scanned, &s).is_ok())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rewrite");
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.sample_size(20);
    g.bench_function("set_off_peak_15MB", |b| {
        b.iter(|| {
            rewrite(
                black_box(&large),
                &[("off_peak", serde_json::json!(true))],
                &[],
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
