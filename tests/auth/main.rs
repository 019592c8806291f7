//! Authentication and authorization against the real Postgres and Redis: tokens, sessions,
//! password policy, permissions, ownership, rate limits, audit, TOTP and service tokens.

mod access;
#[path = "../common/mod.rs"]
mod common;
mod deny_sync;
mod refusals;
mod second_factor;

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

/// Logs `token` out; the same token is then refused as revoked.
async fn logout_then_refused(app: &TestApp, token: &str) {
    let (s, b) = post_with(app, "/v1/auth/logout", token, &json!({})).await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = get_with(app, "/v1/agents", token).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    assert_eq!(b["message"], "token revoked");
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
    logout_then_refused(&app, &token).await;
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

/// A key rotation: with the replaced key as `secret_key_previous`, tokens it signed still pass
/// (and can still be revoked); a key never configured does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_keeps_the_previous_key_s_tokens_valid() {
    const OLD: &str = "rotation-test-previous-key-0123456789";
    let app = TestApp::spawn_with(|s| {
        s.secret_key = devcycle::settings::Secret::new("rotation-test-current-key-0123456789");
        s.secret_key_previous = devcycle::settings::Secret::new(OLD);
    })
    .await;
    let (_, token) = app.user_token("developer").await;
    let p = payload(&token);
    let (sub, email, role) = (p["sub"].as_str().unwrap(), p["email"].as_str().unwrap(), p["role"].as_str().unwrap());
    let auth = &app.deps.settings.auth;
    let (old_token, _) = devcycle::auth::issue_access(OLD, auth, sub, email, role);
    let (s, _, b) = get_with(&app, "/v1/agents", &old_token).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(get_with(&app, "/v1/agents", &token).await.0, 200, "the current key's token");
    let (other, _) = devcycle::auth::issue_access("a-key-this-app-never-had-0123456789", auth, sub, email, role);
    let (s, _, b) = get_with(&app, "/v1/agents", &other).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    logout_then_refused(&app, &old_token).await;
    app.stop().await;
}
