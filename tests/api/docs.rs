//! The documented configuration cannot drift: README's reference table, `config/default.toml` and the code's
//! defaults name the same keys with the same defaults; every config file shipped in the repository validates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use toml::Value;
use vidu_gateway::config::{Settings, load_with_env};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `models.viduq2.durations` → `models.<name>.durations`, likewise teams and users.
fn normalize(path: &[String]) -> String {
    let mut p: Vec<String> = path.to_vec();
    match p.as_slice() {
        [a, _, ..] if a == "models" => p[1] = "<name>".into(),
        [a, b, _, ..] if a == "policy" && b == "teams" => p[2] = "<team>".into(),
        [a, b, _, ..] if a == "policy" && b == "users" => p[2] = "<user>".into(),
        [a, b, _, ..] if a == "callbacks" && b == "teams" => p[2] = "<team>".into(),
        _ => {}
    }
    // Catalog entries are documented per key: their inline tables (durations, credits) are one value.
    if p.first().map(String::as_str) == Some("models") {
        p.truncate(3);
    }
    p.join(".")
}

fn flatten(v: &Value, path: &mut Vec<String>, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                path.push(k.clone());
                flatten(v, path, out);
                path.pop();
            }
        }
        other => {
            out.insert(normalize(path), other.clone());
        }
    }
}

/// Keys set in default.toml, plus the keys it documents in comments (`# key = value` under a section).
fn default_toml_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("config/default.toml")).unwrap();
    let mut out = BTreeMap::new();
    flatten(
        &text.parse::<toml::Table>().map(Value::Table).unwrap(),
        &mut Vec::new(),
        &mut out,
    );
    let mut keys: BTreeSet<String> = out.into_keys().collect();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
        } else if let Some(rest) = line.strip_prefix("# ")
            && let Some((key, _)) = rest.split_once(" = ")
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            let path: Vec<String> = format!("{section}.{key}")
                .split('.')
                .map(str::to_owned)
                .collect();
            keys.insert(normalize(&path));
        }
    }
    // Per-team and per-user tables accept any [policy.defaults] key; README documents that as one row each.
    keys.retain(|k| {
        (!k.starts_with("policy.teams.<team>.") || k.starts_with("policy.teams.<team>.team_"))
            && !k.starts_with("policy.users.<user>.")
    });
    keys.insert("policy.teams.<team>.<policy.defaults key>".into());
    keys.insert("policy.users.<user>.<policy.defaults key>".into());
    // A team's relay secret is shown in a comment as a table (`[callbacks.teams.video-team]`).
    keys.insert("callbacks.teams.<team>.secret".into());
    keys.insert("callbacks.teams.<team>.secret_file".into());
    keys
}

/// README's reference rows: key → default column.
fn readme_rows() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = text.split("### Configuration reference").nth(1).unwrap();
    let mut rows = BTreeMap::new();
    for line in section
        .lines()
        .skip_while(|l| !l.starts_with("| key"))
        .skip(2)
    {
        if !line.starts_with("| `") {
            break;
        }
        let cols: Vec<&str> = line.split(" | ").collect();
        let key = cols[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_owned();
        rows.insert(key, cols[1].trim().to_owned());
    }
    rows
}

#[test]
fn readme_and_default_toml_document_the_same_keys() {
    let readme: BTreeSet<String> = readme_rows().into_keys().collect();
    let file = default_toml_keys();
    let only_readme: Vec<_> = readme.difference(&file).collect();
    let only_file: Vec<_> = file.difference(&readme).collect();
    assert!(
        only_readme.is_empty() && only_file.is_empty(),
        "README only: {only_readme:?}\ndefault.toml only: {only_file:?}"
    );
}

#[test]
fn every_key_the_code_knows_is_documented_with_its_code_default() {
    let rows = readme_rows();
    let mut code = BTreeMap::new();
    let defaults = Value::try_from(Settings::default()).unwrap();
    flatten(&defaults, &mut Vec::new(), &mut code);
    for (key, value) in &code {
        let documented = rows
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in README's reference"));
        if value.as_str() == Some(vidu_gateway::config::REDACTED) {
            continue; // a secret with a code default (state.redis_url): shown redacted by design
        }
        let expected = format!("`{value}`");
        assert_eq!(documented, &expected, "README default of {key}");
    }
    for (key, documented) in &rows {
        if !code.contains_key(key) && !key.starts_with("models.") {
            assert!(
                documented.starts_with("unset"),
                "{key}: the code has no default, README says {documented}"
            );
        }
    }
    // Optional keys (unset by default) are known to the code too: a config setting them loads.
    let known = Value::try_from(
        vidu_gateway::config::load_with_env(None, Default::default())
            .unwrap()
            .settings,
    )
    .unwrap();
    let mut set = BTreeMap::new();
    flatten(&known, &mut Vec::new(), &mut set);
    assert!(set.contains_key("policy.defaults.requests_per_minute"));
}

#[test]
fn every_config_file_shipped_in_the_repository_is_valid() {
    let secret_dir = tempfile::tempdir().unwrap();
    let key = secret_dir.path().join("vidu_api_key");
    std::fs::write(&key, "shipped-config-test-key\n").unwrap();
    let mut checked = 0;
    for dir in ["config", "deploy"] {
        for entry in std::fs::read_dir(Path::new(ROOT).join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            // Secrets arrive as deployments give them: a key file path through the environment.
            let text = std::fs::read_to_string(&path).unwrap();
            let env = [
                ("api_key_file", "VIDU_GW__UPSTREAM__API_KEY_FILE"),
                ("redis_password_file", "VIDU_GW__STATE__REDIS_PASSWORD_FILE"),
            ]
            .into_iter()
            .filter(|(file_key, _)| text.contains(file_key))
            .map(|(_, var)| (var.to_owned(), key.display().to_string()))
            .collect();
            if let Err(e) = load_with_env(Some(&path), env) {
                panic!("{} is invalid: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "config/default.toml and deploy/production.toml at least"
    );
}
