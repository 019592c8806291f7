//! Merging the configuration's layers: TOML files and `section.key` overrides from the
//! environment, each refused when its key is not in the defaults, and coerced to the default's
//! type.

use super::*;

pub(super) fn read_toml(path: &Path) -> Result<toml::Value, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })
}

/// Merges `layer` into `base`; a key absent from `base` is refused (it is unknown).
pub(super) fn merge(base: &mut toml::Value, layer: toml::Value, prefix: &str) -> Result<(), ConfigError> {
    let (Some(base_t), toml::Value::Table(layer_t)) = (base.as_table_mut(), layer) else {
        return Err(invalid(prefix, "expected a table"));
    };
    for (k, v) in layer_t {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        // Free-form maps accept any key.
        if key.starts_with("kafka.properties") {
            base_t.insert(k, v);
            continue;
        }
        match base_t.get_mut(&k) {
            None => return Err(invalid(&key, "unknown key")),
            Some(existing @ toml::Value::Table(_)) if v.is_table() && key != "kafka.properties" => {
                merge(existing, v, &key)?
            }
            Some(existing) => *existing = v,
        }
    }
    Ok(())
}

/// Sets a dotted key from an environment string, coerced to the type of the default value. A
/// `kafka.properties.<name>` key sets the librdkafka property `<name>` (dots and all).
pub(super) fn set_path(root: &mut toml::Value, key: &str, raw: &str) -> Result<(), ConfigError> {
    if let Some(name) = key.strip_prefix("kafka.properties.") {
        let props = root
            .get_mut("kafka")
            .and_then(|k| k.get_mut("properties"))
            .and_then(toml::Value::as_table_mut)
            .ok_or_else(|| invalid(key, "unknown key"))?;
        props.insert(name.to_string(), toml::Value::String(raw.to_string()));
        return Ok(());
    }
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        let table = cur.as_table_mut().ok_or_else(|| invalid(key, "unknown key"))?;
        if last {
            let value = match table.get(*part) {
                None => return Err(invalid(key, "unknown key")),
                Some(existing) => coerce(key, existing, raw)?,
            };
            table.insert(part.to_string(), value);
            return Ok(());
        }
        cur = table.get_mut(*part).ok_or_else(|| invalid(key, "unknown key"))?;
    }
    Ok(())
}

pub(super) fn coerce(key: &str, like: &toml::Value, raw: &str) -> Result<toml::Value, ConfigError> {
    Ok(match like {
        toml::Value::Boolean(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => toml::Value::Boolean(true),
            "false" | "0" | "no" => toml::Value::Boolean(false),
            _ => return Err(invalid(key, format!("`{raw}` is not a boolean"))),
        },
        toml::Value::Integer(_) => {
            toml::Value::Integer(raw.parse().map_err(|_| invalid(key, format!("`{raw}` is not an integer")))?)
        }
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        toml::Value::Table(_) => return Err(invalid(key, "is a section, not a value")),
        _ => toml::Value::String(raw.to_string()),
    })
}
