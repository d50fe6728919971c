//! Environment overrides: `VIDU_GW__SECTION__KEY=value` sets `section.key` (lowercased; `__` separates the
//! levels, e.g. `VIDU_GW__POLICY__TEAMS__MARKETING__DAILY_CREDITS`). An environment value is a string by nature:
//! it is parsed to the type the key takes (a number key accepts `"200"`, a boolean `true`/`false`, a list is
//! comma-separated). A variable that names no key is an error that names the variable; its value is never shown.

use std::collections::{BTreeMap, HashMap};

use toml::Value;

use super::schema::{Kind, Schema, Seg};
use super::shape::{expected, key_path, unknown_key};

/// Variables that start with this are overrides.
pub const PREFIX: &str = "VIDU_GW__";

/// How a problem blamed on a variable starts: `environment variable VIDU_GW__SERVER__LISTN: …`.
pub const BLAME: &str = "environment variable ";

/// Sets every override in `doc`. Returns, for each key set, the variable that set it (to blame it for a
/// problem with the value); problems with the variables themselves go to `problems`.
pub fn apply(
    doc: &mut toml::Table,
    env: &HashMap<String, String>,
    problems: &mut Vec<String>,
) -> HashMap<String, String> {
    let schema = Schema::of_settings();
    let mut set = HashMap::new();
    let sorted: BTreeMap<&String, &String> = env.iter().collect();
    for (var, raw) in sorted {
        let Some(rest) = var.strip_prefix(PREFIX) else {
            continue;
        };
        let keys: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        match override_value(schema, &keys, raw) {
            Ok((path, value)) => {
                insert(doc, &keys, value);
                set.insert(path, var.clone());
            }
            Err(why) => problems.push(format!("{BLAME}{var}: {why}")),
        }
    }
    set
}

/// The display path a variable names and its value, parsed to the key's type.
fn override_value(schema: &Schema, keys: &[String], raw: &str) -> Result<(String, Value), String> {
    let mut spath = Vec::new();
    let mut path = String::new();
    for key in keys {
        match schema.kind(&spath) {
            Some(Kind::Struct(fields)) => match fields.iter().find(|f| f.name == key) {
                Some(f) => spath.push(Seg::Field(f.name)),
                None => return Err(unknown_key(&path, key, fields)),
            },
            Some(Kind::Map) if !key.is_empty() => spath.push(Seg::Entry),
            _ => {
                return Err(format!("{} is not a known key", key_path(&path, key)));
            }
        }
        path = key_path(&path, key);
    }
    let kind = schema.kind(&spath).cloned().unwrap_or(Kind::Any);
    let value = match kind {
        Kind::List => {
            spath.push(Seg::Elem);
            let elem = schema.kind(&spath).cloned().unwrap_or(Kind::Any);
            let items = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    scalar(&elem, s)
                        .ok_or_else(|| format!("{path}: every item must be {}", expected(&elem)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Value::Array(items)
        }
        Kind::Struct(_) | Kind::Map => {
            return Err(format!(
                "{path} is a table, not a value: name one of its keys (e.g. {PREFIX}{}__KEY)",
                keys.join("__").to_uppercase()
            ));
        }
        kind => scalar(&kind, raw).ok_or_else(|| format!("{path} must be {}", expected(&kind)))?,
    };
    Ok((path, value))
}

/// `raw` as a value of `kind`; `None` when it cannot be one. The value is never echoed (it may be a secret).
fn scalar(kind: &Kind, raw: &str) -> Option<Value> {
    let text = raw.trim();
    match kind {
        Kind::Bool => match text.to_ascii_lowercase().as_str() {
            "true" => Some(Value::Boolean(true)),
            "false" => Some(Value::Boolean(false)),
            _ => None,
        },
        Kind::Int { .. } => text.parse::<i64>().ok().map(Value::Integer),
        Kind::Float => text.parse::<f64>().ok().map(Value::Float),
        Kind::List | Kind::Map | Kind::Struct(_) => None,
        // Strings, enum names and values of their own type (prices: exact decimals) are taken as written.
        Kind::Str | Kind::Enum(_) | Kind::Any => Some(Value::String(raw.to_owned())),
    }
}

/// Sets `doc[keys…] = value`, creating the tables on the way (replacing a non-table in the way).
fn insert(doc: &mut toml::Table, keys: &[String], value: Value) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut table = doc;
    for k in parents {
        let slot = table
            .entry(k.clone())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        if !slot.is_table() {
            *slot = Value::Table(toml::Table::new());
        }
        let Value::Table(t) = slot else { return };
        table = t;
    }
    table.insert(last.clone(), value);
}
