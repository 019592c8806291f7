//! Security-critical refusals that the flows in the other files pass by: a service token's
//! limits, expiry and revocation; the audit log's query checks; TOTP that cannot be enrolled
//! again or switched off without the current code; request bodies of the wrong shape.

use super::*;

fn field(b: &Value) -> &str {
    b["details"]["field"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_tokens_are_bounded_expire_and_stay_revoked() {
    let app = TestApp::spawn().await;
    let create = |body: Value| {
        let app = &app;
        async move { app.post("/v1/service-tokens", &body).await }
    };
    let long = "n".repeat(201);
    for (body, want) in [
        (json!({"name": long, "permissions": ["agent:read"]}), "name"),
        (json!({"name": "ci", "permissions": []}), "permissions"),
        (json!({"name": "ci", "permissions": "agent:read"}), "permissions"),
        (json!({"name": "ci", "permissions": [1]}), "permissions"),
        (json!({"name": "ci", "permissions": ["agent:read"], "expires_in_days": 0}), "expires_in_days"),
        (json!({"name": "ci", "permissions": ["agent:read"], "expires_in_days": 3651}), "expires_in_days"),
        (json!({"name": "ci", "permissions": ["agent:read"], "expires_in_days": "7"}), "expires_in_days"),
        (json!({"name": "ci", "permissions": ["agent:read"], "expires_in_days": 1.5}), "expires_in_days"),
        (json!({"name": "ci", "permissions": ["agent:read"], "owner": "me"}), "owner"),
    ] {
        let (s, b) = create(body.clone()).await;
        assert_error(s, &b, 422, "VALIDATION_ERROR");
        assert_eq!(field(&b), want, "{body} -> {b}");
    }

    // A day's token works, until its expiry passes.
    let (s, b) = create(json!({"name": "ci", "permissions": ["agent:read"], "expires_in_days": 1})).await;
    assert_eq!(s, 201, "{b}");
    let expires = chrono::DateTime::parse_from_rfc3339(b["data"]["expires_at"].as_str().unwrap()).unwrap();
    let in_a_day = chrono::Utc::now() + chrono::Duration::days(1);
    assert!((in_a_day - expires.with_timezone(&chrono::Utc)).num_seconds().abs() < 60, "{b}");
    let (st, st_id) = (b["data"]["token"].as_str().unwrap().to_string(), b["data"]["id"].as_str().unwrap().to_string());
    assert_eq!(get_with(&app, "/v1/agents", &st).await.0, 200);
    let id: uuid::Uuid = st_id.parse().unwrap();
    sqlx::query("UPDATE service_tokens SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&app.deps.pool)
        .await
        .unwrap();
    let (s, _, b) = get_with(&app, "/v1/agents", &st).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");

    // A service token has no session to end; revoking is by id, once.
    let (s, b) = create(json!({"name": "ci2", "permissions": ["agent:read"]})).await;
    assert_eq!(s, 201, "{b}");
    let (st, st_id) = (b["data"]["token"].as_str().unwrap().to_string(), b["data"]["id"].as_str().unwrap().to_string());
    let (s, b) = post_with(&app, "/v1/auth/logout", &st, &json!({})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert_eq!(get_with(&app, "/v1/agents", &st).await.0, 200, "a refused logout changes nothing");
    let delete = |id: String| {
        let app = &app;
        async move { app.send(app.http.delete(app.url(&format!("/v1/service-tokens/{id}")))).await }
    };
    let (s, _, b) = delete("not-a-uuid".into()).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let (s, _, b) = delete(uuid::Uuid::new_v4().to_string()).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    assert_eq!(delete(st_id.clone()).await.0, 200);
    let (s, _, b) = delete(st_id).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, _, b) = get_with(&app, "/v1/agents", &st).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_queries_are_checked() {
    let app = TestApp::spawn().await;
    for (query, want) in [
        ("since=yesterday", "since"),
        ("per_page=0", "per_page"),
        ("per_page=201", "per_page"),
        ("per_page=ten", "per_page"),
        ("page=0", "page"),
        ("user=admin", "user"),
    ] {
        let (s, b) = app.get(&format!("/v1/audit?{query}")).await;
        assert_error(s, &b, 422, "VALIDATION_ERROR");
        assert_eq!(field(&b), want, "{query}: {b}");
    }
    // The admin's own login is there; nothing is newer than a minute from now.
    let (s, b) = app.get("/v1/audit?action=login&per_page=1").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["items"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["data"]["per_page"], 1);
    let later = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (s, b) = app.get(&format!("/v1/audit?since={later}")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((b["data"]["total"].as_i64(), b["data"]["items"].as_array().map(Vec::len)), (Some(0), Some(0)), "{b}");
    // The app applied its declarations at start (a fresh namespace: every topic and schema new)
    // and recorded that once each, as the service, with the changes.
    for (action, change) in [("topics_apply", "created "), ("schemas_apply", " registered (id ")] {
        let (s, b) = app.get(&format!("/v1/audit?action={action}")).await;
        assert_eq!(s, 200, "{b}");
        let items = b["data"]["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{action}: {b}");
        assert_eq!(items[0]["actor"], "service", "{b}");
        let changes = items[0]["details"]["changes"].as_array().unwrap();
        assert!(!changes.is_empty() && changes.iter().all(|c| c.as_str().unwrap().contains(change)), "{b}");
    }
    // Only an admin reads it.
    let (_, token) = app.user_token("developer").await;
    let (s, _, b) = get_with(&app, "/v1/audit", &token).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    app.stop().await;
}

/// A six-digit code that is not valid for `secret` now (nor one step either side).
fn wrong_code(secret: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let valid: Vec<String> =
        [now - 30, now, now + 30].iter().map(|t| devcycle::auth::totp_code(secret, *t).unwrap()).collect();
    ["000000", "111111", "222222", "333333"].iter().find(|c| !valid.contains(&c.to_string())).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_is_not_enrolled_again_nor_disabled_without_the_current_code() {
    let app = TestApp::spawn().await;
    let (email, token) = app.user_token("developer").await;
    let (s, b) = post_with(&app, "/v1/auth/totp/disable", &token, &json!({"code": "123456"})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert!(b["details"]["issue"].as_str().unwrap().contains("not enabled"), "{b}");
    let (s, b) = post_with(&app, "/v1/auth/totp/confirm", &token, &json!({"code": "123456"})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert!(b["details"]["issue"].as_str().unwrap().contains("enrol first"), "{b}");

    let (s, b) = post_with(&app, "/v1/auth/totp/enrol", &token, &json!({})).await;
    assert_eq!(s, 200, "{b}");
    let secret = b["data"]["secret"].as_str().unwrap().to_string();
    let code = || devcycle::auth::totp_code(&secret, chrono::Utc::now().timestamp()).unwrap();
    let (s, b) = post_with(&app, "/v1/auth/totp/confirm", &token, &json!({"code": code()})).await;
    assert_eq!(s, 200, "{b}");

    // Enabled: no new secret, no second confirmation, no disabling with a wrong code.
    let (s, b) = post_with(&app, "/v1/auth/totp/enrol", &token, &json!({})).await;
    assert_error(s, &b, 409, "CONFLICT");
    let (s, b) = post_with(&app, "/v1/auth/totp/confirm", &token, &json!({"code": code()})).await;
    assert_error(s, &b, 409, "CONFLICT");
    let (s, b) = post_with(&app, "/v1/auth/totp/disable", &token, &json!({"code": wrong_code(&secret)})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    let (s, b) = post_with(&app, "/v1/auth/totp/disable", &token, &json!({"code": 123456})).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert!(b["details"]["issue"].as_str().unwrap().contains("string"), "{b}");
    let (s, b) = app.login(&email, PASSWORD).await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, b) = app.get("/v1/audit?action=totp_disable").await;
    assert_eq!(s, 200, "{b}");
    let outcomes: Vec<&str> =
        b["data"]["items"].as_array().unwrap().iter().filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["failure"], "the wrong code is audited: {b}");

    // The current code switches it off.
    let (s, b) = post_with(&app, "/v1/auth/totp/disable", &token, &json!({"code": code()})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(app.login(&email, PASSWORD).await.0, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_the_wrong_shape_are_refused_before_anything_runs() {
    let app = TestApp::spawn().await;
    let (email, token) = app.user_token("developer").await;
    for body in [json!([1, 2]), json!("text"), json!(null)] {
        let (s, b) = post_with(&app, "/v1/auth/password", &token, &body).await;
        assert_error(s, &b, 422, "VALIDATION_ERROR");
        assert_eq!(field(&b), "body", "{body}: {b}");
    }
    let body = json!({"email": email, "current_password": 5, "new_password": "x"});
    let (s, b) = post_with(&app, "/v1/auth/password", &token, &body).await;
    assert_error(s, &b, 422, "VALIDATION_ERROR");
    assert_eq!(field(&b), "current_password", "{b}");
    let (s, _, b) = app
        .send_raw(
            app.http.post(app.url("/v1/auth/password")).header("content-type", "application/json").body("{\"email\":"),
        )
        .await;
    assert_error(s, &b, 400, "MALFORMED_JSON");
    // Nothing changed: the password still logs in.
    assert_eq!(app.login(&email, PASSWORD).await.0, 200);
    app.stop().await;
}

/// Posts the two bodies to `path` alternately, `rounds` times each (so both see the same load
/// on a busy machine); returns each one's median time and last answer.
async fn alternating_medians(
    app: &TestApp,
    path: &str,
    bodies: [&Value; 2],
    rounds: usize,
) -> [(Duration, u16, Value); 2] {
    let mut times = [Vec::new(), Vec::new()];
    let mut last = [(0, Value::Null), (0, Value::Null)];
    for _ in 0..rounds {
        for (i, body) in bodies.iter().enumerate() {
            let t = std::time::Instant::now();
            let (s, _, b) = post_public(app, path, body).await;
            times[i].push(t.elapsed());
            last[i] = (s, b);
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let [t0, t1] = times;
    let [(s0, b0), (s1, b1)] = last;
    [(median(t0), s0, b0), (median(t1), s1, b1)]
}

/// An unknown email is refused exactly as a wrong password is, and is checked against a hash
/// of the same cost, so neither the answer nor its time tells which emails exist (login and
/// password change). The gap without the throwaway hash is two orders of magnitude (a database
/// lookup against an argon2id verification at the default cost; the tests' configuration makes
/// hashing cheap, so this app has the default back), so a factor of 4 between medians of calls
/// made alternately leaves room for a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_emails_are_refused_like_wrong_passwords_in_the_same_time() {
    let app = TestApp::spawn_with(|s| (s.auth.argon2_memory_kib, s.auth.argon2_iterations) = (19_456, 2)).await;
    let email = app.create_user("developer").await;
    let unknown = format!("nobody-{}@example.com", uuid::Uuid::new_v4().simple());
    for path in ["/v1/auth/login", "/v1/auth/password"] {
        let body = |who: &str| match path {
            "/v1/auth/login" => json!({"email": who, "password": "Wrong-passw0rd!"}),
            _ => json!({"email": who, "current_password": "Wrong-passw0rd!", "new_password": "An0ther-passw0rd!"}),
        };
        let (known_body, unknown_body) = (body(&email), body(&unknown));
        let [(known_t, s1, b1), (unknown_t, s2, b2)] =
            alternating_medians(&app, path, [&known_body, &unknown_body], 5).await;
        assert_error(s1, &b1, 401, "UNAUTHORIZED");
        assert_error(s2, &b2, 401, "UNAUTHORIZED");
        assert_eq!(b1["message"], b2["message"], "{path}");
        assert!(unknown_t * 4 >= known_t, "{path}: unknown email {unknown_t:?} against wrong password {known_t:?}");
    }
    assert_eq!(app.login(&email, PASSWORD).await.0, 200, "nothing changed");
    app.stop().await;
}
