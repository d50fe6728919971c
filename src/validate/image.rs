//! Checks of `images[0]` (an http(s) URL or a base64 data URI) without fetching or decoding the whole image.
//!
//! What is accepted (Vidu's img2video page):
//! - an absolute `http://` or `https://` URL with a host, without spaces or control characters. The gateway never
//!   fetches it (it fetches no caller-supplied URL): Vidu does, and reports `ImageDownloadFailure` itself.
//! - `data:image/<png|jpeg|jpg|webp>;base64,<data>` (scheme and media type case-insensitive, no other
//!   parameters), where `<data>` is padded standard base64 (`A–Z a–z 0–9 + /`, `=` only as the last one or two
//!   characters, length a multiple of 4). Whitespace and line breaks inside the base64 are refused (Vidu's examples
//!   send one unbroken string; MIME-style line-wrapped base64 is a common client bug), and so is the URL-safe
//!   alphabet (`-`, `_`).
//!
//! For a data URI, the whole base64 text is scanned once (no allocation), then only a prefix is decoded: 64 KiB of
//! base64 first (48 KiB of image), doubled while the header parser needs more (a JPEG's SOF marker can follow large
//! metadata segments), up to [`MAX_HEADER_BASE64`] (3 MiB of image). The real format comes from the magic bytes
//! (a PNG declared as `image/jpeg` is refused, naming the real format), the dimensions from the header
//! (`imagesize`), and:
//! - the aspect ratio must lie within 1:4..=4:1, exactly: `max(w, h) <= 4 × min(w, h)` in integers;
//! - the decoded size, computed from the base64 length (`len / 4 × 3 − padding`), must be at most
//!   [`MAX_DECODED_BYTES`] = 50 MiB (50 × 1024 × 1024 bytes; Vidu says "50 MB"). A body that large cannot pass the
//!   20 MiB body limit anyway; the rule is kept so the check holds if that limit is raised.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;

use super::members::preview;

/// Largest decoded image accepted: 50 MiB (Vidu: "max image size 50 MB").
pub const MAX_DECODED_BYTES: u64 = 50 * 1024 * 1024;

/// The longer side may be at most this many times the shorter one (1:4..=4:1).
pub const MAX_ASPECT: u64 = 4;

/// Base64 characters decoded first to read the header (→ 48 KiB of image).
const FIRST_HEADER_BASE64: usize = 64 * 1024;

/// Most base64 characters ever decoded to find the dimensions (→ 3 MiB of image).
pub const MAX_HEADER_BASE64: usize = 4 * 1024 * 1024;

/// What `images[0]` turned out to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageInfo {
    /// An http(s) URL; Vidu fetches it (the gateway never does).
    Url,
    /// An inline image, checked from its header.
    DataUri {
        format: ImageFormat,
        width: u32,
        height: u32,
        /// Size of the decoded image, from the base64 length.
        decoded_bytes: u64,
    },
}

/// The image formats Vidu accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    /// The media type to declare for this format.
    pub fn media_type(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }

    fn name(self) -> &'static str {
        match self {
            ImageFormat::Png => "PNG",
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Webp => "WebP",
        }
    }
}

const ACCEPTED: &str =
    "an http(s) URL or a data URI \"data:image/<png|jpeg|jpg|webp>;base64,<data>\"";

/// The scheme (`http`, `data`, …) is looked for in this many first characters: schemes are short, and a long
/// value is then classified from its start alone (which a streamed image needs).
const SCHEME_WINDOW: usize = 64;

/// Longest image URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 64 * 1024;

/// Checks one image value; the error says what to change.
pub fn check_image(value: &str) -> Result<ImageInfo, String> {
    match start_of(value) {
        Start::Url => check_url(value).map(|()| ImageInfo::Url),
        Start::Data { declared, data_at } => check_data(declared, &value.as_bytes()[data_at..]),
        Start::Refused(message) => Err(message),
    }
}

/// What an image value is, from its first characters.
enum Start {
    /// An http(s) URL (checked whole).
    Url,
    /// A data URI whose header declares `declared`; its base64 data starts at byte `data_at`.
    Data {
        declared: ImageFormat,
        data_at: usize,
    },
    /// Neither, or a data URI with a bad header: the answer, whatever follows.
    Refused(String),
}

/// Classifies a value from its first `SCHEME_WINDOW` + 64 characters (a data URI's header must end within 64
/// characters of `data:`). For a value longer than that, `value` may be just its start.
fn start_of(value: &str) -> Start {
    let scheme_end = value
        .bytes()
        .take(SCHEME_WINDOW)
        .position(|b| b == b':')
        .filter(|&i| {
            i > 0
                && value[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        });
    let Some(scheme_end) = scheme_end else {
        return Start::Refused(no_scheme_message(value));
    };
    let scheme = &value[..scheme_end];
    if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
        Start::Url
    } else if scheme.eq_ignore_ascii_case("data") {
        match data_uri_header(&value[scheme_end + 1..]) {
            Ok((declared, comma)) => Start::Data {
                declared,
                data_at: scheme_end + 1 + comma + 1,
            },
            Err(message) => Start::Refused(message),
        }
    } else {
        Start::Refused(format!(
            "a \"{}:\" URL is not accepted: send {ACCEPTED}",
            preview(scheme, 16)
        ))
    }
}

fn no_scheme_message(value: &str) -> String {
    let hint = if value.starts_with("iVBOR") {
        " (this looks like bare base64 PNG data: prefix it with \"data:image/png;base64,\")"
    } else if value.starts_with("/9j/") {
        " (this looks like bare base64 JPEG data: prefix it with \"data:image/jpeg;base64,\")"
    } else if value.starts_with("UklGR") {
        " (this looks like bare base64 WebP data: prefix it with \"data:image/webp;base64,\")"
    } else if value.is_empty() {
        " (got an empty string)"
    } else {
        ""
    };
    format!("expected {ACCEPTED}{hint}")
}

fn url_too_long(len: usize) -> String {
    format!(
        "the image URL is {len} bytes long; at most {MAX_URL_BYTES} are accepted: send a shorter URL (or the image \
         as a data URI)"
    )
}

fn check_url(value: &str) -> Result<(), String> {
    if value.len() > MAX_URL_BYTES {
        return Err(url_too_long(value.len()));
    }
    if let Some(pos) = value.bytes().position(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "the image URL contains a space or control character at position {pos}: percent-encode it (e.g. %20)"
        ));
    }
    match url::Url::parse(value) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        Ok(_) => Err("the image URL has no host: send an absolute http(s) URL such as https://example.com/a.png".into()),
        Err(e) => Err(format!(
            "the image URL does not parse ({e}): send an absolute http(s) URL such as https://example.com/a.png"
        )),
    }
}

/// The header of a data URI (`rest` is what follows `data:`): the declared format and the position of the comma.
fn data_uri_header(rest: &str) -> Result<(ImageFormat, usize), String> {
    // The header is short; a missing comma within the first 64 bytes means there is no proper header.
    let Some(comma) = rest.bytes().take(64).position(|b| b == b',') else {
        return Err(format!(
            "the data URI has no \"<media type>;base64,\" header: send {ACCEPTED}"
        ));
    };
    let header = &rest[..comma];
    let mut parts = header.split(';');
    let media = parts.next().unwrap_or_default();
    let params: Vec<&str> = parts.collect();
    let Some(subtype) = media
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("image/"))
        .map(|_| &media[6..])
    else {
        let shown = if media.is_empty() {
            "no media type"
        } else {
            media
        };
        return Err(format!(
            "data:{} is not an image: send {ACCEPTED}",
            preview(shown, 32)
        ));
    };
    let declared = match subtype.to_ascii_lowercase().as_str() {
        "png" => ImageFormat::Png,
        "jpeg" | "jpg" => ImageFormat::Jpeg,
        "webp" => ImageFormat::Webp,
        _ => {
            return Err(format!(
                "image/{} is not accepted: Vidu takes png, jpeg (jpg) or webp images",
                preview(subtype, 16)
            ));
        }
    };
    match params.as_slice() {
        [b64] if b64.eq_ignore_ascii_case("base64") => Ok((declared, comma)),
        [] => Err(format!(
            "the data URI lacks the \";base64\" marker: only base64 data is accepted, as in \"data:{};base64,<data>\"",
            declared.media_type()
        )),
        _ => Err(format!(
            "the data URI header \"{}\" has parameters other than \";base64\": send \"data:{};base64,<data>\"",
            preview(header, 48),
            declared.media_type()
        )),
    }
}

/// A data URI's base64 `data`, all of it at hand.
fn check_data(declared: ImageFormat, data: &[u8]) -> Result<ImageInfo, String> {
    let padding = check_base64(data)?;
    conclude_data(declared, data.len(), padding, || read_header(data))
}

/// The checks after the base64 scan, in order: decoded size, header (format and dimensions), declared format,
/// aspect ratio. `header` is only asked for when the size passes.
fn conclude_data(
    declared: ImageFormat,
    data_len: usize,
    padding: u64,
    header: impl FnOnce() -> Result<(ImageFormat, u32, u32), String>,
) -> Result<ImageInfo, String> {
    let decoded_bytes = decoded_size(data_len as u64, padding);
    if decoded_bytes > MAX_DECODED_BYTES {
        return Err(format!(
            "the image is {decoded_bytes} bytes once decoded; the limit is {MAX_DECODED_BYTES} bytes (50 MiB): send a smaller image or a URL"
        ));
    }
    let (format, width, height) = header()?;
    if format != declared {
        return Err(format!(
            "declared {} but the data is a {} image: send \"data:{};base64,...\" (or convert the image)",
            declared.media_type(),
            format.name(),
            format.media_type()
        ));
    }
    check_dimensions(width, height)?;
    Ok(ImageInfo::DataUri {
        format,
        width,
        height,
        decoded_bytes,
    })
}

/// Decoded size of `base64_len` characters of padded base64 ending in `padding` `=` characters.
pub fn decoded_size(base64_len: u64, padding: u64) -> u64 {
    (base64_len / 4 * 3).saturating_sub(padding)
}

/// `true` for the standard base64 alphabet (not `=`). Branch-free so that the scan vectorises.
#[inline(always)]
fn is_b64(b: u8) -> bool {
    (b.wrapping_sub(b'A') < 26)
        | (b.wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b'+')
        | (b == b'/')
}

/// Checks that `data` is padded standard base64 without allocating; returns the number of `=` at the end.
pub fn check_base64(data: &[u8]) -> Result<u64, String> {
    let mut scan = Base64Scan::default();
    scan.feed(data);
    scan.finish()
}

/// [`check_base64`] one piece at a time: the same verdict for the same bytes however they are split.
#[derive(Debug, Default)]
pub struct Base64Scan {
    len: usize,
    /// The first byte that is not base64 in the part before the final run of `=` (position, byte).
    first_bad: Option<(usize, u8)>,
    /// Where the run of `=` at the end of what was seen so far starts.
    padding_from: Option<usize>,
}

impl Base64Scan {
    pub fn feed(&mut self, data: &[u8]) {
        // Fast path (vectorised): a piece of plain alphabet, or anything after the verdict is known.
        if self.first_bad.is_some()
            || (self.padding_from.is_none()
                && data
                    .chunks(4096)
                    .all(|chunk| chunk.iter().fold(true, |ok, &b| ok & is_b64(b))))
        {
            self.len += data.len();
            return;
        }
        for (i, &b) in data.iter().enumerate() {
            let at = self.len + i;
            if b == b'=' {
                self.padding_from.get_or_insert(at);
                continue;
            }
            // A `=` followed by anything else is inside the data.
            if let Some(pad) = self.padding_from.take() {
                self.first_bad = Some((pad, b'='));
                break;
            }
            if !is_b64(b) {
                self.first_bad = Some((at, b));
                break;
            }
        }
        self.len += data.len();
    }

    /// The number of `=` at the end, or what is wrong (the first problem, as [`check_base64`] reports it).
    pub fn finish(&self) -> Result<u64, String> {
        if self.len == 0 {
            return Err("the data URI holds no base64 data after the comma".into());
        }
        if let Some((pos, b)) = self.first_bad {
            return Err(match b {
                b'\n' | b'\r' | b' ' | b'\t' => format!(
                    "the base64 data has a line break or space at position {pos}: send base64 without line breaks or spaces"
                ),
                b'-' | b'_' => format!(
                    "the base64 data uses the URL-safe alphabet ('{}' at position {pos}): send standard base64 (with + and /)",
                    b as char
                ),
                b'=' => format!(
                    "the base64 data has '=' at position {pos}: '=' may only pad the end (is this several base64 strings joined?)"
                ),
                b'\\' => {
                    format!("the base64 data has a backslash at position {pos}: send plain base64")
                }
                _ if b.is_ascii_graphic() => format!(
                    "the base64 data has the invalid character '{}' at position {pos}: send standard base64",
                    b as char
                ),
                _ => format!(
                    "the base64 data has the invalid byte 0x{b:02x} at position {pos}: send standard base64"
                ),
            });
        }
        let padding = self.padding_from.map_or(0, |from| self.len - from);
        if padding > 2 {
            return Err(format!(
                "the base64 data ends in {padding} '=' characters; padding is at most 2"
            ));
        }
        if !self.len.is_multiple_of(4) {
            return Err(format!(
                "the base64 data is {} characters long, not a multiple of 4: it is truncated or unpadded; send padded base64",
                self.len
            ));
        }
        Ok(padding as u64)
    }
}

/// Lenient about the unused bits of the last symbol; strict about everything else (checked by `check_base64`).
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type Header = Result<(ImageFormat, u32, u32), String>;

/// Decodes growing prefixes of `data` (already checked base64) until the header yields format and dimensions:
/// `FIRST_HEADER_BASE64` characters, doubled while the header parser needs more, up to `MAX_HEADER_BASE64`.
fn read_header(data: &[u8]) -> Header {
    let mut want = FIRST_HEADER_BASE64;
    loop {
        let end = want.min(data.len());
        if let Some(header) = header_step(&data[..end], end == data.len()) {
            return header;
        }
        want = grow(want);
    }
}

/// The next prefix length to read a header from. `header_step` decides at `MAX_HEADER_BASE64` at the latest.
fn grow(want: usize) -> usize {
    want.saturating_mul(2).min(MAX_HEADER_BASE64)
}
/// One step of [`read_header`]: the header from `prefix` (a prefix of the data whose length is one of the steps,
/// or all of it when `whole`), or `None` when a longer prefix is needed.
fn header_step(prefix: &[u8], whole: bool) -> Option<Header> {
    let decoded = match ENGINE.decode(prefix) {
        Ok(d) => d,
        Err(e) => {
            return Some(Err(format!(
                "the base64 data does not decode ({e}): send standard base64"
            )));
        }
    };
    let format = match detect_format(&decoded) {
        Ok(f) => f,
        Err(Some(msg)) => return Some(Err(msg)),
        Err(None) if !whole && decoded.len() < 16 && prefix.len() < MAX_HEADER_BASE64 => {
            return None;
        }
        Err(None) => {
            return Some(Err(
                "the image data is too short to be a PNG, JPEG or WebP image".into(),
            ));
        }
    };
    match imagesize::blob_size(&decoded) {
        Ok(size) => {
            let w = u32::try_from(size.width).unwrap_or(u32::MAX);
            let h = u32::try_from(size.height).unwrap_or(u32::MAX);
            Some(Ok((format, w, h)))
        }
        Err(imagesize::ImageError::IoError(_)) if !whole && prefix.len() < MAX_HEADER_BASE64 => {
            None
        }
        Err(imagesize::ImageError::IoError(_)) if !whole => Some(Err(format!(
            "the {} image's dimensions are not within its first {} bytes: strip large metadata (EXIF, ICC) from the image",
            format.name(),
            MAX_HEADER_BASE64 / 4 * 3
        ))),
        Err(_) => Some(Err(format!(
            "the {} image's header is truncated or corrupted: its dimensions cannot be read; re-encode the image",
            format.name()
        ))),
    }
}

/// [`check_image`] over a value that arrives in pieces (a request body being forwarded while it is read): the same
/// verdict for the same bytes however they are split, holding at most [`MAX_URL_BYTES`] of the value, plus the
/// start of a data URI's image while its header is being read (64 KiB of base64 for common images, at most
/// [`MAX_HEADER_BASE64`]).
#[derive(Debug, Default)]
pub struct ImageScan {
    /// The value while it is at most `MAX_URL_BYTES` long (then [`check_image`] decides on all of it).
    head: Vec<u8>,
    len: usize,
    long: Option<Long>,
}

/// A value longer than `MAX_URL_BYTES`.
#[derive(Debug)]
enum Long {
    /// An http(s) URL, too long whatever follows.
    Url,
    /// Refused by its start (no scheme, another scheme, a bad data URI header), whatever follows.
    Refused(String),
    Data(DataScan),
}

/// A long data URI's base64 data, scanned as it arrives.
#[derive(Debug)]
struct DataScan {
    declared: ImageFormat,
    base64: Base64Scan,
    /// The start of the data, kept until `header` is known.
    prefix: Vec<u8>,
    /// The next prefix length to read the header from (a step of [`read_header`]).
    next: usize,
    header: Option<Header>,
}

impl DataScan {
    fn feed(&mut self, data: &[u8]) {
        self.base64.feed(data);
        let mut rest = data;
        while self.header.is_none() {
            // Keep one byte past the step: it shows that the step's prefix is not the whole data.
            let take = (self.next + 1)
                .saturating_sub(self.prefix.len())
                .min(rest.len());
            self.prefix.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.prefix.len() <= self.next {
                break;
            }
            self.header = header_step(&self.prefix[..self.next], false);
            if self.header.is_none() {
                self.next = grow(self.next);
            }
        }
        if self.header.is_some() && self.prefix.capacity() > 0 {
            self.prefix = Vec::new();
        }
    }

    fn finish(self) -> Result<ImageInfo, String> {
        let padding = self.base64.finish()?;
        let (prefix, header) = (self.prefix, self.header);
        conclude_data(self.declared, self.base64.len, padding, || {
            // Not decided by a step: the prefix is all the data.
            header.unwrap_or_else(|| read_header(&prefix))
        })
    }
}

impl ImageScan {
    /// The next bytes of the value (JSON escapes already decoded).
    pub fn feed(&mut self, bytes: &[u8]) {
        let before = self.len;
        self.len += bytes.len();
        match &mut self.long {
            Some(Long::Data(data)) => return data.feed(bytes),
            Some(Long::Url | Long::Refused(_)) => return,
            None => {}
        }
        if self.len <= MAX_URL_BYTES {
            self.head.extend_from_slice(bytes);
            return;
        }
        // The value just outgrew a URL: decide what it is from its start.
        let split = MAX_URL_BYTES - before;
        self.head.extend_from_slice(&bytes[..split]);
        let head = std::mem::take(&mut self.head);
        let window = &head[..head.len().min(SCHEME_WINDOW + 64 + 8)];
        let start = match std::str::from_utf8(window) {
            Ok(text) => start_of(text),
            // Cut inside a character, or not UTF-8 (the body is refused for that before this matters).
            Err(e) => start_of(std::str::from_utf8(&window[..e.valid_up_to()]).unwrap_or("")),
        };
        self.long = Some(match start {
            Start::Url => Long::Url,
            Start::Refused(message) => Long::Refused(message),
            Start::Data { declared, data_at } => {
                let mut data = DataScan {
                    declared,
                    base64: Base64Scan::default(),
                    prefix: Vec::new(),
                    next: FIRST_HEADER_BASE64,
                    header: None,
                };
                data.feed(&head[data_at.min(head.len())..]);
                data.feed(&bytes[split..]);
                Long::Data(data)
            }
        });
    }

    /// The verdict [`check_image`] gives the whole value.
    pub fn finish(self) -> Result<ImageInfo, String> {
        match self.long {
            Some(Long::Url) => Err(url_too_long(self.len)),
            Some(Long::Refused(message)) => Err(message),
            Some(Long::Data(data)) => data.finish(),
            None => match std::str::from_utf8(&self.head) {
                Ok(text) => check_image(text),
                Err(e) => Err(format!(
                    "images[0] is not UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                )),
            },
        }
    }
}

/// The real format from the magic bytes. `Err(None)`: too few bytes to tell; `Err(Some(msg))`: not accepted.
fn detect_format(bytes: &[u8]) -> Result<ImageFormat, Option<String>> {
    match imagesize::image_type(bytes) {
        Ok(imagesize::ImageType::Png) => {
            if bytes.len() < 16 {
                return Err(None);
            }
            if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || &bytes[12..16] != b"IHDR" {
                return Err(Some(
                    "the PNG data is corrupted: it lacks the PNG signature or IHDR header; re-encode the image".into(),
                ));
            }
            Ok(ImageFormat::Png)
        }
        Ok(imagesize::ImageType::Jpeg) => Ok(ImageFormat::Jpeg),
        Ok(imagesize::ImageType::Webp) => Ok(ImageFormat::Webp),
        _ if bytes.len() < 12 => Err(None),
        _ => {
            let what: Cow<'_, str> = if bytes.starts_with(b"GIF8") {
                "a GIF image".into()
            } else if bytes.starts_with(b"BM") {
                "a BMP image".into()
            } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
                "a TIFF image".into()
            } else if &bytes[4..8] == b"ftyp" {
                format!(
                    "an ISO media file (brand \"{}\", e.g. HEIC or AVIF)",
                    String::from_utf8_lossy(&bytes[8..12])
                )
                .into()
            } else {
                "not a PNG, JPEG or WebP image".into()
            };
            Err(Some(format!(
                "the data is {what}: Vidu takes png, jpeg or webp images; convert it"
            )))
        }
    }
}

/// Non-zero dimensions with an aspect ratio within 1:4..=4:1.
pub fn check_dimensions(width: u32, height: u32) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!(
            "the image header says {width}x{height}: an image needs a non-zero width and height"
        ));
    }
    let (long, short) = (u64::from(width.max(height)), u64::from(width.min(height)));
    if long > MAX_ASPECT * short {
        let (w, h) = if width >= height {
            (long as f64 / short as f64, 1.0)
        } else {
            (1.0, long as f64 / short as f64)
        };
        return Err(format!(
            "the image is {width}x{height}, an aspect ratio of {w:.2}:{h:.2}; Vidu accepts 1:4 to 4:1: crop or pad it"
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_images {
    //! Hand-built image headers (no image crate): enough bytes for `imagesize` and the magic-byte checks.

    use base64::Engine as _;

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(data);
        out.extend_from_slice(&h.finalize().to_be_bytes());
    }

    /// A PNG signature, an IHDR chunk (8-bit RGB) and IEND, with valid CRCs.
    pub fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    /// SOI, APP0 (JFIF), `filler` bytes of APP1 segments, SOF0 with the dimensions, EOI.
    pub fn jpeg_with_metadata(width: u16, height: u16, filler: usize) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8];
        out.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x10]);
        out.extend_from_slice(b"JFIF\0");
        out.extend_from_slice(&[1, 1, 0, 0, 1, 0, 1, 0, 0]);
        let mut left = filler;
        while left > 0 {
            let n = left.min(60_000);
            out.extend_from_slice(&[0xFF, 0xE1]);
            out.extend_from_slice(&((n + 2) as u16).to_be_bytes());
            out.extend(std::iter::repeat_n(0x20u8, n));
            left -= n;
        }
        out.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
        out.extend_from_slice(&height.to_be_bytes());
        out.extend_from_slice(&width.to_be_bytes());
        out.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        out.extend_from_slice(&[0xFF, 0xD9]);
        out
    }

    pub fn jpeg(width: u16, height: u16) -> Vec<u8> {
        jpeg_with_metadata(width, height, 0)
    }

    /// RIFF/WEBP with a VP8X chunk (extended format): 24-bit width−1 and height−1.
    pub fn webp_vp8x(width: u32, height: u32) -> Vec<u8> {
        let mut body = b"WEBPVP8X".to_vec();
        body.extend_from_slice(&10u32.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]);
        body.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
        body.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// RIFF/WEBP with a lossy VP8 chunk: frame tag, start code, 14-bit width and height.
    pub fn webp_vp8(width: u16, height: u16) -> Vec<u8> {
        let mut body = b"WEBPVP8 ".to_vec();
        body.extend_from_slice(&10u32.to_le_bytes());
        body.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
        body.extend_from_slice(&width.to_le_bytes());
        body.extend_from_slice(&height.to_le_bytes());
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    pub fn data_uri(media: &str, bytes: &[u8]) -> String {
        format!(
            "data:{media};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::test_images::*;
    use super::*;

    fn ok_dims(v: &str) -> (ImageFormat, u32, u32) {
        match check_image(v) {
            Ok(ImageInfo::DataUri {
                format,
                width,
                height,
                ..
            }) => (format, width, height),
            other => panic!("expected a data URI to pass, got {other:?}"),
        }
    }

    fn err(v: &str) -> String {
        check_image(v).expect_err("expected a refusal")
    }

    #[test]
    fn http_and_https_urls_pass_without_being_fetched() {
        for u in [
            "https://example.com/a.png",
            "http://example.com:8080/x?y=1",
            "HTTPS://EXAMPLE.COM/A.PNG",
        ] {
            assert_eq!(check_image(u), Ok(ImageInfo::Url), "{u}");
        }
    }

    #[test]
    fn urls_without_a_host_or_with_spaces_are_refused() {
        assert!(err("https://").contains("host") || err("https://").contains("parse"));
        assert!(err("http://exa mple.com/a.png").contains("percent-encode"));
        assert!(err("https://example.com/a\n.png").contains("control"));
    }

    #[test]
    fn other_schemes_are_refused_listing_what_is_accepted() {
        for v in [
            "ftp://example.com/a.png",
            "file:///etc/passwd",
            "s3://bucket/key.png",
            "javascript:alert(1)",
        ] {
            let m = err(v);
            assert!(m.contains("is not accepted"), "{v}: {m}");
            assert!(m.contains("data:image/<png|jpeg|jpg|webp>;base64"), "{m}");
        }
    }

    #[test]
    fn non_image_and_non_base64_data_uris_are_refused() {
        assert!(err("data:text/plain;base64,aGVsbG8=").contains("is not an image"));
        assert!(err("data:image/gif;base64,R0lGODlh").contains("image/gif is not accepted"));
        assert!(err(&format!("data:image/png,{}", "x")).contains(";base64"));
        assert!(err("data:image/png;charset=utf-8;base64,AAAA").contains("parameters"));
        assert!(err("data:,hello").contains("is not an image"));
        assert!(err("data:image/png;base64").contains("header"));
        assert!(err("data:image/png;base64,").contains("no base64"));
    }

    #[test]
    fn bare_base64_gets_a_hint_to_add_the_prefix() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(png(10, 10));
        assert!(err(&b64).contains("data:image/png;base64,"));
        assert!(err("").contains("empty"));
    }

    #[test]
    fn png_jpeg_and_webp_at_exactly_4_to_1_and_1_to_4_pass() {
        assert_eq!(
            ok_dims(&data_uri("image/png", &png(400, 100))),
            (ImageFormat::Png, 400, 100)
        );
        assert_eq!(
            ok_dims(&data_uri("image/png", &png(100, 400))),
            (ImageFormat::Png, 100, 400)
        );
        assert_eq!(
            ok_dims(&data_uri("image/jpeg", &jpeg(400, 100))),
            (ImageFormat::Jpeg, 400, 100)
        );
        assert_eq!(
            ok_dims(&data_uri("image/jpg", &jpeg(100, 400))),
            (ImageFormat::Jpeg, 100, 400)
        );
        assert_eq!(
            ok_dims(&data_uri("image/webp", &webp_vp8x(400, 100))),
            (ImageFormat::Webp, 400, 100)
        );
        assert_eq!(
            ok_dims(&data_uri("image/webp", &webp_vp8(100, 400))),
            (ImageFormat::Webp, 100, 400)
        );
        assert_eq!(
            ok_dims(&data_uri("IMAGE/PNG", &png(1024, 768))),
            (ImageFormat::Png, 1024, 768)
        );
    }

    #[test]
    fn slightly_beyond_4_to_1_is_refused_in_every_format_and_orientation() {
        for (uri, dims) in [
            (data_uri("image/png", &png(401, 100)), "401x100"),
            (data_uri("image/png", &png(100, 401)), "100x401"),
            (data_uri("image/jpeg", &jpeg(401, 100)), "401x100"),
            (data_uri("image/jpeg", &jpeg(100, 401)), "100x401"),
            (data_uri("image/webp", &webp_vp8x(401, 100)), "401x100"),
            (data_uri("image/webp", &webp_vp8x(100, 1000)), "100x1000"),
            (data_uri("image/png", &png(1, 5)), "1x5"),
        ] {
            let m = err(&uri);
            assert!(m.contains(dims) && m.contains("1:4 to 4:1"), "{m}");
        }
    }

    #[test]
    fn zero_dimensions_are_refused() {
        assert!(err(&data_uri("image/png", &png(0, 10))).contains("non-zero"));
        assert!(err(&data_uri("image/jpeg", &jpeg(10, 0))).contains("non-zero"));
    }

    #[test]
    fn a_declared_format_that_is_not_the_real_one_is_refused_naming_the_real_one() {
        let m = err(&data_uri("image/webp", &png(100, 100)));
        assert!(
            m.contains("declared image/webp but the data is a PNG image"),
            "{m}"
        );
        assert!(m.contains("data:image/png;base64"), "{m}");
        let m = err(&data_uri("image/jpeg", &png(100, 100)));
        assert!(m.contains("is a PNG image"), "{m}");
        let m = err(&data_uri("image/png", &jpeg(100, 100)));
        assert!(m.contains("is a JPEG image"), "{m}");
        let m = err(&data_uri("image/png", &webp_vp8x(100, 100)));
        assert!(m.contains("is a WebP image"), "{m}");
    }

    #[test]
    fn other_real_formats_are_named() {
        let gif = b"GIF89a\x0a\x00\x0a\x00\x00\x00\x00\x00\x00\x00";
        assert!(err(&data_uri("image/png", gif)).contains("a GIF image"));
        let heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00";
        assert!(err(&data_uri("image/jpeg", heic)).contains("heic"));
        assert!(err(&data_uri("image/png", &[7u8; 40])).contains("not a PNG, JPEG or WebP"));
        assert!(err(&data_uri("image/png", &[0x89, b'P'])).contains("too short"));
    }

    #[test]
    fn truncated_or_corrupted_headers_are_refused() {
        let mut p = png(100, 100);
        p.truncate(18);
        assert!(err(&data_uri("image/png", &p)).contains("truncated or corrupted"));
        let mut j = jpeg(100, 100);
        j.truncate(24); // cut inside APP0's successor
        assert!(err(&data_uri("image/jpeg", &j)).contains("truncated or corrupted"));
        let mut bad_sig = png(100, 100);
        bad_sig[5] = b'X';
        assert!(err(&data_uri("image/png", &bad_sig)).contains("PNG signature"));
    }

    #[test]
    fn a_jpeg_whose_dimensions_follow_large_metadata_is_read_from_a_longer_prefix() {
        // 200 KB of APP1 before SOF0: beyond the first 48 KiB decoded, within the 3 MiB cap.
        let j = jpeg_with_metadata(300, 200, 200_000);
        assert_eq!(
            ok_dims(&data_uri("image/jpeg", &j)),
            (ImageFormat::Jpeg, 300, 200)
        );
        // SOF beyond the cap: refused with a message about metadata, and without decoding everything.
        let mut j = jpeg_with_metadata(300, 200, 3_300_000);
        j.extend(std::iter::repeat_n(0u8, 30));
        let m = err(&data_uri("image/jpeg", &j));
        assert!(m.contains("metadata"), "{m}");
    }

    #[test]
    fn corrupted_base64_is_refused_with_the_position() {
        let good = data_uri("image/png", &png(100, 100));
        let comma = good.find(',').unwrap();
        let mut s = good.clone().into_bytes();
        s[comma + 9] = b'*';
        let m = err(std::str::from_utf8(&s).unwrap());
        assert!(m.contains("'*' at position 8"), "{m}");

        let wrapped = format!("{}\n{}", &good[..comma + 20], &good[comma + 20..]);
        assert!(err(&wrapped).contains("without line breaks"));
        let spaced = format!("{} {}", &good[..comma + 20], &good[comma + 20..]);
        assert!(err(&spaced).contains("without line breaks"));
        let (head, data) = good.split_at(comma + 1);
        let urlsafe = format!("{head}{}", data.replace('/', "_").replace('+', "-"));
        if urlsafe != good {
            assert!(err(&urlsafe).contains("URL-safe"));
        }
        let truncated = &good[..good.len() - 1];
        let m = err(truncated);
        assert!(m.contains("multiple of 4") || m.contains("'='"), "{m}");
        let unpadded = good.trim_end_matches('=');
        if unpadded.len() != good.len() {
            assert!(err(unpadded).contains("multiple of 4"));
        }
        let inner_pad = format!("{}=AAA{}", &good[..comma + 8], &good[comma + 12..]);
        assert!(err(&inner_pad).contains("may only pad the end"));
        assert!(err("data:image/png;base64,AAAA===").contains("at most 2"));
        assert!(err("data:image/png;base64,AA\\/A").contains("backslash"));
        assert!(err("data:image/png;base64,AA\u{1}A").contains("0x01"));
    }

    #[test]
    fn urlsafe_characters_are_named() {
        assert!(check_base64(b"AB-_").unwrap_err().contains("URL-safe"));
        assert!(check_base64(b"AB_A").unwrap_err().contains("URL-safe"));
        assert_eq!(check_base64(b"AB+/"), Ok(0));
        assert_eq!(check_base64(b"AB=="), Ok(2));
        assert_eq!(check_base64(b"ABC="), Ok(1));
    }

    #[test]
    fn decoded_size_is_computed_from_the_base64_length() {
        assert_eq!(decoded_size(4, 0), 3);
        assert_eq!(decoded_size(4, 1), 2);
        assert_eq!(decoded_size(4, 2), 1);
        assert_eq!(decoded_size(0, 0), 0);
        // 50 MiB exactly: 69,905,068 chars with 1 padding → 52,428,800 bytes.
        let limit_chars = MAX_DECODED_BYTES.div_ceil(3) * 4;
        assert_eq!(decoded_size(limit_chars, 1), MAX_DECODED_BYTES);
        assert_eq!(decoded_size(limit_chars, 0), MAX_DECODED_BYTES + 1);
        assert!(decoded_size(70_000_000, 0) > MAX_DECODED_BYTES);
    }

    #[test]
    fn an_image_over_50_mib_decoded_is_refused_before_its_header_is_read() {
        // Built once (≈ 70 MB of 'A's); the size check fails without decoding any of it.
        let chars = (MAX_DECODED_BYTES / 3 + 1) * 4; // 52,428,801 bytes decoded
        let mut s = String::with_capacity(chars as usize + 32);
        s.push_str("data:image/png;base64,");
        s.extend(std::iter::repeat_n('A', chars as usize));
        let m = err(&s);
        assert!(m.contains("52428801 bytes") && m.contains("50 MiB"), "{m}");
    }

    #[test]
    fn decoded_bytes_are_reported() {
        let p = png(640, 480);
        match check_image(&data_uri("image/png", &p)) {
            Ok(ImageInfo::DataUri { decoded_bytes, .. }) => {
                assert_eq!(decoded_bytes, p.len() as u64)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_large_image_is_accepted_from_its_header_only() {
        // ~1.5 MB: the header parse decodes at most the first 64 KiB of base64.
        let mut p = png(1920, 1080);
        p.extend(std::iter::repeat_n(0xABu8, 1_500_000));
        assert_eq!(
            ok_dims(&data_uri("image/png", &p)),
            (ImageFormat::Png, 1920, 1080)
        );
    }

    #[test]
    fn dimension_check_is_exact_integer_math() {
        assert!(check_dimensions(4, 1).is_ok());
        assert!(check_dimensions(1, 4).is_ok());
        assert!(check_dimensions(4_000_000, 1_000_000).is_ok());
        assert!(check_dimensions(4_000_001, 1_000_000).is_err());
        assert!(check_dimensions(u32::MAX, u32::MAX / 4 + 1).is_ok());
        assert!(check_dimensions(u32::MAX, u32::MAX / 4).is_err());
    }

    /// The streamed check, fed `value` in pieces of the given sizes (cycled).
    fn scanned(value: &[u8], sizes: &[usize]) -> Result<ImageInfo, String> {
        let mut scan = ImageScan::default();
        let (mut at, mut k) = (0, 0);
        while at < value.len() {
            let n = sizes[k % sizes.len()].max(1).min(value.len() - at);
            scan.feed(&value[at..at + n]);
            at += n;
            k += 1;
        }
        scan.finish()
    }

    /// Values whose verdicts cover every branch of the check, short and longer than `MAX_URL_BYTES`.
    fn corpus() -> Vec<String> {
        let big_png = {
            let mut p = png(1920, 1080);
            p.extend(std::iter::repeat_n(0xABu8, 300_000));
            p
        };
        let good = data_uri("image/png", &big_png);
        let comma = good.find(',').unwrap();
        let mut out = vec![
            good.clone(),
            data_uri("image/png", &png(100, 100)),
            // The JPEG's dimensions come after 200 KB of metadata: read from the fourth header step.
            data_uri("image/jpeg", &jpeg_with_metadata(800, 600, 200_000)),
            data_uri("image/jpeg", &jpeg_with_metadata(800, 600, 5_000_000)),
            data_uri("image/jpeg", &big_png),
            data_uri("image/webp", &webp_vp8x(5000, 1000)),
            format!("https://example.com/{}", "a".repeat(70_000)),
            format!("https://example.com/{}", "a".repeat(1_000)),
            format!("iVBOR{}", "A".repeat(80_000)),
            format!("ftp:{}", "A".repeat(80_000)),
            format!("data:text/plain;base64,{}", "A".repeat(80_000)),
            format!("data:image/png,{}", "A".repeat(80_000)),
            format!(
                "{}==",
                &good[..good.len() - (good.len() - comma - 1) % 4 - 4]
            ),
            good.trim_end_matches('=').to_owned(),
            format!("{good}="),
            format!("{good}AAAA"),
            String::new(),
            "data:image/png;base64,".into(),
        ];
        for (pos, bad) in [
            (10, '*'),
            (70_000, '\n'),
            (200_000, '='),
            (300_000, '-'),
            (399_990, ' '),
        ] {
            let mut v = good.clone().into_bytes();
            v[comma + 1 + pos] = bad as u8;
            out.push(String::from_utf8(v).unwrap());
        }
        out
    }

    #[test]
    fn the_streamed_check_gives_the_whole_check_verdict_however_the_value_is_split() {
        for value in corpus() {
            let whole = check_image(&value);
            for sizes in [
                &[1_000_000][..],
                &[1],
                &[4096],
                &[7, 65_536, 3],
                &[65_535, 2, 131_071],
            ] {
                if sizes == [1] && value.len() > 100_000 {
                    continue; // byte by byte is slow in debug builds; the other splits cover it
                }
                assert_eq!(
                    scanned(value.as_bytes(), sizes),
                    whole,
                    "value starting {:?} ({} bytes) split {sizes:?}",
                    &value[..value.len().min(40)],
                    value.len()
                );
            }
        }
    }

    #[test]
    fn a_long_image_url_is_refused_naming_the_limit() {
        let url = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        let m = err(&url);
        assert!(m.contains("at most 65536"), "{m}");
        assert!(check_image(&format!("https://example.com/{}", "a".repeat(60_000))).is_ok());
    }

    #[test]
    fn base64_scanned_in_pieces_finds_the_same_first_problem() {
        for data in [
            &b"AB=A"[..],
            b"AB==",
            b"A===",
            b"AB=\n",
            b"ABCD-",
            b"",
            b"ABC",
            b"AB\x00D",
        ] {
            for cut in 0..=data.len() {
                let mut scan = Base64Scan::default();
                scan.feed(&data[..cut]);
                scan.feed(&data[cut..]);
                assert_eq!(scan.finish(), check_base64(data), "{data:?} cut at {cut}");
            }
        }
    }
}
