//! Claims → identity: dotted claim paths (`realm_access.roles`), string-or-array team and role claims.

use serde_json::Value;

/// Follows a dotted path (`realm_access.roles`) into the claims. A claim whose own name contains a dot
/// (`"https://example.com/team"`) is found too: the whole path is tried as one key first.
pub fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
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
    fn a_claim_name_with_dots_is_found_whole() {
        let c = json!({"https://example.com/team": "t"});
        assert_eq!(strings(lookup(&c, "https://example.com/team")), ["t"]);
    }

    #[test]
    fn empty_strings_count_as_missing() {
        assert!(strings(Some(&json!(""))).is_empty());
        assert_eq!(strings(Some(&json!(["", 3, "x"]))), ["x"]);
    }
}
