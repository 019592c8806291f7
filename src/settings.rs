//! Layered configuration: `config/default.toml`, then `config/<environment>.toml`, then
//! environment variables (the spec's names, plus `DEVCYCLE__SECTION__KEY` for any other key).
//!
//! Invariants: every key must exist in `default.toml` (unknown keys are refused with the key's
//! path), values are type-checked and validated before anything starts, and secrets are wrapped
//! in [`Secret`] so they never reach a log line or `devcycle config`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variables with the spec's names and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("ENVIRONMENT", "environment"),
    ("DEBUG", "debug"),
    ("LOG_LEVEL", "log_level"),
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "redis.url"),
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka.bootstrap_servers"),
    ("SCHEMA_REGISTRY_URL", "schema_registry.url"),
    ("SECRET_KEY", "secret_key"),
    // The OpenTelemetry SDK's standard names (DEVCYCLE__TELEMETRY__* still wins).
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "telemetry.otlp_headers"),
    ("OTEL_SERVICE_NAME", "telemetry.service_name"),
];

const DEV_SECRET: &str = "dev-insecure-secret-key-change-me-0000000000";

/// At most this many group-commit writers per processor (each holds a Postgres connection).
pub const MAX_TASK_WRITERS: usize = 16;

/// The most connections `http.max_connections` may allow (each holds a file descriptor).
pub const MAX_HTTP_CONNECTIONS: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), message: message.into() }
}

/// A value that is never printed: `Debug`, `Display` and `Serialize` show `[redacted]`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Test,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
    Auto,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub environment: Environment,
    pub debug: bool,
    pub log_level: String,
    pub log_format: LogFormat,
    pub secret_key: Secret,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub rate_limits: RateLimitSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub kafka: KafkaSettings,
    pub schema_registry: RegistrySettings,
    pub metrics: MetricsSettings,
    pub paths: PathSettings,
    pub run: RunSettings,
    pub gateway: GatewaySettings,
    pub telemetry: TelemetrySettings,
}

/// Trace export over OTLP/HTTP (JSON); see [`crate::otlp`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's base URL (spans go to `{otlp_endpoint}/v1/traces`); empty = off.
    pub otlp_endpoint: String,
    /// Extra request headers, `key=value,key2=value2` (e.g. a collector's API key).
    pub otlp_headers: Secret,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Finished spans waiting for export; beyond this they are dropped and counted.
    pub otlp_queue_size: usize,
    pub otlp_batch_size: usize,
    pub otlp_batch_interval_ms: u64,
    pub otlp_timeout_ms: u64,
}

/// The HTTP gateway to topics (`POST /v1/topics/{topic}/records`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub max_records_per_request: usize,
    pub max_body_bytes: usize,
    pub max_record_bytes: usize,
    pub idempotency_ttl_secs: u64,
    pub receipt_ttl_secs: u64,
    pub schema_cache_secs: u64,
    /// Per-user produce quotas through the gateway (0 disables).
    pub quota_records_per_sec: u64,
    pub quota_bytes_per_sec: u64,
    /// How long an ndjson stream may be held back for one line before that line is refused
    /// (`QUOTA_EXCEEDED`), in milliseconds.
    pub stream_quota_max_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    /// Open connections served at once on the API port; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time for a request head to arrive, idle keep-alive wait included.
    pub header_read_timeout_ms: u64,
    pub produce_timeout_ms: u64,
    pub retry_after_secs: u64,
    pub tls_cert_path: String,
    pub tls_key_path: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    pub session_idle_secs: u64,
    pub max_sessions: u32,
    pub leeway_secs: u64,
    pub password_min_length: usize,
    pub password_history: u32,
    pub password_max_age_days: u32,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub totp_issuer: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub window_secs: u64,
    pub auth_per_window: u64,
    pub api_per_window: u64,
    pub submit_per_window: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub schema: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    pub migrate_on_start: bool,
    /// Group-commit writer loops of each processor's task writer (each with a connection of its
    /// own, besides `max_connections`; see `db::batch`).
    pub task_writers: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: Secret,
    pub key_prefix: String,
    pub pool_size: usize,
    pub timeout_ms: u64,
    pub task_status_ttl_secs: u64,
    pub agent_cache_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub namespace: String,
    pub client_id: String,
    pub apply_on_start: bool,
    pub request_timeout_ms: u64,
    /// Consumer group session timeout: how fast a dead member's partitions move on.
    pub session_timeout_ms: u64,
    /// How long the producer waits to batch records for a partition before sending (latency
    /// against requests to the broker).
    pub linger_ms: u64,
    #[serde(serialize_with = "redact_properties")]
    pub properties: BTreeMap<String, String>,
}

fn redact_properties<S: serde::Serializer>(props: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let shown: BTreeMap<&str, &str> = props
        .iter()
        .map(|(k, v)| {
            let secret = k.contains("password") || k.contains("secret") || k.contains("key");
            (k.as_str(), if secret { "[redacted]" } else { v.as_str() })
        })
        .collect();
    shown.serialize(s)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    pub url: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathSettings {
    pub topics: PathBuf,
    pub schemas: PathBuf,
    pub processors: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    pub processors: Vec<String>,
}

impl Settings {
    /// Loads the layered configuration from `dir` and the process environment.
    pub fn load(dir: &Path) -> Result<Settings, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_with_env(dir, &env)
    }

    /// The configuration in `root/config` for ENVIRONMENT=test (plus the process environment),
    /// isolated for one test or benchmark run on shared services: its own Kafka namespace
    /// (`<tag><id>.`), Postgres schema (`<tag>_<id>`) and Redis prefix (`<tag><id>:`), ports 0,
    /// and the declarations under `root`.
    pub fn isolated(root: &Path, tag: &str) -> Result<Settings, ConfigError> {
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        env.insert("ENVIRONMENT".into(), "test".into());
        let mut s = Self::load_with_env(&root.join("config"), &env)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let short = &id[..12];
        s.http.port = 0;
        s.metrics.port = 0;
        s.kafka.namespace = format!("{tag}{short}.");
        s.database.schema = format!("{tag}_{short}");
        s.redis.key_prefix = format!("{tag}{short}:");
        s.paths.topics = root.join("topics");
        s.paths.schemas = root.join("schemas");
        s.paths.processors = root.join("processors");
        Ok(s)
    }

    /// The variables under which a `devcycle` process started by a test or benchmark gets these
    /// settings' isolation: the Kafka namespace, Postgres schema, Redis prefix and declaration
    /// paths, with topics and migrations left to the starter, which applied them.
    pub fn isolation_env(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("DEVCYCLE__KAFKA__NAMESPACE", self.kafka.namespace.clone()),
            ("DEVCYCLE__KAFKA__APPLY_ON_START", "false".into()),
            ("DEVCYCLE__DATABASE__SCHEMA", self.database.schema.clone()),
            ("DEVCYCLE__DATABASE__MIGRATE_ON_START", "false".into()),
            ("DEVCYCLE__REDIS__KEY_PREFIX", self.redis.key_prefix.clone()),
            ("DEVCYCLE__PATHS__TOPICS", path(&self.paths.topics)),
            ("DEVCYCLE__PATHS__SCHEMAS", path(&self.paths.schemas)),
            ("DEVCYCLE__PATHS__PROCESSORS", path(&self.paths.processors)),
        ]
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_with_env(dir: &Path, env: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
        let mut merged = read_toml(&dir.join("default.toml"))?;
        let environment = match env.get("ENVIRONMENT") {
            Some(e) => e.clone(),
            None => merged.get("environment").and_then(|v| v.as_str()).unwrap_or("development").to_string(),
        };
        if !["development", "test", "production"].contains(&environment.as_str()) {
            return Err(invalid("environment", format!("`{environment}` is not one of development, test, production")));
        }
        let env_file = dir.join(format!("{environment}.toml"));
        if env_file.exists() {
            let layer = read_toml(&env_file)?;
            merge(&mut merged, layer, "")?;
        }
        for (var, key) in ENV_KEYS {
            if let Some(value) = env.get(*var) {
                set_path(&mut merged, key, value)?;
            }
        }
        for (var, value) in env {
            if let Some(rest) = var.strip_prefix("DEVCYCLE__") {
                let key = rest.to_ascii_lowercase().replace("__", ".");
                set_path(&mut merged, &key, value)?;
            }
        }
        let settings: Settings = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            invalid(&key, e.into_inner().to_string())
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let levels = ["error", "warn", "info", "debug", "trace"];
        if !levels.contains(&self.log_level.to_ascii_lowercase().as_str()) {
            return Err(invalid("log_level", format!("`{}` is not one of {levels:?}", self.log_level)));
        }
        if self.environment == Environment::Production
            && (self.secret_key.expose() == DEV_SECRET || self.secret_key.expose().len() < 32)
        {
            return Err(invalid(
                "secret_key",
                "production needs SECRET_KEY set to a random value of at least 32 characters",
            ));
        }
        if self.secret_key.expose().len() < 16 {
            return Err(invalid("secret_key", "must be at least 16 characters"));
        }
        for (key, url, schemes) in [
            ("database.url", self.database.url.expose(), &["postgres", "postgresql"][..]),
            ("redis.url", self.redis.url.expose(), &["redis", "rediss"][..]),
            ("schema_registry.url", self.schema_registry.url.as_str(), &["http", "https"][..]),
        ] {
            let scheme = url.split("://").next().unwrap_or("");
            if !url.contains("://") || !schemes.contains(&scheme) {
                return Err(invalid(key, format!("expected a URL with scheme {schemes:?}")));
            }
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid("kafka.bootstrap_servers", "must not be empty"));
        }
        if self.kafka.linger_ms > 1000 {
            return Err(invalid("kafka.linger_ms", "must be at most 1000 (it delays every record produced)"));
        }
        let ident_ok = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if self.database.schema.is_empty() || !ident_ok(&self.database.schema) {
            return Err(invalid("database.schema", "must be a plain identifier [A-Za-z0-9_]"));
        }
        let ns_ok = self.kafka.namespace.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ns_ok {
            return Err(invalid("kafka.namespace", "may contain only [A-Za-z0-9._-]"));
        }
        if self.http.tls_cert_path.is_empty() != self.http.tls_key_path.is_empty() {
            return Err(invalid("http.tls_cert_path", "set both http.tls_cert_path and http.tls_key_path, or neither"));
        }
        if self.http.max_body_bytes == 0 {
            return Err(invalid("http.max_body_bytes", "must be positive"));
        }
        if !(1..=MAX_HTTP_CONNECTIONS).contains(&self.http.max_connections) {
            return Err(invalid("http.max_connections", format!("must be from 1 to {MAX_HTTP_CONNECTIONS}")));
        }
        if self.http.header_read_timeout_ms == 0 {
            return Err(invalid("http.header_read_timeout_ms", "must be positive"));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be positive"));
        }
        if !(1..=MAX_TASK_WRITERS).contains(&self.database.task_writers) {
            return Err(invalid("database.task_writers", format!("must be from 1 to {MAX_TASK_WRITERS}")));
        }
        if self.auth.max_sessions == 0 || self.auth.access_token_ttl_secs == 0 || self.auth.refresh_token_ttl_secs == 0
        {
            return Err(invalid("auth", "max_sessions and token lifetimes must be positive"));
        }
        if self.auth.password_min_length < 8 {
            return Err(invalid("auth.password_min_length", "must be at least 8"));
        }
        if self.rate_limits.window_secs == 0 {
            return Err(invalid("rate_limits.window_secs", "must be positive"));
        }
        if self.redis.pool_size == 0 {
            return Err(invalid("redis.pool_size", "must be positive"));
        }
        let t = &self.telemetry;
        let endpoint = t.otlp_endpoint.trim();
        let off_or_url = endpoint.is_empty() || endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !off_or_url {
            return Err(invalid("telemetry.otlp_endpoint", "expected empty (off) or an http:// or https:// URL"));
        }
        if t.service_name.trim().is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        for (key, v) in [
            ("telemetry.otlp_queue_size", t.otlp_queue_size as u64),
            ("telemetry.otlp_batch_size", t.otlp_batch_size as u64),
            ("telemetry.otlp_batch_interval_ms", t.otlp_batch_interval_ms),
            ("telemetry.otlp_timeout_ms", t.otlp_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = Secret(redact_url(self.database.url.expose()));
        shown.redis.url = Secret(redact_url(self.redis.url.expose()));
        // Secret serializes as "[redacted]"; URLs are shown with only the password hidden.
        let mut value = toml::Value::try_from(&shown).expect("settings serialize");
        if let Some(t) = value.as_table_mut() {
            for (section, url) in [("database", &shown.database.url), ("redis", &shown.redis.url)] {
                if let Some(s) = t.get_mut(section).and_then(|v| v.as_table_mut()) {
                    s.insert("url".into(), toml::Value::String(url.0.clone()));
                }
            }
        }
        toml::to_string_pretty(&value).expect("settings print")
    }
}

/// `scheme://user:password@host` → `scheme://user:[redacted]@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((auth, host)) = rest.split_once('@') else { return url.to_string() };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:[redacted]@{host}"),
        None => url.to_string(),
    }
}

fn read_toml(path: &Path) -> Result<toml::Value, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })
}

/// Merges `layer` into `base`; a key absent from `base` is refused (it is unknown).
fn merge(base: &mut toml::Value, layer: toml::Value, prefix: &str) -> Result<(), ConfigError> {
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

/// Sets a dotted key from an environment string, coerced to the type of the default value.
fn set_path(root: &mut toml::Value, key: &str, raw: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        let in_props = i > 0 && parts[i - 1] == "properties";
        let table = cur.as_table_mut().ok_or_else(|| invalid(key, "unknown key"))?;
        if last {
            let value = match table.get(*part) {
                None if in_props => toml::Value::String(raw.to_string()),
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

fn coerce(key: &str, like: &toml::Value, raw: &str) -> Result<toml::Value, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let s = Settings::load_with_env(
            &dir(),
            &env(&[("ENVIRONMENT", "test"), ("DATABASE_URL", "postgres://a:b@h/db"), ("DEVCYCLE__HTTP__PORT", "9001")]),
        )
        .unwrap();
        assert_eq!(s.environment, Environment::Test);
        assert_eq!(s.log_level, "warn"); // from test.toml
        assert_eq!(s.database.url.expose(), "postgres://a:b@h/db");
        assert_eq!(s.http.port, 9001);
    }

    #[test]
    fn unknown_and_invalid_keys_are_named() {
        let e = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__HTTP__PROT", "1")])).unwrap_err();
        assert!(e.to_string().contains("http.prot"), "{e}");
        let e = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__HTTP__PORT", "x")])).unwrap_err();
        assert!(e.to_string().contains("http.port"), "{e}");
        let e = Settings::load_with_env(&dir(), &env(&[("LOG_LEVEL", "loud")])).unwrap_err();
        assert!(e.to_string().contains("log_level"), "{e}");
        let e = Settings::load_with_env(&dir(), &env(&[("ENVIRONMENT", "production")])).unwrap_err();
        assert!(e.to_string().contains("secret_key"), "{e}");
        let e = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__KAFKA__LINGER_MS", "5000")])).unwrap_err();
        assert!(e.to_string().contains("kafka.linger_ms"), "{e}");
        let s = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__KAFKA__LINGER_MS", "5")])).unwrap();
        assert_eq!(s.kafka.linger_ms, 5);
        let e = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__DATABASE__TASK_WRITERS", "0")])).unwrap_err();
        assert!(e.to_string().contains("database.task_writers"), "{e}");
        let s = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__DATABASE__TASK_WRITERS", "3")])).unwrap();
        assert_eq!(s.database.task_writers, 3);
        for bad in ["0", "1048577"] {
            let e = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__HTTP__MAX_CONNECTIONS", bad)])).unwrap_err();
            assert!(e.to_string().contains("http.max_connections"), "{e}");
        }
        let e = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__HTTP__HEADER_READ_TIMEOUT_MS", "0")])).unwrap_err();
        assert!(e.to_string().contains("http.header_read_timeout_ms"), "{e}");
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Settings::load_with_env(
            &dir(),
            &env(&[("DATABASE_URL", "postgres://u:hunter2@h/db"), ("SECRET_KEY", "s3cr3t-s3cr3t-s3cr3t")]),
        )
        .unwrap();
        let shown = s.redacted_toml();
        assert!(!shown.contains("hunter2") && !shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("postgres://u:[redacted]@h/db"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn otlp_export_is_off_by_default_and_set_by_either_name() {
        let s = Settings::load_with_env(&dir(), &env(&[])).unwrap();
        assert_eq!(s.telemetry.otlp_endpoint, "");
        let s = Settings::load_with_env(&dir(), &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318")])).unwrap();
        assert_eq!(s.telemetry.otlp_endpoint, "http://otel:4318");
        let s = Settings::load_with_env(
            &dir(),
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
                ("DEVCYCLE__TELEMETRY__OTLP_ENDPOINT", "https://collector:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=t0p-s3cret"),
            ]),
        )
        .unwrap();
        assert_eq!(s.telemetry.otlp_endpoint, "https://collector:4318");
        assert!(!s.redacted_toml().contains("t0p-s3cret"));
        let e = Settings::load_with_env(&dir(), &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "otel:4318")])).unwrap_err();
        assert!(e.to_string().contains("telemetry.otlp_endpoint"), "{e}");
    }
}
