//! Vidu's callback signature (`../shared/vidu/CALLBACKS.md`): HMAC-SHA256 over the method, the registered
//! callback URL's path and query, the access key, the `Date` header and the signed headers, base64. Verifying
//! Vidu's callbacks (keyed with the enterprise key) and signing the gateway's relays to teams (keyed with the
//! team's relay secret) are the same scheme.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jiff::{SignedDuration, Timestamp};
use ring::hmac;

/// The only algorithm Vidu signs with.
pub const ALGORITHM: &str = "hmac-sha256";
/// The access key Vidu names in `X-HMAC-ACCESS-KEY`.
pub const ACCESS_KEY: &str = "vidu";
/// How far a callback's `Date` may be from now (either way) unless configured (`callbacks.max_skew_secs`).
pub const DATE_WINDOW: SignedDuration = SignedDuration::from_mins(5);

pub const DATE: &str = "Date";
pub const NONCE: &str = "x-request-nonce";
pub const SIGNED_HEADERS: &str = "X-HMAC-SIGNED-HEADERS";
pub const SIGNATURE: &str = "X-HMAC-SIGNATURE";
pub const ALGORITHM_HEADER: &str = "X-HMAC-ALGORITHM";
pub const ACCESS_KEY_HEADER: &str = "X-HMAC-ACCESS-KEY";

/// Why a callback is not accepted (each a 401; the message says which check failed, never a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("the {0} header is missing")]
    Missing(&'static str),
    #[error("X-HMAC-ALGORITHM must be hmac-sha256")]
    Algorithm,
    #[error("X-HMAC-ACCESS-KEY must be vidu")]
    AccessKey,
    #[error("the Date header is not an HTTP date")]
    BadDate,
    #[error(
        "the Date header is further from the gateway's clock than callbacks.max_skew_secs allows"
    )]
    StaleDate,
    #[error("X-HMAC-SIGNED-HEADERS must list Date and x-request-nonce")]
    Unsigned,
    #[error("the signature does not verify")]
    Signature,
}

/// What was verified: the delivery's nonce (to refuse a replay) and its date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub nonce: String,
    pub date: Timestamp,
}

/// The string that is signed. `path` and `query` come from the callback URL as registered (`"/"` and `""` when
/// empty); `signed` are the signed headers, by the name listed in `X-HMAC-SIGNED-HEADERS`, in that order.
pub fn signing_string(path: &str, query: &str, date: &str, signed: &[(&str, &str)]) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let mut s = String::with_capacity(64 + path.len() + query.len() + 48 * signed.len());
    for part in ["POST", path, query, ACCESS_KEY, date] {
        s.push_str(part);
        s.push('\n');
    }
    for (name, value) in signed {
        s.push_str(name);
        s.push(':');
        s.push_str(value);
        s.push('\n');
    }
    s
}

/// base64(HMAC-SHA256(key, signing string)).
pub fn sign(key: &[u8], signing_string: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    STANDARD.encode(hmac::sign(&key, signing_string.as_bytes()).as_ref())
}

/// The headers that sign a POST to `url` made now with `nonce` (the gateway's relays to teams).
pub fn signed_headers(
    key: &[u8],
    url: &url::Url,
    now: Timestamp,
    nonce: &str,
) -> Vec<(&'static str, String)> {
    let date = http_date(now);
    let string = signing_string(
        url.path(),
        url.query().unwrap_or(""),
        &date,
        &[(DATE, &date), (NONCE, nonce)],
    );
    vec![
        (SIGNATURE, sign(key, &string)),
        (SIGNED_HEADERS, format!("{DATE};{NONCE}")),
        (ALGORITHM_HEADER, ALGORITHM.to_owned()),
        (ACCESS_KEY_HEADER, ACCESS_KEY.to_owned()),
        (DATE, date),
        (NONCE, nonce.to_owned()),
    ]
}

/// An RFC 9110 date: `Tue, 06 May 2025 12:09:42 GMT`.
pub fn http_date(t: Timestamp) -> String {
    jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&t)
        .unwrap_or_default()
}

/// Verifies a callback addressed to the registered URL with `path` and `query`: the algorithm and access key
/// Vidu names, a `Date` within [`DATE_WINDOW`] of `now`, a signature over at least `Date` and the nonce that
/// matches in constant time. `header` looks a request header up by name (case-insensitively).
pub fn verify<'h>(
    key: &[u8],
    path: &str,
    query: &str,
    header: impl Fn(&str) -> Option<&'h str>,
    now: Timestamp,
) -> Result<Verified, Unverified> {
    verify_within(key, path, query, header, now, DATE_WINDOW)
}

/// [`verify`] with the `Date` allowed `window` either side of `now`.
pub fn verify_within<'h>(
    key: &[u8],
    path: &str,
    query: &str,
    header: impl Fn(&str) -> Option<&'h str>,
    now: Timestamp,
    window: SignedDuration,
) -> Result<Verified, Unverified> {
    let need = |name: &'static str| header(name).ok_or(Unverified::Missing(name));
    if !need(ALGORITHM_HEADER)?.eq_ignore_ascii_case(ALGORITHM) {
        return Err(Unverified::Algorithm);
    }
    if need(ACCESS_KEY_HEADER)? != ACCESS_KEY {
        return Err(Unverified::AccessKey);
    }
    let signature = need(SIGNATURE)?;
    let date = need(DATE)?;
    let nonce = need(NONCE)?;
    let listed = need(SIGNED_HEADERS)?;
    let when = jiff::fmt::rfc2822::parse(date)
        .map(|z| z.timestamp())
        .map_err(|_| Unverified::BadDate)?;
    if when.duration_since(now).abs() > window {
        return Err(Unverified::StaleDate);
    }
    let names: Vec<&str> = listed
        .split(';')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let covers = |wanted: &str| names.iter().any(|n| n.eq_ignore_ascii_case(wanted));
    if !covers(DATE) || !covers(NONCE) {
        return Err(Unverified::Unsigned);
    }
    let mut signed = Vec::with_capacity(names.len());
    for name in &names {
        signed.push((*name, header(name).ok_or(Unverified::Signature)?));
    }
    let expected = signing_string(path, query, date, &signed);
    let given = STANDARD
        .decode(signature.trim())
        .map_err(|_| Unverified::Signature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&key, expected.as_bytes(), &given).map_err(|_| Unverified::Signature)?;
    Ok(Verified {
        nonce: nonce.to_owned(),
        date: when,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const KEY: &[u8] = b"test-secret-key";
    const DATE_1: &str = "Tue, 06 May 2025 12:09:42 GMT";

    fn at(date: &str) -> Timestamp {
        jiff::fmt::rfc2822::parse(date).unwrap().timestamp()
    }

    /// The headers of vector 1 of CALLBACKS.md.
    fn vector_1() -> HashMap<String, String> {
        [
            (DATE, DATE_1),
            (NONCE, "123e4567-e89b-12d3-a456-426614174000"),
            (SIGNED_HEADERS, "Date;x-request-nonce"),
            (SIGNATURE, "9JZa1ZLjkWVos5QQzjjviqAsFE1L9yQw/LsnAXZFIjo="),
            (ALGORITHM_HEADER, "hmac-sha256"),
            (ACCESS_KEY_HEADER, "vidu"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect()
    }

    fn lookup<'a>(h: &'a HashMap<String, String>) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| h.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    #[test]
    fn vector_1_vidus_worked_example() {
        let string = signing_string(
            "/vidu/callback",
            "name=james&age=36",
            DATE_1,
            &[
                ("Date", DATE_1),
                ("x-request-nonce", "123e4567-e89b-12d3-a456-426614174000"),
            ],
        );
        assert_eq!(
            string,
            "POST\n/vidu/callback\nname=james&age=36\nvidu\nTue, 06 May 2025 12:09:42 GMT\nDate:Tue, 06 May 2025 \
             12:09:42 GMT\nx-request-nonce:123e4567-e89b-12d3-a456-426614174000\n"
        );
        assert_eq!(
            sign(KEY, &string),
            "9JZa1ZLjkWVos5QQzjjviqAsFE1L9yQw/LsnAXZFIjo="
        );
        let h = vector_1();
        let ok = verify(
            KEY,
            "/vidu/callback",
            "name=james&age=36",
            lookup(&h),
            at(DATE_1),
        );
        assert_eq!(
            ok.map(|v| v.nonce),
            Ok("123e4567-e89b-12d3-a456-426614174000".to_owned())
        );
    }

    #[test]
    fn vector_2_empty_path_and_query() {
        let string = signing_string(
            "",
            "",
            DATE_1,
            &[("Date", DATE_1), ("x-request-nonce", "n-1")],
        );
        assert_eq!(
            string,
            "POST\n/\n\nvidu\nTue, 06 May 2025 12:09:42 GMT\nDate:Tue, 06 May 2025 12:09:42 GMT\nx-request-nonce:n-1\n"
        );
        assert_eq!(
            sign(KEY, &string),
            "URp35WK38Ym8cI8M7lkTwszMAof/KxLbaB7ISBDMKu8="
        );
    }

    #[test]
    fn each_check_refuses_what_it_guards() {
        let path = ("/vidu/callback", "name=james&age=36");
        let now = at(DATE_1);
        let check = |edit: &dyn Fn(&mut HashMap<String, String>), now: Timestamp| {
            let mut h = vector_1();
            edit(&mut h);
            verify(KEY, path.0, path.1, lookup(&h), now).map(|_| ())
        };
        let set = |k: &'static str, v: &'static str| {
            move |h: &mut HashMap<String, String>| {
                h.insert(k.to_ascii_lowercase(), v.to_owned());
            }
        };
        assert_eq!(
            check(
                &set(SIGNATURE, "9JZa1ZLjkWVos5QQzjjviqAsFE1L9yQw/LsnAXZFIjp="),
                now
            ),
            Err(Unverified::Signature)
        );
        assert_eq!(
            check(&set(NONCE, "another"), now),
            Err(Unverified::Signature)
        );
        assert_eq!(
            check(&set(ALGORITHM_HEADER, "hmac-sha1"), now),
            Err(Unverified::Algorithm)
        );
        assert_eq!(
            check(&set(ACCESS_KEY_HEADER, "someone"), now),
            Err(Unverified::AccessKey)
        );
        assert_eq!(
            check(&set(SIGNED_HEADERS, "Date"), now),
            Err(Unverified::Unsigned)
        );
        assert_eq!(
            check(
                &|h: &mut HashMap<String, String>| {
                    h.remove(NONCE);
                },
                now
            ),
            Err(Unverified::Missing(NONCE))
        );
        let ten_minutes_later = now + SignedDuration::from_mins(10);
        assert_eq!(
            check(&|_| {}, ten_minutes_later),
            Err(Unverified::StaleDate)
        );
        assert_eq!(check(&|_| {}, now + SignedDuration::from_mins(4)), Ok(()));
        // Another registered URL: the signature covers the path and query.
        let h = vector_1();
        assert_eq!(
            verify(KEY, "/vidu/callback", "name=james&age=37", lookup(&h), now).map(|_| ()),
            Err(Unverified::Signature)
        );
        assert_eq!(
            verify(b"another-key", path.0, path.1, lookup(&h), now).map(|_| ()),
            Err(Unverified::Signature)
        );
    }

    #[test]
    fn what_the_gateway_signs_verifies_with_the_same_key_only() {
        let url = url::Url::parse("https://team.example.com/hooks/vidu?team=mkt").unwrap();
        let now = at(DATE_1);
        let headers = signed_headers(b"team-relay-secret", &url, now, "nonce-42");
        let h: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        assert_eq!(h["date"], DATE_1);
        let verified = verify(
            b"team-relay-secret",
            url.path(),
            "team=mkt",
            lookup(&h),
            now,
        );
        assert_eq!(verified.map(|v| v.nonce), Ok("nonce-42".to_owned()));
        assert_eq!(
            verify(b"test-secret-key", url.path(), "team=mkt", lookup(&h), now).map(|_| ()),
            Err(Unverified::Signature)
        );
    }
}
