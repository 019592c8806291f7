//! The operator's command line, run as the built binary against the real services on a
//! namespace, database schema and key prefix of its own: a first deployment (migrate, topics
//! apply, schemas apply, users create, each idempotent where it says so), the read-only views
//! (status, lag, dlq list, retention), `users disable|enable` and `users export|erase` against a
//! running ingress, `config`
//! with its secrets redacted, and a refused configuration's
//! exit status.

mod common;

use devcycle::settings::Settings;
use std::process::Stdio;
use std::time::Duration;

/// Runs `devcycle args…` with `settings`' isolation and `envs`; returns its exit code, stdout
/// and stderr. Bounded: a command that does not end within 120 s fails the test.
async fn devcycle(settings: &Settings, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_devcycle"));
    c.args(args)
        .current_dir(common::root())
        .env("ENVIRONMENT", "test")
        .env("LOG_LEVEL", "warn")
        .envs(settings.isolation_env())
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), c.output())
        .await
        .unwrap_or_else(|_| panic!("devcycle {args:?} did not end within 120 s"))
        .expect("run devcycle");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_deployment_then_the_views_on_a_fresh_namespace() {
    let s = common::test_settings();
    let schema = s.database.schema.clone();
    let requests = format!("{}devcycle.task-requests", s.kafka.namespace);

    let (code, out, err) = devcycle(&s, &["migrate"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("migrations applied (schema {schema})"));
    let pool = devcycle::db::connect(&s.database).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = $1")
        .bind(&schema)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(tables >= 5, "{tables} tables in {schema}");
    assert_eq!(devcycle(&s, &["migrate"], &[]).await.0, 0, "migrating again changes nothing and succeeds");

    let (code, out, err) = devcycle(&s, &["topics", "apply"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with(&format!("created {requests} ("))), "{out}");
    let (code, again, _) = devcycle(&s, &["topics", "apply"], &[]).await;
    assert_eq!((code, again.lines().next()), (0, Some("topics: no changes")), "{again}");

    let (code, out, err) = devcycle(&s, &["schemas", "apply"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let subject = format!("{requests}-value");
    assert!(out.lines().any(|l| l.starts_with(&format!("{subject} registered (id "))), "{out}");
    let (code, again, _) = devcycle(&s, &["schemas", "apply"], &[]).await;
    assert_eq!(code, 0, "{again}");
    assert!(!again.is_empty() && again.lines().all(|l| l.contains(" unchanged (id ")), "{again}");
    // Each apply that changed something is in the audit log with its changes; the second runs,
    // which changed nothing, are not.
    let audited: Vec<(String, String, serde_json::Value)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT actor, action, details FROM {schema}.audit_log WHERE action LIKE '%_apply' ORDER BY id"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let actions: Vec<(&str, &str)> = audited.iter().map(|(a, b, _)| (a.as_str(), b.as_str())).collect();
    assert_eq!(actions, [("cli", "topics_apply"), ("cli", "schemas_apply")], "{audited:?}");
    let changes = |i: usize| -> Vec<&str> {
        audited[i].2["changes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect()
    };
    assert!(changes(0).iter().any(|c| c.starts_with(&format!("created {requests} ("))), "{audited:?}");
    let registered = out.lines().find(|l| l.starts_with(&subject)).unwrap();
    assert!(changes(1).contains(&registered), "{registered} in {audited:?}");

    let email = format!("ops-{}@example.test", uuid::Uuid::new_v4().simple());
    let create = ["users", "create", "--email", &email, "--role", "viewer"];
    let (code, out, err) = devcycle(&s, &create, &[("DEVCYCLE_PASSWORD", common::PASSWORD)]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("user ") && out.contains(&format!("created ({email}, role viewer)")), "{out}");
    let role: String =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT role FROM {schema}.users WHERE email = $1")))
            .bind(&email)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(role, "viewer");
    let (code, out, err) = devcycle(&s, &create, &[("DEVCYCLE_PASSWORD", common::PASSWORD)]).await;
    assert_ne!(code, 0, "the same email twice: {out}");
    assert!(err.contains("already exists"), "{err}");
    let (code, out, err) = devcycle(&s, &["users", "reencrypt"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "TOTP secrets: 0 sealed again under the current key (0 in all)");
    let weak = ["users", "create", "--email", "weak@example.test"];
    let (code, _, err) = devcycle(&s, &weak, &[("DEVCYCLE_PASSWORD", "short")]).await;
    assert_ne!(code, 0);
    assert!(err.contains("password"), "{err}");

    let (code, out, err) = devcycle(&s, &["status"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("services: postgres ok | redis ok | schema registry ok\n"), "{out}");
    assert!(out.contains(&requests), "{out}");
    let (code, out, err) = devcycle(&s, &["lag"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = devcycle(&s, &["dlq", "list"], &[]).await;
    assert_eq!((code, out.trim()), (0, "0 dead letter(s)"), "{err}");
    let (code, out, err) = devcycle(&s, &["retention", "apply", "--dry-run"], &[]).await;
    let nothing = "0 audit log row(s), 0 session(s), 0 password history row(s), 0 expired idempotency key(s)";
    assert_eq!((code, out.trim()), (0, format!("retention: would delete {nothing}").as_str()), "{err}");
    let (code, out, err) = devcycle(&s, &["retention", "apply"], &[]).await;
    assert_eq!((code, out.trim()), (0, format!("retention: deleted {nothing}").as_str()), "{err}");
    pool.close().await;
}

/// `config` prints the effective settings with every secret hidden: the signing key, and the
/// password inside the database URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_prints_the_settings_without_their_secrets() {
    let s = common::test_settings();
    let key = format!("cli-test-signing-key-{}", uuid::Uuid::new_v4().simple());
    let url = "postgres://devcycle:pg-Pa55word-in-url@127.0.0.1:5432/devcycle";
    let (code, out, err) = devcycle(&s, &["config"], &[("SECRET_KEY", &key), ("DATABASE_URL", url)]).await;
    assert_eq!(code, 0, "{out}{err}");
    let shown: toml::Value = toml::from_str(&out).expect("config prints TOML");
    assert_eq!(shown["database"]["schema"].as_str(), Some(s.database.schema.as_str()));
    assert!(shown["database"]["url"].as_str().unwrap().starts_with("postgres://devcycle:"), "{out}");
    for secret in [key.as_str(), "pg-Pa55word-in-url"] {
        assert!(!out.contains(secret) && !err.contains(secret), "printed a secret: {out}{err}");
    }
    assert!(out.contains("[redacted]"), "{out}");
}

/// A configuration the loader refuses ends the process with status 2 and says why, before
/// connecting to anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_configuration_exits_with_status_2_and_says_why() {
    let s = common::test_settings();
    let (code, out, err) = devcycle(&s, &["config"], &[("DEVCYCLE__HTTP__PORT", "eighty")]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.starts_with("devcycle: configuration refused:"), "{err}");
    assert!(out.is_empty(), "{out}");
}

/// `users disable` locks a logged-in user out at once (their access token, login and refresh
/// all refused) and is audited; `users enable` lets them log in again; an unknown email fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_disable_locks_a_user_out_at_once_and_enable_lets_them_back() {
    let app = common::TestApp::spawn().await;
    let s = app.deps.settings.clone();
    let email = app.create_user("developer").await;
    let (status, body) = app.login(&email, common::PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let access = body["data"]["access_token"].as_str().unwrap().to_string();
    let refresh = body["data"]["refresh_token"].as_str().unwrap().to_string();
    let agents = |token: String| {
        let app = &app;
        async move { app.send_raw(app.http.get(app.url("/v1/agents")).bearer_auth(token)).await }
    };
    assert_eq!(agents(access.clone()).await.0, 200);

    let (code, out, err) = devcycle(&s, &["users", "disable", "--email", &email], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("disabled ({email}); 1 session(s) ended")), "{out}");
    let (status, _, body) = agents(access).await;
    assert_eq!((status, body["message"].as_str()), (401, Some("token revoked")), "{body}");
    assert_eq!(app.login(&email, common::PASSWORD).await.0, 401);
    let refreshed = app.http.post(app.url("/v1/auth/refresh")).json(&serde_json::json!({"refresh_token": refresh}));
    assert_eq!(app.send_raw(refreshed).await.0, 401);
    let (status, body) = app.get("/v1/audit?action=user_disable").await;
    assert_eq!((status, body["data"]["total"].as_i64()), (200, Some(1)), "{body}");

    let (code, out, err) = devcycle(&s, &["users", "enable", "--email", &email], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("enabled ({email})")), "{out}");
    let (status, body) = app.login(&email, common::PASSWORD).await;
    assert_eq!(status, 200, "{body}");

    let (code, _, err) = devcycle(&s, &["users", "disable", "--email", "nobody@example.test"], &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no user with the email nobody@example.test"), "{err}");
    app.stop().await;
}

/// `users export` gives a user their data (no secrets); `users erase` forgets them: locked out,
/// tasks gone from Postgres and Redis, a tombstone without their email, another user untouched,
/// and a second run (by id) erases tasks written after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_export_gives_a_user_their_data_and_erase_forgets_them() {
    use serde_json::{json, Value};
    let app = common::TestApp::spawn().await;
    let s = app.deps.settings.clone();
    let pool = &app.deps.pool;
    let email = app.create_user("developer").await;
    let (status, body) = app.login(&email, common::PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let token = body["data"]["access_token"].as_str().unwrap().to_string();
    let submit = |token: String, input: Value, key: Option<&'static str>| {
        let app = &app;
        async move {
            let mut req = app.http.post(app.url("/v1/tasks")).bearer_auth(token);
            if let Some(key) = key {
                req = req.header("idempotency-key", key);
            }
            let (status, _, body) = app.send_raw(req.json(&json!({"agent": "echo", "input": input}))).await;
            assert_eq!(status, 202, "{body}");
            body["data"]["task_id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap()
        }
    };
    let mine = [
        submit(token.clone(), json!({"secret": "mine-1"}), Some("k1")).await,
        submit(token.clone(), json!({"secret": "mine-2"}), None).await,
    ];
    let (_, other_token) = app.user_token("developer").await;
    let theirs = submit(other_token, json!({"secret": "theirs"}), None).await;
    for id in mine.iter().chain([&theirs]) {
        app.wait_status(*id, "succeeded", Duration::from_secs(60)).await;
    }

    let (code, out, err) = devcycle(&s, &["users", "export", "--email", &email], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |kind: &str| lines.iter().filter(|l| l["record"] == kind).cloned().collect::<Vec<Value>>();
    let user = &of("user")[0];
    assert_eq!(user["email"], email.as_str());
    let id = user["id"].as_str().unwrap().to_string();
    let mut inputs: Vec<String> =
        of("task").iter().map(|t| t["input"]["secret"].as_str().unwrap().to_string()).collect();
    inputs.sort();
    assert_eq!(inputs, ["mine-1", "mine-2"], "{out}");
    assert!(of("task_event").len() >= 2, "{out}");
    assert_eq!(of("session").len(), 1, "{out}");
    assert!(of("audit").iter().any(|a| a["action"] == "login" && a["outcome"] == "success"), "{out}");
    for secret in ["password_hash", "refresh_token_hash", "totp_secret", "$argon2"] {
        assert!(!out.contains(secret), "the export holds {secret}");
    }
    assert!(err.contains(&format!("user {id}: {} record(s) exported", lines.len())), "{err}");

    let (code, out, err) = devcycle(&s, &["users", "erase", "--email", &email], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("user {id} erased: 1 session(s) ended, 2 task(s) deleted, 1 idempotency key(s)")),
        "{out}"
    );
    // Locked out: the token is refused, the email is unknown.
    let (status, _, body) = app.send_raw(app.http.get(app.url("/v1/agents")).bearer_auth(&token)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(app.login(&email, common::PASSWORD).await.0, 401);
    // The tasks are gone from Postgres and Redis; the other user's stays.
    for task in mine {
        assert_eq!(app.get(&format!("/v1/tasks/{task}")).await.0, 404, "{task}");
        assert!(app.deps.cache.get_status(task).await.unwrap().is_none(), "{task} in Redis");
    }
    assert_eq!(app.get(&format!("/v1/tasks/{theirs}")).await.0, 200);
    let count = |sql: &'static str| {
        let id = id.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(pool).await.unwrap() }
    };
    let id_uuid: uuid::Uuid = id.parse().unwrap();
    assert_eq!(count("SELECT count(*) FROM tasks WHERE submitted_by = $1").await, 0);
    assert_eq!(count("SELECT count(*) FROM idempotency_keys WHERE id LIKE '%' || $1 || '%'").await, 0);
    assert_eq!(count("SELECT count(*) FROM users WHERE id::text = $1 AND erased_at IS NOT NULL AND disabled").await, 1);
    let emails: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE lower(email) = lower($1)")
        .bind(&email)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(emails, 0, "the email is gone");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM task_events WHERE task_id = ANY($1)")
        .bind(&mine[..])
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
    let refused = sqlx::query("DELETE FROM task_events WHERE task_id = $1").bind(theirs).execute(pool).await;
    assert!(refused.unwrap_err().to_string().contains("append-only"), "outside an erasure the log stays append-only");
    let (status, body) = app.get("/v1/audit?action=user_erase").await;
    assert_eq!((status, &body["data"]["items"][0]["target"]), (200, &json!(id)), "{body}");

    // A task of theirs written after the erasure (a request still in Kafka) goes with a second run.
    let mut req = devcycle::domain::TaskRequest::new("echo", json!({"secret": "late"}));
    req.submitted_by = Some(id.clone());
    let late = req.task_id;
    app.produce_request(&req, None).await;
    app.wait_status(late, "succeeded", Duration::from_secs(60)).await;
    let (code, out, err) = devcycle(&s, &["users", "erase", "--id", &id], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("user {id} erased: 0 session(s) ended, 1 task(s) deleted")), "{out}");
    let (code, out, _) = devcycle(&s, &["users", "export", "--id", &id_uuid.to_string()], &[]).await;
    assert_eq!(code, 0);
    let records: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(records.iter().all(|r| r["record"] != "task"), "{out}");
    assert_eq!(records[0]["email"], format!("erased-{id}@erased.invalid"));
    let (code, _, err) = devcycle(&s, &["users", "erase", "--email", &email], &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains(&format!("no user with the email {email}")), "{err}");
    app.stop().await;
}
