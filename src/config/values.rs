//! Setting values parsed once, at load, into types that cannot hold a wrong value: a limit that is never 0, the
//! time zone itself (not its name), the upstream URL (and, in `hours.rs`, the hour windows). A value that does
//! not parse is refused while the file is checked, with the key named (`shape.rs` puts the key in front of the
//! message written here); each type writes itself back exactly as it was written, so `check-config` and
//! `/gateway/v1/config` print the file's text.

use std::num::NonZeroU32;

use jiff::tz::TimeZone;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// `Display`, `Serialize` and `Deserialize` of a setting parsed from a string (`$ty::parse(&str) -> Result<$ty,
/// String>`, the message saying what is wrong with the value) that writes back the text it was given
/// (`$ty::as_str`).
macro_rules! written_as_given {
    ($ty:ty) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$ty>::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(super) use written_as_given;

/// Why a limit of 0 is refused: a key that limits must allow something.
pub const ZERO_LIMIT: &str = "must be at least 1 (leave it out for no limit)";

/// `#[serde(deserialize_with)]` for an optional limit (`requests_per_minute`, `burst`, `max_in_flight`, the
/// `team_*` and global ones): a whole number of at least 1, or absent for no limit.
pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroU32>, D::Error> {
    match Option::<u32>::deserialize(d)? {
        None => Ok(None),
        Some(n) => NonZeroU32::new(n)
            .map(Some)
            .ok_or_else(|| D::Error::custom(ZERO_LIMIT)),
    }
}

/// `policy.timezone`: an IANA zone, found in the tz database once, at load. Budget days and months and the hour
/// windows are reckoned in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl Zone {
    pub fn parse(name: &str) -> Result<Self, String> {
        match TimeZone::get(name) {
            Ok(tz) => Ok(Self {
                name: name.to_owned(),
                tz,
            }),
            Err(_) => Err(format!(
                "{name:?} is not an IANA time zone such as \"Asia/Shanghai\""
            )),
        }
    }

    /// The name as configured (`"Asia/Shanghai"`).
    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }
}

impl Default for Zone {
    /// `Asia/Shanghai`. The tz database is compiled in (jiff's `tzdb-bundle-always`), so the lookup cannot fail;
    /// were it ever to, Shanghai has kept UTC+8 without daylight saving since 1991.
    fn default() -> Self {
        const NAME: &str = "Asia/Shanghai";
        Self {
            name: NAME.to_owned(),
            tz: TimeZone::get(NAME).unwrap_or_else(|_| TimeZone::fixed(jiff::tz::offset(8))),
        }
    }
}

written_as_given!(Zone);

/// One entry of `callbacks.relay_hosts`, parsed at load: an exact host (`hooks.example.com`) or `*.suffix`
/// (`*.corp.example`: any host ending in `.corp.example`, not `corp.example` itself). Compared without case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    text: String,
    /// Lower-cased host, or suffix without the `*.`.
    name: String,
    suffix: bool,
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let lower = raw.trim().to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(format!(
                "{raw:?} is not a host name or *.suffix (e.g. \"hooks.example.com\", \"*.corp.example\")"
            ));
        }
        Ok(Self {
            text: raw.to_owned(),
            name,
            suffix,
        })
    }

    /// The entry as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        let s = &self.name;
        if !self.suffix {
            return host.eq_ignore_ascii_case(s);
        }
        host.len() > s.len() + 1
            && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            && host.as_bytes()[host.len() - s.len() - 1] == b'.'
    }
}

written_as_given!(HostPattern);

/// `upstream.base_url`: an absolute http(s) URL with a host and no query, parsed at load. The path of each call is
/// appended to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    text: String,
    uri: awc::http::Uri,
}

impl BaseUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.parse::<awc::http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some()
                    && uri.query().is_none() =>
            {
                Ok(Self {
                    text: text.to_owned(),
                    uri,
                })
            }
            _ => Err(format!(
                "{text:?} is not an http(s) URL such as \"https://api.vidu.cn\""
            )),
        }
    }

    /// The URL as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `http://` (the key would travel in clear text), false for `https://`.
    pub fn is_plain_http(&self) -> bool {
        self.uri.scheme_str() == Some("http")
    }

    /// The host, as written (an IPv6 address keeps its brackets).
    pub fn host(&self) -> &str {
        self.uri.host().unwrap_or_default()
    }
}

impl Default for BaseUrl {
    /// `https://api.vidu.cn`.
    fn default() -> Self {
        Self {
            text: "https://api.vidu.cn".to_owned(),
            uri: awc::http::Uri::from_static("https://api.vidu.cn"),
        }
    }
}

written_as_given!(BaseUrl);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_is_found_once_and_prints_its_name() {
        let z = Zone::parse("Europe/Berlin").unwrap();
        assert_eq!(z.as_str(), "Europe/Berlin");
        assert_eq!(z.tz(), &TimeZone::get("Europe/Berlin").unwrap());
        assert_eq!(
            toml::Value::try_from(&z).unwrap().as_str(),
            Some("Europe/Berlin")
        );
        assert_eq!(
            Zone::parse("Mars/Olympus").unwrap_err(),
            "\"Mars/Olympus\" is not an IANA time zone such as \"Asia/Shanghai\""
        );
        assert!(Zone::parse("").is_err());
        let default = Zone::default();
        assert_eq!(default, Zone::parse("Asia/Shanghai").unwrap());
    }

    #[test]
    fn a_base_url_is_an_absolute_http_url_and_prints_as_written() {
        for ok in [
            "https://api.vidu.cn",
            "https://api.vidu.cn/",
            "http://127.0.0.1:9000/prefix",
            "http://[::1]:8080",
        ] {
            let u = BaseUrl::parse(ok).unwrap();
            assert_eq!(u.as_str(), ok);
            assert_eq!(toml::Value::try_from(&u).unwrap().as_str(), Some(ok));
        }
        for bad in [
            "",
            "not a url",
            "ftp://api.vidu.cn",
            "api.vidu.cn",
            "/v1",
            "https://api.vidu.cn/?x=1",
        ] {
            assert_eq!(
                BaseUrl::parse(bad).unwrap_err(),
                format!("{bad:?} is not an http(s) URL such as \"https://api.vidu.cn\"")
            );
        }
        let u = BaseUrl::parse("http://[::1]:8080").unwrap();
        assert!(u.is_plain_http());
        assert_eq!(u.host(), "[::1]");
        assert!(!BaseUrl::default().is_plain_http());
        assert_eq!(
            BaseUrl::default(),
            BaseUrl::parse("https://api.vidu.cn").unwrap()
        );
    }

    #[derive(Debug, Deserialize)]
    struct Limit {
        #[serde(default, deserialize_with = "at_least_one")]
        n: Option<NonZeroU32>,
    }

    #[test]
    fn a_limit_is_at_least_one_or_absent() {
        let limit = |text: &str| toml::from_str::<Limit>(text).map(|l| l.n);
        assert_eq!(limit("n = 3").unwrap(), NonZeroU32::new(3));
        assert_eq!(limit("").unwrap(), None);
        let e = limit("n = 0").unwrap_err();
        assert_eq!(e.message(), ZERO_LIMIT);
    }
}
