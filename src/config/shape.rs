//! Checks the parsed TOML document against the schema before anything is converted: unknown keys, values of the
//! wrong type, numbers out of range, names not in an enum, missing required keys. Every problem is reported (in
//! the config's own words, naming the key) and the value at fault is removed, so the rest can still be checked.

use std::collections::HashMap;

use toml::Value;

use super::schema::{Field, Kind, Schema, Seg};

/// The keys a check removed and the problems it found.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    /// Display paths of the removed values (`policy.defaults.daily_credits`, `models.x`).
    pub removed: Vec<String>,
}

/// Checks `doc` in place. `from_env` maps a display path to the environment variable that set it, so a problem
/// there is blamed on the variable.
pub fn check(doc: &mut toml::Table, from_env: &HashMap<String, String>) -> Report {
    let mut w = Walker {
        schema: Schema::of_settings(),
        from_env,
        report: Report::default(),
    };
    if let Some(Kind::Struct(fields)) = w.schema.kind(&[]).cloned() {
        w.table(&mut Vec::new(), "", doc, &fields);
    }
    w.report
}

/// `parent.key`, with the key quoted when it is not a bare TOML key (`policy.users."alice@example.com"`).
pub fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// The kind of a TOML value, as a sentence fragment.
pub fn describe(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "a whole number",
        Value::Float(_) => "a decimal number",
        Value::Boolean(_) => "true/false",
        Value::Datetime(_) => "a date/time",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// What a key of `kind` takes, as a sentence fragment.
pub fn expected(kind: &Kind) -> String {
    match kind {
        Kind::Bool => "true or false".into(),
        Kind::Int { .. } => "a whole number".into(),
        Kind::Float => "a number".into(),
        Kind::Str => "a string (in quotes)".into(),
        Kind::Enum(variants) => format!("one of {}", quoted(variants)),
        Kind::List => "a list such as [\"a\", \"b\"]".into(),
        Kind::Map | Kind::Struct(_) => "a table".into(),
        Kind::Any => "a value".into(),
    }
}

fn quoted(variants: &[&str]) -> String {
    variants
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closest of `names` to `wrong` when it is a likely typo.
pub fn suggestion<'a>(wrong: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = if wrong.chars().count() <= 4 { 1 } else { 2 };
    names
        .into_iter()
        .map(|n| (edit_distance(wrong, n), n))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// "server.lisen is not a known key (did you mean server.listen?)".
pub fn unknown_key(parent: &str, key: &str, fields: &[Field]) -> String {
    let path = key_path(parent, key);
    let names = fields.iter().map(|f| f.name);
    let within = if parent.is_empty() {
        "the top level".to_owned()
    } else {
        format!("[{parent}]")
    };
    match suggestion(key, names.clone()) {
        Some(s) => format!(
            "{path} is not a known key (did you mean {}?)",
            key_path(parent, s)
        ),
        None => format!(
            "{path} is not a known key; {within} accepts {}",
            names.collect::<Vec<_>>().join(", ")
        ),
    }
}

struct Walker<'a> {
    schema: &'a Schema,
    from_env: &'a HashMap<String, String>,
    report: Report,
}

impl Walker<'_> {
    fn problem(&mut self, path: &str, message: String) {
        let owner = path.split('[').next().unwrap_or(path);
        let message = match self.from_env.get(owner) {
            Some(var) => format!("{}{var}: {message}", super::env::BLAME),
            None => message,
        };
        self.report.problems.push(message);
    }

    fn remove(&mut self, path: String) {
        self.report.removed.push(path);
    }

    /// Checks one value; false when it is unusable (already reported): the caller removes it.
    fn value(&mut self, spath: &mut Vec<Seg>, path: &str, v: &mut Value) -> bool {
        let Some(kind) = self.schema.kind(spath).cloned() else {
            return true; // not described: the strict conversion afterwards decides
        };
        match (kind, v) {
            (Kind::Struct(fields), Value::Table(t)) => self.table(spath, path, t, &fields),
            (Kind::Map, Value::Table(t)) => {
                let keys: Vec<String> = t.keys().cloned().collect();
                for k in keys {
                    let child = key_path(path, &k);
                    spath.push(Seg::Entry);
                    let ok = t.get_mut(&k).is_none_or(|c| self.value(spath, &child, c));
                    spath.pop();
                    if !ok {
                        t.remove(&k);
                        self.remove(child);
                    }
                }
                true
            }
            (Kind::List, Value::Array(items)) => {
                let mut ok = true;
                spath.push(Seg::Elem);
                for (i, item) in items.iter_mut().enumerate() {
                    ok &= self.value(spath, &format!("{path}[{i}]"), item);
                }
                spath.pop();
                ok
            }
            (kind @ (Kind::Struct(_) | Kind::Map | Kind::List), other) => {
                let message = format!(
                    "{path} must be {}, not {}",
                    expected(&kind),
                    describe(other)
                );
                self.problem(path, message);
                false
            }
            (kind, v) => match self.leaf(&kind, spath, path, v) {
                None => true,
                Some(message) => {
                    self.problem(path, message);
                    false
                }
            },
        }
    }

    /// A struct's table: unknown keys and missing required keys; each known key checked. False when a required
    /// key is missing (the table cannot be converted).
    fn table(
        &mut self,
        spath: &mut Vec<Seg>,
        path: &str,
        t: &mut toml::Table,
        fields: &[Field],
    ) -> bool {
        let keys: Vec<String> = t.keys().cloned().collect();
        let mut complete = true;
        let mut refused = Vec::new();
        for k in keys {
            let child = key_path(path, &k);
            let Some(field) = fields.iter().find(|f| f.name == k) else {
                let message = unknown_key(path, &k, fields);
                self.problem(&child, message);
                t.remove(&k);
                self.remove(child);
                continue;
            };
            spath.push(Seg::Field(field.name));
            let ok = t.get_mut(&k).is_none_or(|c| self.value(spath, &child, c));
            spath.pop();
            if !ok {
                t.remove(&k);
                self.remove(child);
                refused.push(field.name);
            }
        }
        for f in fields
            .iter()
            .filter(|f| f.required && !t.contains_key(f.name))
        {
            // A required key with a wrong value is already reported.
            if !refused.contains(&f.name) {
                let message = format!(
                    "{} is required in [{path}] ({})",
                    key_path(path, f.name),
                    required_list(fields)
                );
                self.problem(path, message);
            }
            complete = false;
        }
        complete
    }

    /// The problem with a single value, if any: its TOML type first, then, for a value its type parses (a time
    /// zone, a URL, an hour window, a limit of at least 1), what the type says, after the key. A string's type
    /// quotes the value (`policy.timezone = "Mars/Olympus" is not an IANA time zone …`, inside a list
    /// `policy.defaults.immediate_hours: "9-17" is not a window …`); a number's says what it must be
    /// (`policy.defaults.burst must be at least 1 …`).
    fn leaf(&self, kind: &Kind, spath: &[Seg], path: &str, v: &Value) -> Option<String> {
        if let Some(problem) = self.leaf_type(kind, spath, path, v) {
            return Some(problem);
        }
        if !self.schema.parsed(spath) {
            return None;
        }
        let why = self.schema.check(spath, v).err()?;
        Some(match (spath.last(), v) {
            (Some(Seg::Elem), _) => {
                let list = path.rsplit_once('[').map_or(path, |(list, _)| list);
                format!("{list}: {why}")
            }
            (_, Value::String(_)) => format!("{path} = {why}"),
            _ => format!("{path} {why}"),
        })
    }

    /// The problem with a value's TOML type or range, if any.
    fn leaf_type(&self, kind: &Kind, spath: &[Seg], path: &str, v: &Value) -> Option<String> {
        let unquote = |s: &str, what: &str| {
            format!(
                "{path} = \"{s}\": must be {what}, not a string: write {} without quotes",
                s.trim()
            )
        };
        match (kind, v) {
            (Kind::Bool, Value::Boolean(_)) => None,
            (Kind::Bool, Value::String(s)) if matches!(s.trim(), "true" | "false") => {
                Some(unquote(s, "true or false"))
            }
            (Kind::Int { min, max }, Value::Integer(i)) => {
                let i = i128::from(*i);
                if i < *min {
                    Some(if *min == 0 {
                        format!("{path} = {i}: must be 0 or more")
                    } else {
                        format!("{path} = {i}: must be at least {min}")
                    })
                } else if i > *max {
                    Some(format!("{path} = {i}: must be at most {max}"))
                } else {
                    None
                }
            }
            (Kind::Int { .. }, Value::Float(f)) => {
                Some(format!("{path} = {f}: must be a whole number"))
            }
            (Kind::Int { .. }, Value::String(s)) if s.trim().parse::<i128>().is_ok() => {
                Some(unquote(s, "a number"))
            }
            (Kind::Float, Value::Float(_) | Value::Integer(_)) => None,
            (Kind::Float, Value::String(s)) if s.trim().parse::<f64>().is_ok() => {
                Some(unquote(s, "a number"))
            }
            (Kind::Str, Value::String(_)) => None,
            (Kind::Enum(variants), Value::String(s)) if variants.contains(&s.as_str()) => None,
            (Kind::Enum(variants), Value::String(s)) => Some(format!(
                "{path} = {s:?}: use one of {}",
                variants.join(", ")
            )),
            (Kind::Any, v) => match self.schema.check(spath, v) {
                Ok(()) => None,
                Err(e) if e.contains("did not match any variant") => {
                    Some(format!("{path} cannot be {}", describe(v)))
                }
                Err(e) => Some(format!("{path}: {e}")),
            },
            // The value itself is not shown: a secret may have been written under the wrong key.
            (kind, v) => Some(format!(
                "{path} must be {}, not {}",
                expected(kind),
                describe(v)
            )),
        }
    }
}

fn required_list(fields: &[Field]) -> String {
    let names: Vec<&str> = fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    format!("it needs {}", names.join(", "))
}
