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
