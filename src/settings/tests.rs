//! The configuration's layers, checks and redaction.

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
    for bad in ["0", "86401"] {
        let e =
            Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__REDIS__TASK_FINAL_STATUS_TTL_SECS", bad)])).unwrap_err();
        assert!(e.to_string().contains("redis.task_final_status_ttl_secs"), "{e}");
    }
    let e = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__AUTH__DENY_LIST_CHECK_SECS", "0")])).unwrap_err();
    assert!(e.to_string().contains("auth.deny_list_check_secs"), "{e}");
    let s = Settings::load_with_env(&dir(), &env(&[])).unwrap();
    assert_eq!((s.redis.task_status_ttl_secs, s.redis.task_final_status_ttl_secs), (86_400, 900));
    assert_eq!(s.auth.deny_list_check_secs, 5);
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

/// Each check that keeps an unsafe or broken configuration from starting names its key, and no
/// refusal repeats the secret it refused.
#[test]
fn unsafe_or_broken_values_are_refused_by_name_without_echoing_secrets() {
    let refused = |pairs: &[(&str, &str)], key: &str| {
        let e = Settings::load_with_env(&dir(), &env(pairs)).unwrap_err().to_string();
        assert!(e.contains(key), "{pairs:?}: {e}");
        e
    };
    let e = refused(&[("SECRET_KEY", "short-s3cret")], "secret_key");
    assert!(!e.contains("short-s3cret"), "{e}");
    let e = refused(&[("ENVIRONMENT", "production"), ("SECRET_KEY", "sixteen-chars-s3cr3t")], "secret_key");
    assert!(e.contains("at least 32") && !e.contains("sixteen-chars-s3cr3t"), "{e}");
    let long = "0123456789abcdef0123456789abcdef-prod";
    let data_key = "5e".repeat(32);
    let prod_env = [("ENVIRONMENT", "production"), ("SECRET_KEY", long), ("DATA_ENCRYPTION_KEY", data_key.as_str())];
    let s = Settings::load_with_env(&dir(), &env(&prod_env)).unwrap();
    assert_eq!(s.environment, Environment::Production);
    assert!(!s.redacted_toml().contains(&data_key), "{}", s.redacted_toml());
    // The data key: not the development one in production, 64 hex characters, a previous one
    // other than itself; never echoed.
    refused(&[("ENVIRONMENT", "production"), ("SECRET_KEY", long)], "auth.data_key");
    let e = refused(&[("DATA_ENCRYPTION_KEY", "not-hex-and-far-too-short")], "auth.data_key");
    assert!(!e.contains("not-hex-and-far-too-short"), "{e}");
    refused(
        &[("DATA_ENCRYPTION_KEY", &data_key), ("DATA_ENCRYPTION_KEY_PREVIOUS", &data_key)],
        "auth.data_key_previous",
    );
    refused(&[("DATA_ENCRYPTION_KEY_PREVIOUS", "5e5e")], "auth.data_key_previous");
    refused(&[("ENVIRONMENT", "staging")], "environment");
    let e = refused(&[("DATABASE_URL", "mysql://u:hunter2@h/db")], "database.url");
    assert!(!e.contains("hunter2"), "{e}");
    let e = refused(&[("REDIS_URL", "u:hunter2@127.0.0.1:6379")], "redis.url");
    assert!(!e.contains("hunter2"), "{e}");
    refused(&[("SCHEMA_REGISTRY_URL", "ftp://127.0.0.1")], "schema_registry.url");
    refused(&[("KAFKA_BOOTSTRAP_SERVERS", "  ")], "kafka.bootstrap_servers");
    for bad in ["", "a;drop", "pub lic", "x\"y"] {
        refused(&[("DEVCYCLE__DATABASE__SCHEMA", bad)], "database.schema");
    }
    refused(&[("DEVCYCLE__KAFKA__NAMESPACE", "a b")], "kafka.namespace");
    refused(&[("DEVCYCLE__HTTP__TLS_CERT_PATH", "/etc/cert.pem")], "http.tls_cert_path");
    let rediss = ("REDIS_URL", "rediss://127.0.0.1:6380/0");
    refused(&[rediss, ("DEVCYCLE__REDIS__TLS_KEY_PATH", "/etc/key.pem")], "redis.tls_cert_path");
    refused(&[("DEVCYCLE__REDIS__TLS_CA_PATH", "/etc/ca.pem")], "redis.tls_ca_path");
    let s = Settings::load_with_env(&dir(), &env(&[rediss, ("DEVCYCLE__REDIS__TLS_CA_PATH", "/etc/ca.pem")])).unwrap();
    assert_eq!(s.redis.tls_ca_path, "/etc/ca.pem");
    refused(&[("DEVCYCLE__HTTP__MAX_BODY_BYTES", "0")], "http.max_body_bytes");
    refused(&[("DEVCYCLE__RATE_LIMITS__WINDOW_SECS", "0")], "rate_limits.window_secs");
    refused(&[("DEVCYCLE__AUTH__PASSWORD_MIN_LENGTH", "7")], "auth.password_min_length");
    refused(&[("DEVCYCLE__AUTH__ACCESS_TOKEN_TTL_SECS", "0")], "auth");
    refused(&[("DEVCYCLE__TELEMETRY__OTLP_QUEUE_SIZE", "0")], "telemetry.otlp_queue_size");
    refused(&[("DEVCYCLE__RETENTION__AUDIT_LOG_DAYS", "364")], "retention.audit_log_days");
    refused(&[("DEVCYCLE__RETENTION__SESSIONS_DAYS", "0")], "retention");
    refused(&[("DEVCYCLE__RETENTION__BATCH_SIZE", "0")], "retention");
    let e = refused(&[("SECRET_KEY_PREVIOUS", "old-but-short")], "secret_key_previous");
    assert!(!e.contains("old-but-short"), "{e}");
    let same = "the-same-key-twice-0123456789";
    refused(&[("SECRET_KEY", same), ("SECRET_KEY_PREVIOUS", same)], "secret_key_previous");
    let prod = [("ENVIRONMENT", "production"), ("SECRET_KEY", long), ("SECRET_KEY_PREVIOUS", "twenty-chars-old-key")];
    refused(&prod, "secret_key_previous");
    let s = Settings::load_with_env(&dir(), &env(&[("SECRET_KEY_PREVIOUS", "the-key-being-replaced-0123")])).unwrap();
    assert_eq!(s.secret_key_previous.expose(), "the-key-being-replaced-0123");
    assert!(!s.redacted_toml().contains("the-key-being-replaced"), "{}", s.redacted_toml());
}

#[test]
fn kafka_properties_come_from_the_environment_with_dots() {
    let s = Settings::load_with_env(
        &dir(),
        &env(&[
            ("DEVCYCLE__KAFKA__PROPERTIES__SECURITY_PROTOCOL", "ssl"),
            ("DEVCYCLE__KAFKA__PROPERTIES__SSL_CA_LOCATION", "/etc/devcycle/ca.pem"),
        ]),
    )
    .unwrap();
    let props: Vec<(&str, &str)> = s.kafka.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(props, [("security.protocol", "ssl"), ("ssl.ca.location", "/etc/devcycle/ca.pem")]);
    // The other sections keep their underscores.
    let s = Settings::load_with_env(&dir(), &env(&[("DEVCYCLE__KAFKA__LINGER_MS", "7")])).unwrap();
    assert_eq!(s.kafka.linger_ms, 7);
}
