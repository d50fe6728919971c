//! Where the gateway may relay task states: `callbacks.relay_hosts` (exact hosts or `*.suffix`), and the check of
//! a caller's `callback_url` at create time, so that the gateway never fetches a URL ops did not allow.

use crate::config::CallbacksSettings;

pub use crate::config::HostPattern;

/// Whether `host` matches one of `callbacks.relay_hosts` (parsed at load).
pub fn allowed(settings: &CallbacksSettings, host: &str) -> bool {
    settings.relay_hosts.iter().any(|p| p.matches(host))
}

/// Checks a caller's `callback_url` for a create by `team` while relaying is on: a URL the gateway may relay to,
/// for a team with a relay secret. The error is the message of a 400 `FieldInvalid` on `callback_url`.
pub fn check_callback_url(
    settings: &CallbacksSettings,
    team: &str,
    raw: &str,
) -> Result<url::Url, String> {
    let url =
        url::Url::parse(raw).map_err(|e| format!("callback_url is not an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("callback_url must be an http:// or https:// URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("callback_url must not carry credentials".into());
    }
    let host = url.host_str().unwrap_or_default();
    if !allowed(settings, host) {
        return Err(format!(
            "the gateway relays task callbacks only to hosts listed in callbacks.relay_hosts, and {host:?} is \
             not one of them: ask the gateway's operators to add it, or leave callback_url out and poll \
             GET /ent/v2/tasks/{{id}}/creations"
        ));
    }
    if settings.secret_for(team).is_none() {
        return Err(format!(
            "no relay secret is configured for team {team:?}, so callbacks to it could not be signed: ask the \
             gateway's operators to set callbacks.teams.{team}.secret (or callbacks.relay_secret), or leave \
             callback_url out"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_suffix_patterns() {
        let exact = HostPattern::parse("Hooks.Example.com").unwrap();
        assert!(exact.matches("hooks.example.com"));
        assert!(exact.matches("HOOKS.example.com."));
        assert!(!exact.matches("evilhooks.example.com"));
        let suffix = HostPattern::parse("*.corp.example").unwrap();
        assert!(suffix.matches("a.corp.example"));
        assert!(suffix.matches("x.y.corp.example"));
        assert!(!suffix.matches("corp.example"));
        assert!(!suffix.matches("evilcorp.example"));
        for bad in ["", "*.", "a..b", "http://x", "*", "a b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn settings(hosts: &[&str], secret: &str) -> CallbacksSettings {
        CallbacksSettings {
            relay_hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            relay_secret: crate::config::Secret::new(secret),
            ..Default::default()
        }
    }

    #[test]
    fn a_callback_url_needs_an_allowed_host_and_a_secret() {
        let s = settings(&["*.corp.example"], "s3cret");
        assert!(check_callback_url(&s, "t", "https://hooks.corp.example/cb?x=1").is_ok());
        let e = check_callback_url(&s, "t", "https://evil.example/cb").unwrap_err();
        assert!(e.contains("callbacks.relay_hosts"), "{e}");
        let e = check_callback_url(&s, "t", "ftp://hooks.corp.example/").unwrap_err();
        assert!(e.contains("http"), "{e}");
        let e = check_callback_url(&s, "t", "not a url").unwrap_err();
        assert!(e.contains("absolute URL"), "{e}");
        let e = check_callback_url(&s, "t", "https://u:p@hooks.corp.example/").unwrap_err();
        assert!(e.contains("credentials"), "{e}");
        let no_secret = settings(&["*.corp.example"], "");
        let e = check_callback_url(&no_secret, "video", "https://a.corp.example/").unwrap_err();
        assert!(e.contains("callbacks.teams.video.secret"), "{e}");
    }
}
