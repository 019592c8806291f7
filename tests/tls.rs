//! TLS to Postgres, Redis, Kafka and the schema registry, as the README tells an operator to
//! configure it: the app (ingress and agent-executor) on the services' TLS endpoints only, a
//! task submitted over HTTP and finished, and proof that the connections were TLS with the
//! server's certificate verified.
//!
//! `scripts/services` serves TLS 1.3 beside the plain ports, with a certificate for 127.0.0.1
//! from a dev CA (`DEVCYCLE_TLS_*` from `scripts/services env`): Postgres to the role
//! `devcycle_tls`, which pg_hba lets in over TLS only; Redis on a TLS-only port; Kafka on an
//! SSL-only listener; the registry on an HTTPS port. Trust: Postgres by `sslrootcert` in the
//! URL, Kafka by `ssl.ca.location`, Redis and the registry by the process's OpenSSL trust store
//! (`SSL_CERT_FILE` here, the system store in a deployment).

mod common;

use common::TestApp;
use devcycle::settings::Secret;
use rdkafka::producer::{FutureProducer, Producer};
use serde_json::json;
use sqlx::Connection;
use std::time::Duration;

/// A `DEVCYCLE_TLS_*` value from `scripts/services env`.
fn tls_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: eval \"$(scripts/services env)\" first"))
}

/// The app's settings on the TLS endpoints only.
fn on_tls(s: &mut devcycle::settings::Settings) {
    s.database.url = Secret::new(tls_env("DEVCYCLE_TLS_DATABASE_URL"));
    s.redis.url = Secret::new(tls_env("DEVCYCLE_TLS_REDIS_URL"));
    s.kafka.bootstrap_servers = tls_env("DEVCYCLE_TLS_KAFKA_BOOTSTRAP_SERVERS");
    s.kafka.properties.insert("security.protocol".into(), "ssl".into());
    s.kafka.properties.insert("ssl.ca.location".into(), tls_env("DEVCYCLE_TLS_CA"));
    s.schema_registry.url = tls_env("DEVCYCLE_TLS_SCHEMA_REGISTRY_URL");
}

/// One test: the refusals run before the process trusts the dev CA (`SSL_CERT_FILE`), which
/// would otherwise vouch for the server in the unverified Postgres check.
/// Whether a Redis client on `url` connects and answers a PING within 5 s.
async fn redis_serves(url: &str) -> bool {
    use fred::prelude::*;
    let client = Client::new(Config::from_url(url).unwrap(), None, None, None);
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        client.init().await.is_ok() && client.ping::<String>(None).await.is_ok()
    })
    .await;
    matches!(served, Ok(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_with_postgres_redis_and_kafka_over_tls_and_plain_clients_are_refused() {
    let db_url = tls_env("DEVCYCLE_TLS_DATABASE_URL");
    // Postgres: the TLS role over a plain connection is refused by pg_hba...
    let plain = db_url.replace("sslmode=verify-full", "sslmode=disable");
    let e = sqlx::PgConnection::connect(&plain).await.expect_err("a plain login of the TLS-only role");
    assert!(e.to_string().contains("pg_hba.conf"), "{e}");
    // ...and verify-full against roots that do not hold the dev CA refuses the server.
    let ca = tls_env("DEVCYCLE_TLS_CA");
    let other_roots = std::env::temp_dir().join(format!("devcycle-other-roots-{}.pem", uuid::Uuid::new_v4()));
    let server_cert = std::path::Path::new(&ca).with_file_name("server.pem");
    std::fs::copy(&server_cert, &other_roots).unwrap();
    let unverified = db_url.replace(&ca, other_roots.to_str().unwrap());
    assert_ne!(unverified, db_url);
    let e = sqlx::PgConnection::connect(&unverified).await.expect_err("a server the roots do not vouch for");
    let _ = std::fs::remove_file(&other_roots);
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // Redis: the TLS port does not serve a plain client.
    let tls_redis = reqwest::Url::parse(&tls_env("DEVCYCLE_TLS_REDIS_URL")).unwrap();
    let plain = format!("redis://{}:{}/0", tls_redis.host_str().unwrap(), tls_redis.port().unwrap());
    assert!(!redis_serves(&plain).await, "a plain client was served on the TLS port");
    // ...and a TLS client whose trust store lacks the dev CA refuses the server (the same client
    // is served once the CA is trusted, below).
    assert!(!redis_serves(tls_redis.as_str()).await, "a server the trust store does not vouch for was trusted");

    // Kafka: the SSL listener gives a plaintext client no metadata.
    let mut k = common::test_settings().kafka;
    k.bootstrap_servers = tls_env("DEVCYCLE_TLS_KAFKA_BOOTSTRAP_SERVERS");
    let producer: FutureProducer = devcycle::kafka::client_config(&k, "plain-probe").create().unwrap();
    let answered =
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(3)).is_ok())
            .await
            .unwrap();
    assert!(!answered, "a plaintext client got metadata from the SSL listener");

    // The Redis client verifies against OpenSSL's default trust store; this test's process
    // trusts the dev CA the way a deployment trusts its CA (no other test in this binary).
    std::env::set_var("SSL_CERT_FILE", tls_env("DEVCYCLE_TLS_CA"));
    assert!(redis_serves(tls_redis.as_str()).await, "TLS Redis with the dev CA trusted");
    let app = TestApp::spawn_with(on_tls).await;

    let id = app.submit("echo", json!({"over": "tls"})).await;
    let done = app.wait_status(id, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["output"], json!({"over": "tls"}), "{done}");
    let results = app.read_results(&[id], Duration::from_secs(30)).await;
    assert_eq!(results.len(), 1);

    // Postgres: the app's own pooled connection is TLS 1.3 (pg_hba would refuse it otherwise).
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&app.deps.pool)
            .await
            .unwrap();
    assert!(ssl, "the app's Postgres connection is not TLS");
    assert_eq!(version.as_deref(), Some("TLSv1.3"));
    app.stop().await;
}
