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

mod layers;
mod sections;
#[cfg(test)]
mod tests;

use layers::{merge, read_toml, set_path};
pub use sections::*;

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
    ("SECRET_KEY_PREVIOUS", "secret_key_previous"),
    ("DATA_ENCRYPTION_KEY", "auth.data_key"),
    ("DATA_ENCRYPTION_KEY_PREVIOUS", "auth.data_key_previous"),
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

/// The key a `DEVCYCLE__<SECTION>__<KEY>` variable sets (`rest` is what follows the prefix):
/// `__` separates sections. Under `KAFKA__PROPERTIES__` the name's `_` are `.` (librdkafka's
/// settable properties have none), so `DEVCYCLE__KAFKA__PROPERTIES__SSL_CA_LOCATION` sets
/// `ssl.ca.location` where an environment variable's name cannot hold a dot.
fn env_key(rest: &str) -> String {
    let key = rest.to_ascii_lowercase().replace("__", ".");
    match key.strip_prefix("kafka.properties.") {
        Some(name) => format!("kafka.properties.{}", name.replace('_', ".")),
        None => key,
    }
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
    /// The key `secret_key` replaced, during a rotation: access tokens it signed still verify
    /// until they expire; new ones are signed with `secret_key` only. Empty outside a rotation.
    pub secret_key_previous: Secret,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub rate_limits: RateLimitSettings,
    pub retention: RetentionSettings,
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

    /// The repository's `config/` as the `test` environment loads it, with Kafka at
    /// `bootstrap_servers` (unit tests against librdkafka's mock cluster).
    #[cfg(test)]
    pub(crate) fn test_kafka(bootstrap_servers: String) -> KafkaSettings {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
        let env = [("ENVIRONMENT".to_string(), "test".to_string())].into_iter().collect();
        let kafka = Settings::load_with_env(&dir, &env).expect("the repository's settings").kafka;
        KafkaSettings { bootstrap_servers, ..kafka }
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
                set_path(&mut merged, &env_key(rest), value)?;
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
        let previous = self.secret_key_previous.expose();
        if !previous.is_empty() {
            let min = if self.environment == Environment::Production { 32 } else { 16 };
            if previous.len() < min || previous == DEV_SECRET {
                return Err(invalid("secret_key_previous", format!("must be empty or at least {min} characters")));
            }
            if previous == self.secret_key.expose() {
                return Err(invalid("secret_key_previous", "equals secret_key: set it to the key being replaced"));
            }
        }
        self.auth.check_data_keys(self.environment == Environment::Production)?;
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
        let r = &self.redis;
        if r.tls_cert_path.is_empty() != r.tls_key_path.is_empty() {
            return Err(invalid(
                "redis.tls_cert_path",
                "set both redis.tls_cert_path and redis.tls_key_path, or neither",
            ));
        }
        let tls_files = !(r.tls_ca_path.is_empty() && r.tls_cert_path.is_empty());
        if tls_files && !r.url.expose().starts_with("rediss://") {
            return Err(invalid("redis.tls_ca_path", "TLS files need a rediss:// redis.url"));
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
        if self.auth.deny_list_check_secs == 0 {
            return Err(invalid("auth.deny_list_check_secs", "must be positive"));
        }
        if self.auth.password_min_length < 8 {
            return Err(invalid("auth.password_min_length", "must be at least 8"));
        }
        let r = &self.retention;
        if r.audit_log_days < 365 || r.audit_log_days > 36_500 {
            return Err(invalid("retention.audit_log_days", "must be from 365 (the spec's year) to 36500"));
        }
        if r.sessions_days == 0 || r.sessions_days > 36_500 || r.batch_size == 0 {
            return Err(invalid("retention", "sessions_days must be from 1 to 36500 and batch_size positive"));
        }
        if self.rate_limits.window_secs == 0 {
            return Err(invalid("rate_limits.window_secs", "must be positive"));
        }
        if self.redis.pool_size == 0 {
            return Err(invalid("redis.pool_size", "must be positive"));
        }
        let r = &self.redis;
        if r.task_final_status_ttl_secs == 0 || r.task_final_status_ttl_secs > r.task_status_ttl_secs {
            return Err(invalid(
                "redis.task_final_status_ttl_secs",
                "must be positive and at most redis.task_status_ttl_secs",
            ));
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
