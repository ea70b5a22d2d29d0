//! Layering: the built-in defaults, then a TOML file, then `DEREGD_<SECTION>__<KEY>` environment
//! variables, merged as TOML values and deserialized strictly: a value of the wrong type (a
//! float or a string where an integer belongs) is refused naming its key, never coerced.
//! An environment value is typed by the default it replaces, since the environment only holds
//! strings: a plain integer string for an integer key, `true`/`false` for a boolean, a list
//! separated by `;` (or `,` when it has no `;`) for an array.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{bad, ConfigError, Settings, DEFAULT_TOML};

/// The merged layers and the keys an operator set (in the file or the environment).
pub(super) struct Layers {
    pub(super) table: Table,
    pub(super) set: BTreeSet<String>,
}

/// Defaults, then `file` (or `$DEREGD_CONFIG`), then the `DEREGD_*__*` variables of `env`.
pub(super) fn layers(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Layers, ConfigError> {
    let mut table: Table = DEFAULT_TOML
        .parse()
        .map_err(|e| bad("", format!("built-in defaults: {e}")))?;
    let mut set = BTreeSet::new();
    let file = file
        .map(Path::to_path_buf)
        .or_else(|| env.get("DEREGD_CONFIG").map(PathBuf::from));
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
        let overrides: Table = text
            .parse()
            .map_err(|e| bad("", format!("{}: {e}", path.display())))?;
        merge(&mut table, overrides, "", &mut set);
    }
    // Only DEREGD_<SECTION>__<KEY> variables are settings; DEREGD_CONFIG and friends are not.
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("DEREGD_") else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        let key = path.join(".");
        let value = typed(lookup(&table, &path), raw)
            .map_err(|why| bad(&key, format!("{name}={raw:?} {why}")))?;
        insert(&mut table, &path, value);
        set.insert(key);
    }
    Ok(Layers { table, set })
}

/// Deserializes the merged layers, naming the key of the first value that does not fit.
pub(super) fn deserialize(table: Table) -> Result<Settings, ConfigError> {
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        bad(&key, e.into_inner().to_string())
    })
}

/// Merges `overrides` into `base`, tables key by key, anything else replaced whole; records
/// the dotted path of every value set.
fn merge(base: &mut Table, overrides: Table, prefix: &str, set: &mut BTreeSet<String>) {
    for (key, value) in overrides {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            (Some(Value::Table(inner)), Value::Table(over)) => merge(inner, over, &path, set),
            (_, Value::Table(over)) => {
                let mut fresh = Table::new();
                merge(&mut fresh, over, &path, set);
                base.insert(key, Value::Table(fresh));
            }
            (_, value) => {
                set.insert(path);
                base.insert(key, value);
            }
        }
    }
}

fn lookup<'t>(table: &'t Table, path: &[String]) -> Option<&'t Value> {
    let (last, parents) = path.split_last()?;
    let mut current = table;
    for part in parents {
        current = current.get(part)?.as_table()?;
    }
    current.get(last)
}

fn insert(table: &mut Table, path: &[String], value: Value) {
    let (last, parents) = path.split_last().expect("a key has a name");
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        current = entry.as_table_mut().expect("made a table");
    }
    current.insert(last.clone(), value);
}

/// An environment string as the TOML value it stands for, typed by the value it replaces
/// (`None` for a key without a default, such as an entry of `[limits.instance_tps]`: an
/// integer when it is one, else a string).
fn typed(default: Option<&Value>, raw: &str) -> Result<Value, String> {
    let text = raw.trim();
    match default {
        Some(Value::Integer(_)) => integer(text)
            .map(Value::Integer)
            .ok_or_else(|| "is not a whole number".to_string()),
        Some(Value::Float(_)) => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float)
            .ok_or_else(|| "is not a number".to_string()),
        Some(Value::Boolean(_)) => match text {
            "true" => Ok(Value::Boolean(true)),
            "false" => Ok(Value::Boolean(false)),
            _ => Err("is not true or false".to_string()),
        },
        Some(Value::Array(items)) => {
            let separator = if text.contains(';') { ';' } else { ',' };
            let element = items.first();
            text.split(separator)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|item| typed(element, item))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        Some(_) => Ok(Value::String(raw.to_string())),
        None => Ok(integer(text).map_or_else(|| Value::String(raw.to_string()), Value::Integer)),
    }
}

/// A plain integer: optional minus sign, then digits only (no `+`, no `_`, no exponent).
fn integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_strings_take_the_type_of_the_default_they_replace() {
        assert_eq!(
            typed(Some(&Value::Integer(1)), " 280 "),
            Ok(Value::Integer(280))
        );
        assert!(typed(Some(&Value::Integer(1)), "280.6").is_err());
        assert!(typed(Some(&Value::Integer(1)), "true").is_err());
        assert!(typed(Some(&Value::Integer(1)), "+5").is_err());
        assert_eq!(
            typed(Some(&Value::Float(0.5)), "0.2"),
            Ok(Value::Float(0.2))
        );
        assert_eq!(
            typed(Some(&Value::Boolean(false)), "true"),
            Ok(Value::Boolean(true))
        );
        assert_eq!(
            typed(Some(&Value::String("x".into())), "12345"),
            Ok(Value::String("12345".into())),
            "a numeric-looking string stays a string"
        );
        assert_eq!(
            typed(Some(&Value::Array(vec![])), "10.0.0.5, 10.0.0.6"),
            Ok(Value::Array(vec![
                Value::String("10.0.0.5".into()),
                Value::String("10.0.0.6".into())
            ]))
        );
        assert_eq!(
            typed(
                Some(&Value::Array(vec![])),
                "Mon-Fri 01:00-06:00; Sat,Sun 00:00-24:00"
            ),
            Ok(Value::Array(vec![
                Value::String("Mon-Fri 01:00-06:00".into()),
                Value::String("Sat,Sun 00:00-24:00".into())
            ]))
        );
        assert_eq!(typed(None, "50"), Ok(Value::Integer(50)));
    }
}
