//! TOTP second factor and service tokens; TLS on the ingress when configured.

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
