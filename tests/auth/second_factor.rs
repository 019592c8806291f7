//! TOTP second factor (its seeds sealed at rest, through a key rotation) and service tokens;
//! TLS on the ingress when configured.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_and_service_tokens() {
    let app = TestApp::spawn().await;
    let (email, token) = app.user_token("developer").await;
    let (s, b) = post_with(&app, "/v1/auth/totp/enrol", &token, &json!({})).await;
    assert_eq!(s, 200, "{b}");
    let secret = b["data"]["secret"].as_str().unwrap().to_string();
    assert!(b["data"]["otpauth_url"].as_str().unwrap().starts_with("otpauth://totp/DevCycle:"));
    // Not required until confirmed.
    assert_eq!(app.login(&email, PASSWORD).await.0, 200);
    let (s, b) = post_with(&app, "/v1/auth/totp/confirm", &token, &json!({"code": "000000"})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let code = || devcycle::auth::totp_code(&secret, chrono::Utc::now().timestamp()).unwrap();
    let (s, b) = post_with(&app, "/v1/auth/totp/confirm", &token, &json!({"code": code()})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = app.login(&email, PASSWORD).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let login = |totp: String| json!({"email": email, "password": PASSWORD, "totp": totp});
    let (s, _, b) = post_public(&app, "/v1/auth/login", &login("123456".into())).await;
    let wrong = s == 401 || code() == "123456";
    assert!(wrong, "{b}");
    let (s, _, b) = post_public(&app, "/v1/auth/login", &login(code())).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = post_with(&app, "/v1/auth/totp/disable", &token, &json!({"code": code()})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(app.login(&email, PASSWORD).await.0, 200);

    // Service tokens: scoped, listed without the secret, revocable; admin only.
    let (s, b) =
        post_with(&app, "/v1/service-tokens", &token, &json!({"name": "x", "permissions": ["task:read"]})).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = app.post("/v1/service-tokens", &json!({"name": "ci", "permissions": ["agent:bogus"]})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let (s, b) = app.post("/v1/service-tokens", &json!({"name": "ci", "permissions": ["agent:read"]})).await;
    assert_eq!(s, 201, "{b}");
    let st = b["data"]["token"].as_str().unwrap().to_string();
    let st_id = b["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(get_with(&app, "/v1/agents", &st).await.0, 200);
    let (s, b) = post_with(&app, "/v1/agents", &st, &json!({"name": "n", "executor": "builtin"})).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (_, b) = app.get("/v1/service-tokens").await;
    assert!(!b.to_string().contains(&st), "the secret is shown only once");
    let (s, _, b) = app.send(app.http.delete(app.url(&format!("/v1/service-tokens/{st_id}")))).await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = get_with(&app, "/v1/agents", &st).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    app.stop().await;
}

/// A password change asks for the second factor as a login does: with the password alone it is
/// refused (and no session ends), with a current code it goes through. Fails when the change
/// takes the password alone (it ended every session of the user: a lock-out by whoever has the
/// password only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_asks_for_the_second_factor() {
    let app = TestApp::spawn().await;
    let (email, token) = app.user_token("developer").await;
    let (s, b) = post_with(&app, "/v1/auth/totp/enrol", &token, &json!({})).await;
    assert_eq!(s, 200, "{b}");
    let secret = b["data"]["secret"].as_str().unwrap().to_string();
    let code = || devcycle::auth::totp_code(&secret, chrono::Utc::now().timestamp()).unwrap();
    assert_eq!(post_with(&app, "/v1/auth/totp/confirm", &token, &json!({"code": code()})).await.0, 200);
    let new = "Second-Factor-Passw0rd!";
    let change = |totp: Option<String>| {
        let mut b = json!({"email": email, "current_password": PASSWORD, "new_password": new});
        if let Some(t) = totp {
            b["totp"] = json!(t);
        }
        b
    };
    let (s, _, b) = post_public(&app, "/v1/auth/password", &change(None)).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    assert!(b["message"].as_str().unwrap().contains("TOTP"), "{b}");
    let wrong = if code() == "123456" { "654321" } else { "123456" };
    let (s, _, b) = post_public(&app, "/v1/auth/password", &change(Some(wrong.into()))).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    assert_eq!(get_with(&app, "/v1/agents", &token).await.0, 200, "no session ended");
    let (s, _, b) = post_public(&app, "/v1/auth/password", &change(Some(code()))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(get_with(&app, "/v1/agents", &token).await.0, 401, "the change ended the session");
    let login = json!({"email": email, "password": new, "totp": code()});
    assert_eq!(post_public(&app, "/v1/auth/login", &login).await.0, 200);
    app.stop().await;
}

/// An app on `app`'s database schema, Redis prefix and Kafka namespace with other data keys.
async fn same_data_other_keys(app: &TestApp, key: &str, previous: &str) -> TestApp {
    let like = app.deps.settings.clone();
    TestApp::spawn_with(|s| {
        s.database.schema = like.database.schema;
        s.redis.key_prefix = like.redis.key_prefix;
        s.kafka.namespace = like.kafka.namespace;
        s.auth.data_key = devcycle::settings::Secret::new(key);
        s.auth.data_key_previous = devcycle::settings::Secret::new(previous);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_seeds_are_sealed_at_rest_and_survive_a_key_rotation() {
    let app = TestApp::spawn().await;
    let (email, token) = app.user_token("developer").await;
    let schema = app.deps.settings.database.schema.clone();
    let stored = || async {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
            "SELECT totp_secret FROM {schema}.users WHERE email = $1"
        )))
        .bind(&email)
        .fetch_one(&app.deps.pool)
        .await
        .unwrap()
    };
    let (_, b) = post_with(&app, "/v1/auth/totp/enrol", &token, &json!({})).await;
    let secret = b["data"]["secret"].as_str().unwrap().to_string();
    // At rest the seed is sealed from its enrolment on: nowhere in the row.
    let enrolled = stored().await;
    assert!(enrolled.starts_with("enc:v1:") && !enrolled.contains(&secret), "{enrolled}");
    let code = || devcycle::auth::totp_code(&secret, chrono::Utc::now().timestamp()).unwrap();
    let (s, b) = post_with(&app, "/v1/auth/totp/confirm", &token, &json!({"code": code()})).await;
    assert_eq!(s, 200, "{b}");
    let sealed = stored().await;
    assert!(sealed.starts_with("enc:v1:") && !sealed.contains(&secret), "{sealed}");
    let login = |totp: String| json!({"email": email, "password": PASSWORD, "totp": totp});
    assert_eq!(post_public(&app, "/v1/auth/login", &login(code())).await.0, 200);

    // A rotation: under the new key alone the seed does not open (500, nothing else told) ...
    let old_key = app.deps.settings.auth.data_key.expose().to_string();
    let new_key = "ab".repeat(32);
    let rotated = same_data_other_keys(&app, &new_key, "").await;
    let (s, _, b) = post_public(&rotated, "/v1/auth/login", &login(code())).await;
    assert_error(s, &b, 500, "INTERNAL_ERROR");
    // ... `users reencrypt` with the old key as the previous one seals it under the new key ...
    let mut rotating = app.deps.settings.auth.clone();
    rotating.data_key = devcycle::settings::Secret::new(&new_key);
    rotating.data_key_previous = devcycle::settings::Secret::new(&old_key);
    let (resealed, all) = devcycle::ops::users::reencrypt(&app.deps.pool, &rotating).await.unwrap();
    assert_eq!((resealed, all), (1, 1));
    assert_ne!(stored().await, sealed);
    assert_eq!(devcycle::ops::users::reencrypt(&app.deps.pool, &rotating).await.unwrap(), (0, 1), "nothing stale left");
    // ... and the new key alone opens it.
    let (s, _, b) = post_public(&rotated, "/v1/auth/login", &login(code())).await;
    assert_eq!(s, 200, "{b}");

    // A seed stored before sealing existed (plaintext) is read, and sealed by `users reencrypt`.
    sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE {schema}.users SET totp_secret = $2 WHERE email = $1")))
        .bind(&email)
        .bind(&secret)
        .execute(&app.deps.pool)
        .await
        .unwrap();
    let (s, _, b) = post_public(&rotated, "/v1/auth/login", &login(code())).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(devcycle::ops::users::reencrypt(&app.deps.pool, &rotated.deps.settings.auth).await.unwrap(), (1, 1));
    let resealed = stored().await;
    assert!(resealed.starts_with("enc:v1:") && !resealed.contains(&secret), "{resealed}");
    rotated.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_serves_tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let app = TestApp::spawn_with(move |s| {
        s.http.tls_cert_path = c;
        s.http.tls_key_path = k;
    })
    .await;
    // The spawn logged in over HTTPS; an authenticated call works too.
    assert!(app.url("/").starts_with("https://"));
    let (s, b) = app.get("/v1/agents").await;
    assert_eq!(s, 200, "{b}");
    // The spec's TLS 1.3 minimum: a client that stops at TLS 1.2 gets no answer; one that may
    // use 1.3 does.
    let client = |max: reqwest::tls::Version| {
        reqwest::Client::builder().tls_danger_accept_invalid_certs(true).max_tls_version(max).build().unwrap()
    };
    let health = format!("https://{}/health", app.addr);
    let tls12 = client(reqwest::tls::Version::TLS_1_2).get(&health).send().await;
    assert!(tls12.is_err(), "a TLS 1.2 client was answered: {tls12:?}");
    let tls13 = client(reqwest::tls::Version::TLS_1_3).get(&health).send().await.unwrap();
    assert_eq!(tls13.status().as_u16(), 200);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new().get(format!("http://{}/health", app.addr)).send().await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() != 200);
    app.stop().await;

    // Only one of the two paths set is refused at load.
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    env.insert("DEVCYCLE__HTTP__TLS_CERT_PATH".into(), "/x.pem".into());
    let e = devcycle::settings::Settings::load_with_env(&common::root().join("config"), &env).unwrap_err();
    assert!(e.to_string().contains("tls"), "{e}");
}
