//! Claims → identity: dotted claim paths (`realm_access.roles`, nested only), URI claim names, string-or-array
//! team and role claims.

use serde_json::Value;

/// Follows a dotted path (`realm_access.roles`) into the claims: the nested path, and only that. A top-level
/// claim literally named `realm_access.roles` is never read for it: where an identity provider lets users name
/// their own attributes, such a claim would otherwise stand in for the nested one (admin spoofing).
///
/// A path containing `:` is a URI claim name (RFC 7519 §4.2 collision-resistant names such as
/// `https://example.com/team`, dots included): it is one top-level claim, never split.
pub fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    segments(path).try_fold(claims, |v, part| v.get(part))
}

/// The names along a claim path: a URI claim name whole, else the dot-separated parts (`vidu-gateway token`
/// builds its claims with the same rule).
pub fn segments(path: &str) -> impl Iterator<Item = &str> {
    let uri = path.contains(':');
    path.split(move |c| c == '.' && !uri)
}

/// A string claim, or the strings of an array claim (non-string elements ignored; empty strings dropped).
pub fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_reach_nested_claims() {
        let c = json!({"realm_access": {"roles": ["a", "b"]}, "sub": "u"});
        assert_eq!(strings(lookup(&c, "realm_access.roles")), ["a", "b"]);
        assert_eq!(strings(lookup(&c, "sub")), ["u"]);
        assert!(lookup(&c, "realm_access.nope").is_none());
    }

    #[test]
    fn a_uri_claim_name_is_found_whole_and_never_split() {
        let c = json!({"https://example.com/team": "t", "https://example": {"com/team": "spoof"}});
        assert_eq!(strings(lookup(&c, "https://example.com/team")), ["t"]);
        let c = json!({"https://example": {"com/team": "spoof"}});
        assert!(lookup(&c, "https://example.com/team").is_none());
    }

    #[test]
    fn a_literal_claim_named_like_a_dotted_path_is_ignored() {
        let c = json!({"realm_access.roles": ["admin"], "realm_access": {"roles": ["user"]}});
        assert_eq!(strings(lookup(&c, "realm_access.roles")), ["user"]);
        let c = json!({"realm_access.roles": ["admin"]});
        assert!(lookup(&c, "realm_access.roles").is_none());
    }

    #[test]
    fn empty_strings_count_as_missing() {
        assert!(strings(Some(&json!(""))).is_empty());
        assert_eq!(strings(Some(&json!(["", 3, "x"]))), ["x"]);
    }
}
