//! TLS and mutual TLS to Postgres, Redis, Kafka and the schema registry, as the README tells an
//! operator to configure it: the app (ingress and agent-executor) on the services' TLS
//! endpoints only, a task submitted over HTTP and finished, and proof that the connections were
//! TLS with the server's certificate verified and the client's presented.
//!
//! `scripts/services` serves TLS 1.3 beside the plain ports, with certificates from a dev CA
//! (`DEVCYCLE_TLS_*` and `DEVCYCLE_MTLS_*` from `scripts/services env`): Postgres to the role
//! `devcycle_tls` over TLS only and to `devcycle_mtls` by client certificate only (pg_hba);
//! Redis on a TLS-only port that requires a client certificate; Kafka on an SSL listener and a
//! mutual-TLS one; the registry on an HTTPS port. Trust: Postgres by `sslrootcert` in the URL,
//! Kafka by `ssl.ca.location`, Redis by `redis.tls_ca_path`, the registry by the process's
//! OpenSSL trust store (`SSL_CERT_FILE` here, the system store in a deployment).

mod common;

use common::TestApp;
use devcycle::settings::{RedisSettings, Secret, Settings};
use rdkafka::producer::{FutureProducer, Producer};
use serde_json::json;
use sqlx::Connection;
use std::time::Duration;

/// A `DEVCYCLE_TLS_*` / `DEVCYCLE_MTLS_*` value from `scripts/services env`.
fn tls_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: eval \"$(scripts/services env)\" first"))
}

/// Redis settings on the TLS port: `ca` trusted (or the system's roots), the client
/// certificate presented when `client`.
fn redis_tls(ca: bool, client: bool) -> RedisSettings {
    let mut r = common::test_settings().redis;
    r.url = Secret::new(tls_env("DEVCYCLE_TLS_REDIS_URL"));
    r.tls_ca_path = if ca { tls_env("DEVCYCLE_TLS_CA") } else { String::new() };
    (r.tls_cert_path, r.tls_key_path) = match client {
        true => (tls_env("DEVCYCLE_TLS_CLIENT_CERT"), tls_env("DEVCYCLE_TLS_CLIENT_KEY")),
        false => (String::new(), String::new()),
    };
    r
}

/// The app's settings on the mutual-TLS endpoints only (the registry: HTTPS).
fn on_mtls(s: &mut Settings) {
    s.database.url = Secret::new(tls_env("DEVCYCLE_MTLS_DATABASE_URL"));
    let prefix = std::mem::take(&mut s.redis.key_prefix);
    s.redis = RedisSettings { key_prefix: prefix, ..redis_tls(true, true) };
    s.kafka.bootstrap_servers = tls_env("DEVCYCLE_MTLS_KAFKA_BOOTSTRAP_SERVERS");
    for (k, v) in kafka_ssl(true) {
        s.kafka.properties.insert(k.into(), v);
    }
    s.schema_registry.url = tls_env("DEVCYCLE_TLS_SCHEMA_REGISTRY_URL");
}

/// librdkafka's properties for SSL with the dev CA, and the client certificate when `client`.
fn kafka_ssl(client: bool) -> Vec<(&'static str, String)> {
    let mut p = vec![("security.protocol", "ssl".to_string()), ("ssl.ca.location", tls_env("DEVCYCLE_TLS_CA"))];
    if client {
        p.push(("ssl.certificate.location", tls_env("DEVCYCLE_TLS_CLIENT_CERT")));
        p.push(("ssl.key.location", tls_env("DEVCYCLE_TLS_CLIENT_KEY")));
    }
    p
}

/// Whether a Redis client with `r`'s connection settings connects and answers a PING within 5 s.
async fn redis_serves(r: &RedisSettings) -> bool {
    use fred::prelude::*;
    let client = Client::new(devcycle::cache::client_config(r).unwrap(), None, None, None);
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        client.init().await.is_ok() && client.ping::<String>(None).await.is_ok()
    })
    .await;
    matches!(served, Ok(true))
}

/// Whether a Kafka client on `bootstrap` with `props` gets cluster metadata within 3 s.
async fn kafka_answers(bootstrap: String, props: Vec<(&'static str, String)>) -> bool {
    let mut k = common::test_settings().kafka;
    k.bootstrap_servers = bootstrap;
    k.properties = props.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let producer: FutureProducer = devcycle::kafka::client_config(&k, "tls-probe").create().unwrap();
    tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(3)).is_ok())
        .await
        .unwrap()
}

/// One test: the refusals run before the process trusts the dev CA (`SSL_CERT_FILE`, for the
/// registry), which would otherwise vouch for the servers in the unverified checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_over_mutual_tls_everywhere_and_other_clients_are_refused() {
    // Postgres: the TLS role over a plain connection is refused by pg_hba; verify-full against
    // roots that do not hold the dev CA refuses the server; the certificate role without one is
    // refused.
    let db_url = tls_env("DEVCYCLE_TLS_DATABASE_URL");
    let plain = db_url.replace("sslmode=verify-full", "sslmode=disable");
    let e = sqlx::PgConnection::connect(&plain).await.expect_err("a plain login of the TLS-only role");
    assert!(e.to_string().contains("pg_hba.conf"), "{e}");
    let ca = tls_env("DEVCYCLE_TLS_CA");
    let other_roots = std::env::temp_dir().join(format!("devcycle-other-roots-{}.pem", uuid::Uuid::new_v4()));
    std::fs::copy(std::path::Path::new(&ca).with_file_name("server.pem"), &other_roots).unwrap();
    let unverified = db_url.replace(&ca, other_roots.to_str().unwrap());
    assert_ne!(unverified, db_url);
    let e = sqlx::PgConnection::connect(&unverified).await.expect_err("a server the roots do not vouch for");
    let _ = std::fs::remove_file(&other_roots);
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    let mtls_url = tls_env("DEVCYCLE_MTLS_DATABASE_URL");
    let without_cert = mtls_url.split("&sslcert=").next().unwrap().to_string();
    let e = sqlx::PgConnection::connect(&without_cert).await.expect_err("the certificate role without one");
    assert!(e.to_string().contains("certificate"), "{e}");

    // Redis: the TLS port serves neither a plain client, nor a TLS one without a client
    // certificate, nor one that does not trust the server.
    let tls_redis = reqwest::Url::parse(&tls_env("DEVCYCLE_TLS_REDIS_URL")).unwrap();
    let mut plain = common::test_settings().redis;
    plain.url = Secret::new(format!("redis://{}:{}/0", tls_redis.host_str().unwrap(), tls_redis.port().unwrap()));
    assert!(!redis_serves(&plain).await, "a plain client was served on the TLS port");
    assert!(!redis_serves(&redis_tls(true, false)).await, "a client without a certificate was served");
    assert!(!redis_serves(&redis_tls(false, true)).await, "a server the trust store does not vouch for was trusted");
    assert!(redis_serves(&redis_tls(true, true)).await, "the dev CA trusted and the client certificate presented");

    // Kafka: the SSL listener gives a plaintext client no metadata, the mutual-TLS one none to
    // a client without a certificate.
    let (ssl, mtls) =
        (tls_env("DEVCYCLE_TLS_KAFKA_BOOTSTRAP_SERVERS"), tls_env("DEVCYCLE_MTLS_KAFKA_BOOTSTRAP_SERVERS"));
    assert!(!kafka_answers(ssl.clone(), vec![]).await, "a plaintext client got metadata from the SSL listener");
    assert!(kafka_answers(ssl, kafka_ssl(false)).await, "the SSL listener with the dev CA trusted");
    assert!(!kafka_answers(mtls.clone(), kafka_ssl(false)).await, "a client without a certificate got metadata");
    assert!(kafka_answers(mtls, kafka_ssl(true)).await, "the mutual-TLS listener with the client certificate");

    std::env::set_var("SSL_CERT_FILE", &ca);
    let app = TestApp::spawn_with(on_mtls).await;
    let id = app.submit("echo", json!({"over": "mtls"})).await;
    let done = app.wait_status(id, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["output"], json!({"over": "mtls"}), "{done}");
    let results = app.read_results(&[id], Duration::from_secs(30)).await;
    assert_eq!(results.len(), 1);

    // Postgres: the app's own pooled connection is TLS 1.3 with the client certificate (pg_hba
    // would refuse it otherwise).
    let (ssl, version, client_dn): (bool, Option<String>, Option<String>) =
        sqlx::query_as("SELECT ssl, version, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&app.deps.pool)
            .await
            .unwrap();
    assert!(ssl, "the app's Postgres connection is not TLS");
    assert_eq!((version.as_deref(), client_dn.as_deref()), (Some("TLSv1.3"), Some("/CN=devcycle_mtls")));
    app.stop().await;
}
