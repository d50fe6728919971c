//! A request body read as it arrives, so that it can be forwarded while it is checked. Everything before the
//! top-level `images` value (the *head*) is held until that value starts; then the head and the value's bytes are
//! passed on as they come (its strings checked on the way by [`ImageScan`]), and everything after the value (the
//! *tail*) is held again. What is held makes a small *skeleton* — the body with the contents of the `images`
//! strings left out — validated like a whole body once the last byte is in; the tail goes out last, from it.
//!
//! A head holding a member the gateway may change (see [`Holds`]) must not go out before the checks: such a body
//! is not streamed at all (the scanner then keeps every byte, and the skeleton is the whole body).
//!
//! The verdict is the one the whole body would get: `images[0]`'s by [`ImageScan`] (the same as `check_image`'s
//! however the value is split), the rest by the usual validation of the skeleton; UTF-8 is checked over every byte
//! (with the whole body's offsets), and the JSON of the left-out strings (escapes, control characters) here, since
//! the skeleton does not hold them.

use std::ops::Range;

use super::image::{ImageInfo, ImageScan};
use super::members::{not_json, not_utf8};

/// A skeleton grows by doubling up to this size; past it, to the body's declared length at once.
const KEPT_SMALL: usize = 64 * 1024;

/// Which members of the head keep a body from streaming: the fields the gateway may change before forwarding.
#[derive(Clone, Copy, Debug, Default)]
pub struct Holds {
    /// `callback_url` (relaying on: the gateway sets or removes it).
    pub callback_url: bool,
    /// `off_peak` with any value but `true` (a policy may set it to `true`).
    pub off_peak: bool,
    /// Fields that are not Vidu's (`validation.unknown_fields = "strip"`: removed).
    pub unknown: bool,
}

impl Holds {
    fn holds(&self, key: &str, value: &str) -> bool {
        match key {
            "callback_url" => self.callback_url,
            "off_peak" => self.off_peak && value != "true",
            _ => self.unknown && !super::fields::field_names().any(|f| f == key),
        }
    }
}

/// What the scan of a whole body found.
#[derive(Debug)]
pub struct Scanned {
    /// The body without the contents of the `images` array's strings (each left as `""`); the whole body when
    /// nothing was passed on.
    pub skeleton: Vec<u8>,
    /// Where the `images` value ends in the skeleton: the tail is `skeleton[images_end..]`.
    pub images_end: usize,
    /// The check of the `images` array's first string (`None` when the body has no such string).
    pub image: Option<Result<ImageInfo, String>>,
    /// Why the body is not UTF-8 JSON, when the skeleton cannot tell (a 400 `BadRequest` message).
    pub problem: Option<String>,
}

/// Where the scan is in the body's structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Before the top-level `{`, or after its `}`.
    Outside,
    /// In the top-level object, where a key or `}` comes next.
    Key,
    /// After a key, where `:` comes next.
    Colon,
    /// After `:`, where the value starts.
    Value,
    /// After a value, where `,` or `}` comes next.
    Next,
}

/// A string being read (outside the `images` strings, only to find where it ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Str {
    No,
    In,
    Escape,
}

/// Inside one of the `images` array's strings: JSON escapes decoded across pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    /// `\u` and the hex digits read so far.
    Hex {
        digits: u8,
        code: u32,
    },
}

pub struct BodyScanner {
    /// The body's declared length: the skeleton's size when it turns out to be (nearly) the whole body.
    declared: usize,
    holds: Holds,
    /// Not streamed (the head holds a member the gateway may change): every byte is kept.
    whole: bool,
    /// Where the last top-level key started in the skeleton.
    key_start: usize,
    head_len: usize,
    /// Where the `images` value ended in the skeleton; 0 until it has (only the first `images` is streamed).
    images_end: usize,
    skeleton: Vec<u8>,
    /// Body bytes seen.
    seen: usize,
    utf8: Utf8Check,
    expect: Expect,
    /// Nesting below the top-level object (0 = in it) of the value being skipped.
    depth: u32,
    string: Str,
    /// The key being read (raw, as far as it matters), and whether the last one read was `images`.
    key: Vec<u8>,
    in_key: bool,
    key_is_images: bool,
    /// In the `images` array: its nesting (1 = directly in the array), and the string being streamed.
    images: Option<Images>,
    image: Option<Result<ImageInfo, String>>,
    problem: Option<String>,
}

struct Images {
    depth: u32,
    /// Reading a string directly in the array (its contents are left out of the skeleton).
    streamed: Option<Streamed>,
    /// Reading a string nested deeper (kept in the skeleton).
    nested: Str,
    strings: usize,
}

struct Streamed {
    esc: Esc,
    /// A high surrogate waiting for its low half.
    high: Option<u32>,
    /// The first string's check (later strings are only checked as JSON).
    scan: Option<ImageScan>,
}

impl BodyScanner {
    /// A scanner for a body declaring `declared` bytes.
    pub fn new(holds: Holds, declared: usize) -> Self {
        Self {
            declared,
            holds,
            whole: false,
            key_start: 0,
            head_len: 0,
            images_end: 0,
            skeleton: Vec::with_capacity(1024),
            seen: 0,
            utf8: Utf8Check::default(),
            expect: Expect::Outside,
            depth: 0,
            string: Str::No,
            key: Vec::new(),
            in_key: false,
            key_is_images: false,
            images: None,
            image: None,
            problem: None,
        }
    }

    /// The head: what goes out before the first bytes of the `images` value.
    pub fn head(&self) -> &[u8] {
        &self.skeleton[..self.head_len]
    }

    /// Takes the next piece of the body; returns the part of it to pass on now (the `images` value's bytes; the
    /// [`head`](Self::head) goes before the first of them).
    pub fn feed(&mut self, piece: &[u8]) -> Range<usize> {
        self.utf8.feed(piece, self.seen);
        // A skeleton this large is a body kept (nearly) whole (not streamed, or an image that is not where a
        // streamed one is): one buffer of the declared length, as a body read whole gets, instead of doubling.
        if self.skeleton.len() + piece.len() > self.skeleton.capacity()
            && self.skeleton.len() + piece.len() > KEPT_SMALL
        {
            let rest = self.declared.saturating_sub(self.skeleton.len());
            self.skeleton.reserve_exact(rest.max(piece.len()));
        }
        let mut forward: Option<Range<usize>> = None;
        let mut i = 0;
        while i < piece.len() {
            if self.whole {
                self.skeleton.extend_from_slice(&piece[i..]);
                break;
            }
            if self.images.is_some() {
                let start = i;
                i = self.images_step(piece, i);
                let r = forward.get_or_insert(start..start);
                r.end = i;
            } else {
                let b = piece[i];
                if self.skeleton_byte(b) {
                    if self.head_holds() {
                        // A member of the head may change: nothing goes out before the checks.
                        self.whole = true;
                        self.images = None;
                    } else {
                        // The `[` of the images array: passed on, and the array read from the next byte.
                        self.head_len = self.skeleton.len() - 1;
                        forward = Some(i..i + 1);
                    }
                }
                i += 1;
            }
        }
        self.seen += piece.len();
        forward.unwrap_or(0..0)
    }

    /// True when a member of the head (the members before `images`) is one the gateway may change, or the head
    /// cannot be read (the body is then refused anyway, and is not streamed).
    fn head_holds(&self) -> bool {
        let mut head = self.skeleton[..self.key_start].to_vec();
        while head
            .last()
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b',')
        {
            head.pop();
        }
        head.push(b'}');
        match super::members::parse_members(&head) {
            Ok((_, members)) => members
                .iter()
                .any(|m| self.holds.holds(&m.key, m.value.get())),
            Err(_) => true,
        }
    }

    /// One byte outside the `images` array; true when it opens the array.
    fn skeleton_byte(&mut self, b: u8) -> bool {
        self.skeleton.push(b);
        match self.string {
            Str::Escape => {
                self.string = Str::In;
                self.keep_key_byte(b);
                return false;
            }
            Str::In => {
                match b {
                    b'\\' => self.string = Str::Escape,
                    b'"' => {
                        self.string = Str::No;
                        if self.in_key {
                            self.in_key = false;
                            self.key_is_images = is_images_key(&self.key);
                            self.expect = Expect::Colon;
                        }
                        return false;
                    }
                    _ => {}
                }
                self.keep_key_byte(b);
                return false;
            }
            Str::No => {}
        }
        if b.is_ascii_whitespace() {
            return false;
        }
        if self.depth > 0 {
            match b {
                b'"' => self.string = Str::In,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => self.depth -= 1,
                _ => {}
            }
            return false;
        }
        match (self.expect, b) {
            (Expect::Outside, b'{') => self.expect = Expect::Key,
            (Expect::Key, b'"') => {
                self.key_start = self.skeleton.len() - 1;
                self.string = Str::In;
                self.in_key = true;
                self.key.clear();
            }
            (Expect::Colon, b':') => self.expect = Expect::Value,
            (Expect::Value, b'[') if self.key_is_images && self.images_end == 0 => {
                self.images = Some(Images {
                    depth: 1,
                    streamed: None,
                    nested: Str::No,
                    strings: 0,
                });
                self.expect = Expect::Next;
                return true;
            }
            (Expect::Value, _) => {
                match b {
                    b'"' => self.string = Str::In,
                    b'{' | b'[' => self.depth += 1,
                    _ => {}
                }
                self.expect = Expect::Next;
            }
            (Expect::Next | Expect::Key, b',') => self.expect = Expect::Key,
            (Expect::Next | Expect::Key, b'}') => self.expect = Expect::Outside,
            // Anything else is malformed: the skeleton's parse reports it.
            _ => {}
        }
        false
    }

    fn keep_key_byte(&mut self, b: u8) {
        if self.in_key && self.key.len() < 256 {
            self.key.push(b);
        }
    }

    /// Reads the `images` array from `piece[i..]`; returns where it stopped (the piece's end, or just past the
    /// array's closing bracket).
    fn images_step(&mut self, piece: &[u8], mut i: usize) -> usize {
        let Some(images) = self.images.as_mut() else {
            return i;
        };
        while i < piece.len() {
            if let Some(streamed) = images.streamed.as_mut() {
                let offset = self.seen + i;
                match streamed.take(&piece[i..], offset, &mut self.problem) {
                    Taken::More => return piece.len(),
                    Taken::Closed(at) => {
                        i += at + 1;
                        self.skeleton.push(b'"');
                        if let Some(Some(scan)) = images.streamed.take().map(|s| s.scan) {
                            self.image = Some(scan.finish());
                        }
                        continue;
                    }
                }
            }
            let b = piece[i];
            i += 1;
            self.skeleton.push(b);
            match images.nested {
                Str::Escape => {
                    images.nested = Str::In;
                    continue;
                }
                Str::In => {
                    match b {
                        b'\\' => images.nested = Str::Escape,
                        b'"' => images.nested = Str::No,
                        _ => {}
                    }
                    continue;
                }
                Str::No => {}
            }
            match b {
                b'"' if images.depth == 1 => {
                    images.streamed = Some(Streamed {
                        esc: Esc::None,
                        high: None,
                        scan: (images.strings == 0).then(ImageScan::default),
                    });
                    images.strings += 1;
                }
                b'"' => images.nested = Str::In,
                b'[' | b'{' => images.depth += 1,
                b']' | b'}' => {
                    images.depth -= 1;
                    if images.depth == 0 {
                        self.images = None;
                        self.images_end = self.skeleton.len();
                        return i;
                    }
                }
                _ => {}
            }
        }
        i
    }

    /// The verdict on the whole body, once its last byte is in.
    pub fn finish(mut self) -> Scanned {
        let utf8 = self.utf8.finish(self.seen);
        if let Some(offset) = utf8 {
            self.problem = Some(not_utf8(offset));
        } else if self.images.is_some() && self.problem.is_none() {
            self.problem = Some(not_json("the body ends inside the images array"));
        }
        Scanned {
            images_end: self.images_end,
            skeleton: self.skeleton,
            image: self.image,
            problem: self.problem,
        }
    }
}

/// The position of the first control character (below 0x20), which JSON strings may not hold raw. Scanned in
/// blocks without an early exit (vectorised), then located within the block that has one.
fn first_control(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    for block in bytes.chunks(4096) {
        if block.iter().fold(false, |found, &b| found | (b < 0x20)) {
            return block.iter().position(|&b| b < 0x20).map(|i| at + i);
        }
        at += block.len();
    }
    None
}

/// True when a key's raw text (between its quotes) means `images`.
fn is_images_key(raw: &[u8]) -> bool {
    if raw == b"images" {
        return true;
    }
    if !raw.contains(&b'\\') || raw.len() >= 256 {
        return false;
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == "images")
}

enum Taken {
    /// The whole piece was string contents.
    More,
    /// The string's closing quote is at this index of the piece.
    Closed(usize),
}

impl Streamed {
    /// Reads string contents from `piece` (at body offset `offset`) up to the closing quote.
    fn take(&mut self, piece: &[u8], offset: usize, problem: &mut Option<String>) -> Taken {
        let mut i = 0;
        while i < piece.len() {
            if self.esc == Esc::None && self.high.is_none() {
                // Plain contents up to the next quote or backslash, in one scan.
                let end = memchr::memchr2(b'"', b'\\', &piece[i..]).map_or(piece.len(), |n| i + n);
                let plain = &piece[i..end];
                if problem.is_none()
                    && let Some(at) = first_control(plain)
                {
                    *problem = Some(not_json(&format!(
                        "a control character (0x{:02x}) inside a string at byte {}",
                        plain[at],
                        offset + i + at
                    )));
                }
                self.emit(plain);
                i = end;
                if i == piece.len() {
                    return Taken::More;
                }
            }
            let b = piece[i];
            match self.esc {
                Esc::None => match b {
                    b'"' => {
                        if self.high.is_some() {
                            self.bad(problem, offset + i, "a lone surrogate escape");
                        }
                        return Taken::Closed(i);
                    }
                    b'\\' => self.esc = Esc::Backslash,
                    _ => {
                        // After a high surrogate only its `\u` low half may follow.
                        self.bad(problem, offset + i, "a lone surrogate escape");
                        self.high = None;
                        continue;
                    }
                },
                Esc::Backslash => {
                    self.esc = Esc::None;
                    let decoded = match b {
                        b'"' | b'\\' | b'/' => Some(b),
                        b'b' => Some(0x08),
                        b'f' => Some(0x0c),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => {
                            self.esc = Esc::Hex { digits: 0, code: 0 };
                            None
                        }
                        _ => {
                            self.bad(problem, offset + i, "an invalid escape");
                            None
                        }
                    };
                    if let Some(d) = decoded {
                        if self.high.take().is_some() {
                            self.bad(problem, offset + i, "a lone surrogate escape");
                        }
                        self.emit(&[d]);
                    }
                }
                Esc::Hex { digits, code } => {
                    let Some(v) = (b as char).to_digit(16) else {
                        self.bad(problem, offset + i, "an invalid \\u escape");
                        self.esc = Esc::None;
                        i += 1;
                        continue;
                    };
                    let code = code * 16 + v;
                    if digits < 3 {
                        self.esc = Esc::Hex {
                            digits: digits + 1,
                            code,
                        };
                    } else {
                        self.esc = Esc::None;
                        self.unicode(code, offset + i, problem);
                    }
                }
            }
            i += 1;
        }
        Taken::More
    }

    fn unicode(&mut self, code: u32, at: usize, problem: &mut Option<String>) {
        let ch = match (self.high.take(), code) {
            (None, 0xD800..=0xDBFF) => {
                self.high = Some(code);
                return;
            }
            (Some(high), 0xDC00..=0xDFFF) => {
                char::from_u32(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00))
            }
            (None, 0xDC00..=0xDFFF) | (Some(_), _) => None,
            (None, _) => char::from_u32(code),
        };
        match ch {
            Some(c) => {
                let mut buf = [0u8; 4];
                self.emit(c.encode_utf8(&mut buf).as_bytes());
            }
            None => self.bad(problem, at, "a lone surrogate escape"),
        }
    }

    fn bad(&self, problem: &mut Option<String>, at: usize, what: &str) {
        if problem.is_none() {
            *problem = Some(not_json(&format!("{what} inside a string at byte {at}")));
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if let Some(scan) = self.scan.as_mut() {
            scan.feed(bytes);
        }
    }
}

/// UTF-8 checked piece by piece, with the whole body's offsets.
#[derive(Debug, Default)]
struct Utf8Check {
    /// The start of a character cut at the end of the last piece.
    carry: Vec<u8>,
    /// The offset of the first invalid byte.
    bad: Option<usize>,
}

impl Utf8Check {
    /// `piece` starts at body offset `at`.
    fn feed(&mut self, piece: &[u8], at: usize) {
        if self.bad.is_some() {
            return;
        }
        let mut rest = piece;
        let mut at = at;
        if !self.carry.is_empty() {
            // Complete the cut character with at most 3 bytes of this piece.
            let carried = self.carry.len();
            let take = rest.len().min(4 - carried);
            self.carry.extend_from_slice(&rest[..take]);
            match std::str::from_utf8(&self.carry) {
                Ok(_) => {}
                Err(e) if e.valid_up_to() >= carried => {}
                Err(e) if e.error_len().is_none() => {
                    // Still cut (this piece was shorter than the character).
                    rest = &rest[take..];
                    debug_assert!(rest.is_empty());
                    return;
                }
                Err(_) => {
                    self.bad = Some(at - carried);
                    return;
                }
            }
            // The carried character is complete: go on after its last byte.
            let len = char_len(self.carry[0]);
            let used = len - carried;
            rest = &rest[used..];
            at += used;
            self.carry.clear();
        }
        match std::str::from_utf8(rest) {
            Ok(_) => {}
            Err(e) if e.error_len().is_none() => {
                self.carry.extend_from_slice(&rest[e.valid_up_to()..]);
            }
            Err(e) => self.bad = Some(at + e.valid_up_to()),
        }
    }

    /// The offset of the first invalid byte, if any (`len`: the body's length).
    fn finish(&self, len: usize) -> Option<usize> {
        self.bad
            .or_else(|| (!self.carry.is_empty()).then(|| len - self.carry.len()))
    }
}

/// The length of a UTF-8 character from its first byte (a valid one: checked before).
fn char_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        _ => 2,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Scans `body` in pieces of the given sizes (cycled); returns the result and the bytes passed on.
    pub(crate) fn scan(body: &[u8], sizes: &[usize]) -> (Scanned, Vec<u8>) {
        scan_holding(body, sizes, Holds::default())
    }

    /// [`scan`] with `holds`; the bytes passed on include the head before the first of them.
    pub(crate) fn scan_holding(body: &[u8], sizes: &[usize], holds: Holds) -> (Scanned, Vec<u8>) {
        let mut s = BodyScanner::new(holds, body.len());
        let mut out = Vec::new();
        let (mut at, mut k) = (0, 0);
        while at < body.len() {
            let n = sizes[k % sizes.len()].max(1).min(body.len() - at);
            let piece = &body[at..at + n];
            let r = s.feed(piece);
            if out.is_empty() && !r.is_empty() {
                out.extend_from_slice(s.head());
            }
            out.extend_from_slice(&piece[r]);
            at += n;
            k += 1;
        }
        (s.finish(), out)
    }

    #[test]
    fn the_images_value_is_passed_on_and_left_out_of_the_skeleton() {
        let body = br#"{"model": "viduq2", "images" : [ "data:abc\/d" ], "prompt": "x\"y"}"#;
        for sizes in [&[1000][..], &[1], &[3, 7]] {
            let (scanned, out) = scan(body, sizes);
            assert_eq!(
                out, br#"{"model": "viduq2", "images" : [ "data:abc\/d" ]"#,
                "{sizes:?}"
            );
            assert_eq!(
                String::from_utf8(scanned.skeleton).unwrap(),
                r#"{"model": "viduq2", "images" : [ "" ], "prompt": "x\"y"}"#
            );
            assert!(scanned.problem.is_none());
            assert!(scanned.image.is_some());
        }
    }

    #[test]
    fn an_escaped_images_key_is_the_images_key_and_only_the_first_is_streamed() {
        let body = br#"{"imag\u0065s": ["https://a/b.png"], "images": ["https://c/d.png"]}"#;
        let (scanned, out) = scan(body, &[5]);
        assert_eq!(out, br#"{"imag\u0065s": ["https://a/b.png"]"#);
        assert!(
            String::from_utf8(scanned.skeleton)
                .unwrap()
                .contains(r#""images": ["https://c/d.png"]"#)
        );
    }

    #[test]
    fn strings_that_are_not_json_are_problems_at_their_offset() {
        for (body, what) in [
            (
                &b"{\"images\": [\"ab\x01c\"]}"[..],
                "control character (0x01)",
            ),
            (br#"{"images": ["ab\qc"]}"#, "invalid escape"),
            (br#"{"images": ["ab\ud800c"]}"#, "lone surrogate"),
            (br#"{"images": ["ab\udc00"]}"#, "lone surrogate"),
            (br#"{"images": ["ab\u12g4"]}"#, "invalid \\u escape"),
            (br#"{"images": ["abc""#, "ends inside the images array"),
        ] {
            for sizes in [&[1000][..], &[1]] {
                let (scanned, _) = scan(body, sizes);
                let p = scanned.problem.unwrap_or_default();
                assert!(p.contains(what), "{body:?}: {p}");
            }
        }
        let (ok, _) = scan(r#"{"images": ["a\ud83d\ude00\u00e9"]}"#.as_bytes(), &[1]);
        assert!(ok.problem.is_none(), "{:?}", ok.problem);
    }

    #[test]
    fn utf8_is_checked_over_every_byte_with_the_bodys_offsets() {
        let mut body = r#"{"prompt": "é", "images": ["ab"#.as_bytes().to_vec();
        let bad_at = body.len();
        body.extend_from_slice(b"\xff\"]}");
        for sizes in [&[1000][..], &[1], &[2, 3]] {
            let (scanned, _) = scan(&body, sizes);
            let p = scanned.problem.unwrap_or_default();
            assert!(p.contains(&format!("offset {bad_at}")), "{p}");
        }
        let cut = r#"{"prompt": "€", "images": ["a"]}"#.as_bytes();
        for n in 1..6 {
            let (scanned, _) = scan(cut, &[n]);
            assert!(scanned.problem.is_none(), "{n}: {:?}", scanned.problem);
        }
        let (truncated, _) = scan(&cut[..13], &[1]);
        assert!(truncated.problem.unwrap_or_default().contains("offset 12"));
    }

    #[test]
    fn a_head_with_a_member_the_gateway_may_change_is_not_streamed() {
        let holds = Holds {
            callback_url: true,
            off_peak: true,
            unknown: true,
        };
        for (body, streams) in [
            (
                &br#"{"model":"viduq2","images":["x"],"off_peak":false}"#[..],
                true,
            ),
            (br#"{"off_peak":true,"images":["x"]}"#, true),
            (br#"{"off_peak":false,"images":["x"]}"#, false),
            (br#"{"callback_url":"https://a/b","images":["x"]}"#, false),
            (br#"{"zzz":1,"images":["x"]}"#, false),
            (br#"{"model":{"nested":[1,"images"]},"images":["x"]}"#, true),
        ] {
            let (scanned, out) = scan_holding(body, &[3], holds);
            assert_eq!(
                !out.is_empty(),
                streams,
                "{}",
                String::from_utf8_lossy(body)
            );
            if !streams {
                assert_eq!(scanned.skeleton, body, "the whole body is kept");
            }
        }
    }

    #[test]
    fn a_body_kept_whole_is_held_in_one_buffer_of_its_declared_length() {
        // Not JSON with an images array: every byte is kept, as a body read whole would be.
        let body = vec![b' '; (1 << 20) + 17];
        let (scanned, out) = scan(&body, &[65_536]);
        assert!(out.is_empty());
        assert_eq!(scanned.skeleton.len(), body.len());
        assert_eq!(
            scanned.skeleton.capacity(),
            body.len(),
            "not grown by doubling"
        );
    }
}
