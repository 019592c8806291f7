//! The configuration's sections, as `config/default.toml` lays them out.
//!
//! Invariants: every section refuses unknown fields, and secrets in it are [`Secret`]s (or
//! redacted when printed).

use super::*;

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
    /// How often the ingress checks whether Redis lost keys (a restart or evictions) and, if it
    /// did, writes the access-token deny list again from Postgres (see `ingress::deny_sync`).
    pub deny_list_check_secs: u64,
    /// AES-256-GCM key (64 hex characters) that seals secrets at rest (TOTP seeds; see
    /// `auth::sealed`), and during a rotation the key it replaced.
    pub data_key: Secret,
    pub data_key_previous: Secret,
}

/// The development default of `auth.data_key` (refused in production).
pub const DEV_DATA_KEY: &str = "6465762d696e7365637572652d646174612d6b65792d6368616e67652d6d6521";

impl AuthSettings {
    /// `data_key`: 64 hex characters, not the development default in production;
    /// `data_key_previous`: empty, or such a key other than `data_key`.
    pub(super) fn check_data_keys(&self, production: bool) -> Result<(), ConfigError> {
        let (current, previous) = (self.data_key.expose(), self.data_key_previous.expose());
        if crate::auth::sealed::key_bytes(current).is_none() {
            return Err(invalid("auth.data_key", "must be 64 hex characters (32 random bytes)"));
        }
        if production && current == DEV_DATA_KEY {
            return Err(invalid("auth.data_key", "production needs DATA_ENCRYPTION_KEY set to 32 random bytes in hex"));
        }
        if !previous.is_empty() && (crate::auth::sealed::key_bytes(previous).is_none() || previous == current) {
            return Err(invalid(
                "auth.data_key_previous",
                "must be empty, or the 64-hex-character key data_key replaced",
            ));
        }
        Ok(())
    }
}

/// What `devcycle retention apply` keeps (see `db::retention`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Audit log rows are kept this many days: at least the spec's 365.
    pub audit_log_days: u32,
    /// Sessions are kept this many days after their refresh token expired.
    pub sessions_days: u32,
    /// Rows deleted per statement.
    pub batch_size: u32,
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
    /// How long a task's hot status lives while the task is not final (queued, running,
    /// retrying): as long as a task may plausibly wait.
    pub task_status_ttl_secs: u64,
    /// How long it lives once the task is final: long enough for clients polling for the end;
    /// Postgres answers after that. This, times the task rate, is what bounds Redis's memory.
    pub task_final_status_ttl_secs: u64,
    pub agent_cache_ttl_secs: u64,
    /// PEM CA bundle that verifies a `rediss://` server (empty: the system's trust store).
    pub tls_ca_path: String,
    /// PEM client certificate and PKCS#8 key for mutual TLS (both or neither).
    pub tls_cert_path: String,
    pub tls_key_path: String,
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
