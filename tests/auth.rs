//! Authentication and authorization against the real Postgres and Redis: tokens, sessions,
//! password policy, permissions, ownership, rate limits, audit, TOTP and service tokens.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::{TestApp, PASSWORD};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use std::time::Duration;

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(body["timestamp"].is_string() && body["request_id"].is_string(), "{body}");
}

/// A JWT with any header, signed HMAC-SHA256 with `key` (or unsigned when `key` is None).
fn craft(header: &Value, claims: &Value, key: Option<&[u8]>) -> String {
    let signing_input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
    let sig = match key {
        Some(k) => {
            let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(k).unwrap();
            mac.update(signing_input.as_bytes());
            B64.encode(mac.finalize().into_bytes())
        }
        None => String::new(),
    };
    format!("{signing_input}.{sig}")
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(part).unwrap()).unwrap()
}

async fn get_with(app: &TestApp, path: &str, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    app.send_raw(app.http.get(app.url(path)).bearer_auth(token)).await
}

async fn post_with(app: &TestApp, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let (s, _, b) = app.send_raw(app.http.post(app.url(path)).bearer_auth(token).json(body)).await;
    (s, b)
}

async fn post_public(app: &TestApp, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    app.send_raw(app.http.post(app.url(path)).json(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_validated_strictly() {
    let app = TestApp::spawn().await;
    let secret = app.deps.settings.secret_key.expose().as_bytes().to_vec();

    // A real token: exactly the spec's claims, HS256, 15 minutes.
    let (email, token) = app.user_token("developer").await;
    let header: Value = serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    let claims = payload(&token);
    let mut keys: Vec<&str> = claims.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["email", "exp", "iat", "jti", "permissions", "role", "sub"]);
    assert_eq!(claims["email"], email.as_str());
    assert_eq!(claims["role"], "developer");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);
    assert!(claims["permissions"].as_array().unwrap().contains(&json!("task:submit")));
    let (s, h, b) = get_with(&app, "/v1/agents", &token).await;
    assert_eq!(s, 200, "{b}");
    assert!(h.contains_key("ratelimit-limit") && h.contains_key("ratelimit-remaining"), "{h:?}");

    // No token, a malformed header.
    let (s, h, b) = app.send_raw(app.http.get(app.url("/v1/agents"))).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    assert!(h["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let (s, _, b) = app.send_raw(app.http.get(app.url("/v1/agents")).header("authorization", "Basic abc")).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");

    let now = chrono::Utc::now().timestamp();
    let base = |iat: i64, exp: i64| {
        let mut c = claims.clone();
        c["iat"] = json!(iat);
        c["exp"] = json!(exp);
        c["jti"] = json!(uuid::Uuid::new_v4().to_string());
        c
    };
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    // Sanity: a token crafted here with the right key and claims is accepted...
    let good = craft(&hs, &base(now, now + 600), Some(&secret));
    assert_eq!(get_with(&app, "/v1/agents", &good).await.0, 200);
    // ...and each of these is refused.
    let cases = [
        ("alg none", craft(&json!({"alg": "none", "typ": "JWT"}), &base(now, now + 600), None)),
        ("alg none with signature", craft(&json!({"alg": "none", "typ": "JWT"}), &base(now, now + 600), Some(&secret))),
        ("wrong key", craft(&hs, &base(now, now + 600), Some(b"some-other-secret-key-0123456789"))),
        (
            "RS256 header (alg confusion)",
            craft(&json!({"alg": "RS256", "typ": "JWT"}), &base(now, now + 600), Some(&secret)),
        ),
        ("HS512", craft(&json!({"alg": "HS512", "typ": "JWT"}), &base(now, now + 600), Some(&secret))),
        ("expired", craft(&hs, &base(now - 3600, now - 1800), Some(&secret))),
        ("issued in the future", craft(&hs, &base(now + 3600, now + 4000), Some(&secret))),
        ("extra claim", {
            let mut c = base(now, now + 600);
            c["admin"] = json!(true);
            craft(&hs, &c, Some(&secret))
        }),
        ("missing jti", {
            let mut c = base(now, now + 600);
            c.as_object_mut().unwrap().remove("jti");
            craft(&hs, &c, Some(&secret))
        }),
        ("tampered payload", {
            // The real token's signature over a payload promoted to admin.
            let mut c = claims.clone();
            c["role"] = json!("admin");
            c["permissions"] = json!(["agent:write", "task:read:all"]);
            let parts: Vec<&str> = token.split('.').collect();
            format!("{}.{}.{}", parts[0], B64.encode(c.to_string()), parts[2])
        }),
        ("garbage", "not.a.token".to_string()),
    ];
    for (what, bad) in &cases {
        let (s, h, b) = get_with(&app, "/v1/agents", bad).await;
        assert_eq!(s, 401, "{what} was accepted: {b}");
        assert_eq!(b["error"], "UNAUTHORIZED", "{what}: {b}");
        assert!(h.contains_key("www-authenticate"), "{what}");
    }

    // Revoked: after logout the same access token is refused at once.
    let (s, b) = post_with(&app, "/v1/auth/logout", &token, &json!({})).await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = get_with(&app, "/v1/agents", &token).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    assert_eq!(b["message"], "token revoked");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_ends_the_session() {
    let app = TestApp::spawn().await;
    let email = app.create_user("developer").await;
    let (s, b) = app.login(&email, PASSWORD).await;
    assert_eq!(s, 200, "{b}");
    let r1 = b["data"]["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(b["data"]["refresh_expires_in"], 604800);
    let user_id = b["data"]["user"]["id"].as_str().unwrap().to_string();

    let (s, _, b) = post_public(&app, "/v1/auth/refresh", &json!({"refresh_token": r1})).await;
    assert_eq!(s, 200, "{b}");
    let a2 = b["data"]["access_token"].as_str().unwrap().to_string();
    let r2 = b["data"]["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    assert_eq!(get_with(&app, "/v1/agents", &a2).await.0, 200);

    // Reusing the rotated token: refused, and the whole family ends.
    let (s, _, b) = post_public(&app, "/v1/auth/refresh", &json!({"refresh_token": r1})).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, _, b) = post_public(&app, "/v1/auth/refresh", &json!({"refresh_token": r2})).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, _, b) = get_with(&app, "/v1/agents", &a2).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, _, b) = post_public(&app, "/v1/auth/refresh", &json!({"refresh_token": "dcrt_made-up"})).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");

    // The reuse is audited.
    let (s, b) = app.get(&format!("/v1/audit?action=refresh_reuse&actor={user_id}")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["total"], 1, "{b}");

    // A session idle for more than 24 hours ends: its refresh token no longer works.
    let (_, b) = app.login(&email, PASSWORD).await;
    let r = b["data"]["refresh_token"].as_str().unwrap().to_string();
    sqlx::query("UPDATE sessions SET last_used_at = now() - interval '25 hours' WHERE refresh_token_hash = $1")
        .bind(devcycle::auth::token_hash(&r))
        .execute(&app.deps.pool)
        .await
        .unwrap();
    let (s, _, b) = post_public(&app, "/v1/auth/refresh", &json!({"refresh_token": r})).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_session_ends_the_oldest() {
    let app = TestApp::spawn().await;
    let email = app.create_user("viewer").await;
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let (s, b) = app.login(&email, PASSWORD).await;
        assert_eq!(s, 200, "{b}");
        sessions.push((
            b["data"]["access_token"].as_str().unwrap().to_string(),
            b["data"]["refresh_token"].as_str().unwrap().to_string(),
        ));
    }
    let user = devcycle::db::users::by_email(&app.deps.pool, &email).await.unwrap().unwrap();
    assert_eq!(devcycle::db::users::live_sessions(&app.deps.pool, user.id, 86400).await.unwrap(), 5);
    // The oldest is over: its access token and its refresh token.
    let (s, _, b) = get_with(&app, "/v1/agents", &sessions[0].0).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, _, b) = post_public(&app, "/v1/auth/refresh", &json!({"refresh_token": sessions[0].1})).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    // The other five still work.
    for (access, _) in &sessions[1..] {
        assert_eq!(get_with(&app, "/v1/agents", access).await.0, 200);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_policy_and_history() {
    let app = TestApp::spawn().await;
    let new_user = |password: &str, role: &str| json!({"email": format!("p{}@example.test", uuid::Uuid::new_v4().simple()), "password": password, "role": role});
    for (password, why) in [
        ("Sh0rt!pass", "short"),
        ("No-Digits-Here-At-All", "no digit"),
        ("no-upper-case-123", "no upper case"),
        ("NoSpecialChars123", "no special character"),
    ] {
        let (s, b) = app.post("/v1/users", &new_user(password, "developer")).await;
        assert_error(s, &b, 422, "VALIDATION_ERROR");
        assert_eq!(b["details"]["field"], "password", "{why}: {b}");
    }
    let (s, b) = app.post("/v1/users", &new_user(PASSWORD, "root")).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert_eq!(b["details"]["field"], "role");
    let (s, b) = app.post("/v1/users", &json!({"email": "not-an-email", "password": PASSWORD, "role": "viewer"})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let body = new_user(PASSWORD, "developer");
    let (s, b) = app.post("/v1/users", &body).await;
    assert_eq!(s, 201, "{b}");
    assert!(b["data"].get("password_hash").is_none(), "{b}");
    let email = body["email"].as_str().unwrap().to_string();
    // Emails are unique regardless of case.
    let mut dup = body.clone();
    dup["email"] = json!(email.to_uppercase());
    let (s, b) = app.post("/v1/users", &dup).await;
    assert_error(s, &b, 409, "CONFLICT");

    // Stored as argon2id, never in clear.
    let user = devcycle::db::users::by_email(&app.deps.pool, &email).await.unwrap().unwrap();
    assert!(user.password_hash.starts_with("$argon2id$"), "{}", user.password_hash);

    let change = |current: &str, new: &str| json!({"email": email, "current_password": current, "new_password": new});
    let (s, b) = app.login(&email, PASSWORD).await;
    assert_eq!(s, 200, "{b}");
    let before_change = b["data"]["access_token"].as_str().unwrap().to_string();
    let (s, _, b) = post_public(&app, "/v1/auth/password", &change(PASSWORD, "weak")).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let (s, _, b) = post_public(&app, "/v1/auth/password", &change(PASSWORD, PASSWORD)).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert_eq!(b["details"]["field"], "new_password");
    let (s, _, b) = post_public(&app, "/v1/auth/password", &change("Wrong-Passw0rd!", "Another-Passw0rd!")).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    // Five changes: P0 (initial) .. P5; the last five are P1..P5.
    let pw = |i: usize| format!("Rotating-Passw0rd-{i}!");
    let mut current = PASSWORD.to_string();
    for i in 1..=5 {
        let (s, _, b) = post_public(&app, "/v1/auth/password", &change(&current, &pw(i))).await;
        assert_eq!(s, 200, "{b}");
        current = pw(i);
    }
    // Changing the password ended the session that existed before.
    let (s, _, b) = get_with(&app, "/v1/agents", &before_change).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    for i in 1..=4 {
        let (s, _, b) = post_public(&app, "/v1/auth/password", &change(&current, &pw(i))).await;
        assert_error(s, &b, 422, "VALIDATION_ERROR");
        assert!(b["details"]["issue"].as_str().unwrap().contains("last 5"), "{b}");
    }
    // The initial password is six changes back: allowed again.
    let (s, _, b) = post_public(&app, "/v1/auth/password", &change(&current, PASSWORD)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(app.login(&email, PASSWORD).await.0, 200);
    assert_eq!(app.login(&email, &pw(5)).await.0, 401);

    // An expired password cannot log in, nor refresh a session's tokens (but can still be
    // changed).
    let (s, b) = app.login(&email, PASSWORD).await;
    assert_eq!(s, 200, "{b}");
    let refresh = json!({"refresh_token": b["data"]["refresh_token"].as_str().unwrap()});
    sqlx::query("UPDATE users SET password_changed_at = now() - interval '91 days' WHERE id = $1")
        .bind(user.id)
        .execute(&app.deps.pool)
        .await
        .unwrap();
    let (s, b) = app.login(&email, PASSWORD).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, _, b) = post_public(&app, "/v1/auth/refresh", &refresh).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, _, b) = post_public(&app, "/v1/auth/password", &change(PASSWORD, "Fresh-Passw0rd-99!")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(app.login(&email, "Fresh-Passw0rd-99!").await.0, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_headers() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limits.auth_per_window = 10;
        s.rate_limits.api_per_window = 6;
        s.rate_limits.submit_per_window = 2;
    })
    .await;
    // Task submission: 2 per window per user.
    app.submit("echo", json!({"n": 1})).await;
    app.submit("echo", json!({"n": 2})).await;
    let (s, h, b) = app.send(app.http.post(app.url("/v1/tasks")).json(&json!({"agent": "echo", "input": 3}))).await;
    assert_error(s, &b, 429, "RATE_LIMITED");
    assert_eq!(h["ratelimit-limit"], "2");
    assert_eq!(h["ratelimit-remaining"], "0");
    // API: 6 per window per user (three used above).
    for _ in 0..3 {
        let (s, h, _) = app.send(app.http.get(app.url("/v1/agents"))).await;
        assert_eq!(s, 200);
        assert_eq!(h["ratelimit-limit"], "6");
    }
    let (s, h, b) = app.send(app.http.get(app.url("/v1/agents"))).await;
    assert_error(s, &b, 429, "RATE_LIMITED");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(h["ratelimit-reset"].to_str().unwrap(), retry.to_string());
    // Probes are not limited.
    assert_eq!(app.send_raw(app.http.get(app.url("/health"))).await.0, 200);

    // Brute force on login, per IP: the spawn's admin login used one of the 10.
    let email = app.create_user("developer").await;
    for i in 0..9 {
        let (s, b) = app.login(&email, &format!("Wrong-Guess-{i}!")).await;
        assert_error(s, &b, 401, "UNAUTHORIZED");
    }
    let (s, h, b) = post_public(&app, "/v1/auth/login", &json!({"email": email, "password": "Wrong-Guess-x!"})).await;
    assert_error(s, &b, 429, "RATE_LIMITED");
    assert!(h.contains_key("retry-after"));
    assert_eq!(h["ratelimit-limit"], "10");
    assert_eq!(h["ratelimit-remaining"], "0");
    // Even the right password is throttled now.
    assert_eq!(app.login(&email, PASSWORD).await.0, 429);
    // Each failure was audited with the IP and request id.
    let rows = devcycle::db::users::audit_list(&app.deps.pool, None, Some("login"), None, 100, 0).await.unwrap().0;
    let failures: Vec<_> = rows.iter().filter(|r| r.outcome == "failure").collect();
    assert_eq!(failures.len(), 9);
    assert!(failures.iter().all(|r| r.ip.as_deref() == Some("127.0.0.1") && r.request_id.is_some()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_task_ownership() {
    let app = TestApp::spawn().await;
    let (_, viewer) = app.user_token("viewer").await;
    let viewer_id = payload(&viewer)["sub"].as_str().unwrap().to_string();
    let agent = json!({"name": "v-agent", "executor": "builtin", "config": {"mode": "echo"}});
    let (s, b) = post_with(&app, "/v1/agents", &viewer, &agent).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, _, b) = app.send_raw(app.http.delete(app.url("/v1/agents/echo")).bearer_auth(&viewer)).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = post_with(&app, "/v1/tasks", &viewer, &json!({"agent": "echo", "input": 1})).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    assert_eq!(get_with(&app, "/v1/agents", &viewer).await.0, 200);
    let (s, _, b) = get_with(&app, "/v1/audit", &viewer).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = app.get(&format!("/v1/audit?action=permission_denied&actor={viewer_id}")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["total"], 4, "{b}");
    assert!(b["data"]["items"][0]["request_id"].is_string());

    // Developers see their own tasks only; admins see all.
    let (_, alice) = app.user_token("developer").await;
    let (_, bob) = app.user_token("developer").await;
    let alice_id = payload(&alice)["sub"].as_str().unwrap().to_string();
    let (s, b) = post_with(&app, "/v1/tasks", &alice, &json!({"agent": "echo", "input": {"secret": 42}})).await;
    assert_eq!(s, 202, "{b}");
    let id: uuid::Uuid = b["data"]["task_id"].as_str().unwrap().parse().unwrap();
    let path = format!("/v1/tasks/{id}");
    let (s, _, b) = get_with(&app, &path, &bob).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    assert_eq!(get_with(&app, &path, &alice).await.0, 200);
    app.wait_status(id, "succeeded", Duration::from_secs(60)).await; // as admin
    let row = devcycle::db::tasks::get(&app.deps.pool, id).await.unwrap().unwrap();
    assert_eq!(row.submitted_by.as_deref(), Some(alice_id.as_str()));
    // Also from the Postgres record once the hot status is gone.
    app.deps.cache.forget_task(id).await.unwrap();
    let (s, _, b) = get_with(&app, &path, &bob).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, _, b) = get_with(&app, &path, &alice).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["output"], json!({"secret": 42}));
    app.stop().await;
}

/// Only the submitter (or a caller with `task:read:all`) cancels a task; anyone else gets 404,
/// as for `GET`. A task cancelled while only queued keeps its submitter in Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_submitter_or_an_admin_cancels_a_task() {
    // No processor: submitted tasks stay queued, known only from their hot status.
    let deps = devcycle::app::Deps::connect(common::test_settings()).await.unwrap();
    let app = TestApp::start(deps, devcycle::app::Mode::Ingress).await;
    let (_, alice) = app.user_token("developer").await;
    let (_, bob) = app.user_token("developer").await;
    let alice_id = payload(&alice)["sub"].as_str().unwrap().to_string();
    let mut ids: Vec<uuid::Uuid> = Vec::new();
    for _ in 0..2 {
        let (s, b) = post_with(&app, "/v1/tasks", &alice, &json!({"agent": "echo", "input": 1})).await;
        assert_eq!(s, 202, "{b}");
        ids.push(b["data"]["task_id"].as_str().unwrap().parse().unwrap());
    }

    // Bob cannot cancel Alice's task, and it is still queued.
    let (s, b) = post_with(&app, &format!("/v1/tasks/{}/cancel", ids[0]), &bob, &json!({})).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    assert!(devcycle::db::tasks::get(&app.deps.pool, ids[0]).await.unwrap().is_none(), "Bob's cancel wrote a row");
    let (s, _, b) = get_with(&app, &format!("/v1/tasks/{}", ids[0]), &alice).await;
    assert_eq!((s, b["data"]["status"].as_str()), (200, Some("queued")), "{b}");

    // Alice can; the row keeps her as the submitter, so she still finds it without Redis.
    let (s, b) = post_with(&app, &format!("/v1/tasks/{}/cancel", ids[0]), &alice, &json!({})).await;
    assert_eq!((s, b["data"]["status"].as_str()), (200, Some("cancelled")), "{b}");
    let row = devcycle::db::tasks::get(&app.deps.pool, ids[0]).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.submitted_by.as_deref()), ("cancelled", Some(alice_id.as_str())));
    app.deps.cache.forget_task(ids[0]).await.unwrap();
    let (s, _, b) = get_with(&app, &format!("/v1/tasks/{}", ids[0]), &alice).await;
    assert_eq!((s, b["data"]["status"].as_str()), (200, Some("cancelled")), "{b}");
    // Once Postgres has the row, Bob is still refused.
    let (s, b) = post_with(&app, &format!("/v1/tasks/{}/cancel", ids[0]), &bob, &json!({})).await;
    assert_error(s, &b, 404, "NOT_FOUND");

    // An admin (the test client) cancels anyone's task.
    let (s, b) = app.post(&format!("/v1/tasks/{}/cancel", ids[1]), &json!({})).await;
    assert_eq!((s, b["data"]["status"].as_str()), (200, Some("cancelled")), "{b}");
    app.stop().await;
}

/// A task request produced through the HTTP gateway belongs to the caller who produced it,
/// whatever `submitted_by` its value names; callers cannot set the header that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_caller_cannot_submit_a_task_in_another_user_s_name() {
    let app = TestApp::spawn().await;
    let (_, alice) = app.user_token("developer").await;
    let (_, bob) = app.user_token("developer").await;
    let (alice_id, bob_id) =
        (payload(&alice)["sub"].as_str().unwrap().to_string(), payload(&bob)["sub"].as_str().unwrap().to_string());
    let records = "/v1/topics/devcycle.task-requests/records";
    let id = uuid::Uuid::new_v4();
    let value = json!({"task_id": id.to_string(), "agent": "echo", "input": "{\"n\":1}",
                       "submitted_at": "2026-01-02T03:04:05.678Z", "submitted_by": {"string": bob_id}});
    let (s, b) = post_with(&app, records, &alice, &json!({"value": value})).await;
    assert_eq!(s, 200, "{b}");
    app.wait_status(id, "succeeded", Duration::from_secs(60)).await; // as admin
    let row = devcycle::db::tasks::get(&app.deps.pool, id).await.unwrap().unwrap();
    assert_eq!(row.submitted_by.as_deref(), Some(alice_id.as_str()), "the value's submitted_by was believed");
    app.deps.cache.forget_task(id).await.unwrap();
    let (s, _, b) = get_with(&app, &format!("/v1/tasks/{id}"), &bob).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    assert_eq!(get_with(&app, &format!("/v1/tasks/{id}"), &alice).await.0, 200);

    // The header naming the producer is the gateway's own.
    let forged = json!({"value": value, "headers": {"devcycle.submitted_by": bob_id}});
    let (s, b) = post_with(&app, records, &alice, &forged).await;
    assert_eq!(s, 422, "{b}");
    assert!(b.to_string().contains("the devcycle. prefix is reserved"), "{b}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_strings_are_data() {
    let app = TestApp::spawn().await;
    let sneaky = "x'); DROP TABLE users; --";
    let email = "o'hara\";--DROP_TABLE_sessions@example.test";
    let password = "Pa55'; DROP TABLE users;--";
    let (s, b) = app.post("/v1/users", &json!({"email": email, "password": password, "role": "developer"})).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["data"]["email"], email);
    let (s, b) = app.login(email, password).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["user"]["email"], email);
    let dev = b["data"]["access_token"].as_str().unwrap().to_string();
    let (s, b) = app.login("' OR '1'='1", "' OR '1'='1").await;
    assert_error(s, &b, 401, "UNAUTHORIZED");

    let agent = json!({"name": "sneaky", "executor": "builtin", "config": {"mode": "echo", "note": sneaky},
                       "description": sneaky});
    let (s, b) = post_with(&app, "/v1/agents", &dev, &agent).await;
    assert_eq!(s, 201, "{b}");
    let (s, _, b) = get_with(&app, "/v1/agents/sneaky", &dev).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["description"], sneaky);
    assert_eq!(b["data"]["config"]["note"], sneaky);

    let (s, b) =
        post_with(&app, "/v1/tasks", &dev, &json!({"agent": "sneaky", "input": {"q": sneaky}, "key": sneaky})).await;
    assert_eq!(s, 202, "{b}");
    let id: uuid::Uuid = b["data"]["task_id"].as_str().unwrap().parse().unwrap();
    let done = app.wait_status(id, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["output"]["q"], sneaky);

    let (s, b) = app.post("/v1/service-tokens", &json!({"name": sneaky, "permissions": ["task:read"]})).await;
    assert_eq!(s, 201, "{b}");
    let (_, b) = app.get("/v1/service-tokens").await;
    assert_eq!(b["data"]["items"][0]["name"], sneaky);

    // Filters are bound parameters: an injection matches nothing.
    let (s, b) = app.get("/v1/audit?actor=%27%20OR%201%3D1%20--").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["total"], 0);
    let (_, b) = app.get(&format!("/v1/audit?action=login&actor={}", payload(&dev)["sub"].as_str().unwrap())).await;
    assert_eq!(b["data"]["total"], 1, "{b}");
    let rows = devcycle::db::users::audit_list(&app.deps.pool, None, Some("user_create"), None, 10, 0).await.unwrap().0;
    assert!(rows.iter().any(|r| r.target.as_deref() == Some(email)));
    // The tables are all still there.
    for t in ["users", "sessions", "tasks", "audit_log"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT 1 FROM {t} LIMIT 1"))).execute(&app.deps.pool).await.unwrap();
    }
    app.stop().await;
}

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
