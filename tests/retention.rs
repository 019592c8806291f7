//! `devcycle retention apply` against the real Postgres on a schema of its own: what is past
//! retention goes (in batches), what is not stays, a dry run deletes nothing, the run is
//! audited, and the audit log's year holds even against a hand-written DELETE.

mod common;

use common::TestApp;
use devcycle::db::retention::{self, Report};
use sqlx::PgPool;
use uuid::Uuid;

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.unwrap()
}

async fn exec(pool: &PgPool, sql: &str) -> Result<u64, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await.map(|r| r.rows_affected())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_what_is_past_it_and_keeps_the_audit_year() {
    let app = TestApp::spawn().await;
    let pool = &app.deps.pool;
    let email = app.create_user("developer").await;
    let user: Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1").bind(&email).fetch_one(pool).await.unwrap();

    // Audit rows: 3 past the year, 2 just inside it.
    for days in [400, 380, 366, 364, 300] {
        let sql = format!(
            "INSERT INTO audit_log (at, actor, action, outcome) VALUES (now() - interval '{days} days', 'old', 'aged', 'success')"
        );
        exec(pool, &sql).await.unwrap();
    }
    // Sessions of that user: refresh expired 40 and 31 days ago (past the 30 days kept), 29 days
    // ago (kept), and a live one.
    for days in [40, 31, 29, -7] {
        let sql = format!(
            "INSERT INTO sessions (id, user_id, family, refresh_token_hash, expires_at)
             VALUES ('{id}', '{user}', '{id}', 'h-{id}', now() - interval '{days} days')",
            id = Uuid::new_v4()
        );
        exec(pool, &sql).await.unwrap();
    }
    // Password history: 8 more entries than the one creating the user wrote; 5 are kept.
    for i in 1..=8 {
        let sql = format!(
            "INSERT INTO password_history (user_id, password_hash, created_at) VALUES ('{user}', 'old-{i}', now() - interval '{i} days')"
        );
        exec(pool, &sql).await.unwrap();
    }
    let history = |u: Uuid| format!("SELECT count(*) FROM password_history WHERE user_id = '{u}'");
    let history_before = count(pool, &history(user)).await;
    assert!(history_before >= 8);
    // Idempotency-Key records: two expired (one a lapsed reservation), one live.
    for (id, status, expiry) in
        [("t:old-1", "200", "-1 hour"), ("t:old-2", "NULL", "-1 second"), ("t:live", "202", "1 hour")]
    {
        let sql = format!(
            "INSERT INTO idempotency_keys (id, hash, status, expires_at) VALUES ('{id}', 'h', {status}, now() + interval '{expiry}')"
        );
        exec(pool, &sql).await.unwrap();
    }
    let want = Report { audit_log: 3, sessions: 2, password_history: history_before as u64 - 5, idempotency_keys: 2 };

    let mut settings = app.deps.settings.clone();
    settings.retention.batch_size = 2;
    let dry = retention::apply(pool, &settings, true).await.unwrap();
    assert_eq!(dry, want, "dry run");
    assert_eq!(
        count(pool, "SELECT count(*) FROM audit_log WHERE action = 'aged'").await,
        5,
        "a dry run deletes nothing"
    );
    assert_eq!(count(pool, "SELECT count(*) FROM audit_log WHERE action = 'retention_apply'").await, 0);

    let done = retention::apply(pool, &settings, false).await.unwrap();
    assert_eq!(done, want);
    let left =
        count(pool, "SELECT count(*) FROM audit_log WHERE action = 'aged' AND at > now() - interval '365 days'").await;
    assert_eq!((count(pool, "SELECT count(*) FROM audit_log WHERE action = 'aged'").await, left), (2, 2));
    let sessions = format!("SELECT count(*) FROM sessions WHERE user_id = '{user}'");
    assert_eq!(count(pool, &sessions).await, 2, "the session 29 days past its expiry and the live one");
    assert_eq!(count(pool, &history(user)).await, 5);
    let idempotency: Vec<String> = sqlx::query_scalar("SELECT id FROM idempotency_keys").fetch_all(pool).await.unwrap();
    assert_eq!(idempotency, ["t:live"]);
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT password_hash FROM password_history WHERE user_id = $1 AND password_hash LIKE 'old-%' ORDER BY created_at DESC",
    )
    .bind(user)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        kept.len() <= 5 && kept.iter().zip(1..).all(|(h, i)| *h == format!("old-{i}")),
        "the newest kept: {kept:?}"
    );
    let details: serde_json::Value =
        sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'retention_apply'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(details["deleted"]["audit_log"], 3, "{details}");
    assert_eq!(details["deleted"]["sessions"], 2, "{details}");

    // Nothing left to do; and the year is the database's own rule, not only this code's.
    assert_eq!(retention::apply(pool, &settings, false).await.unwrap(), Report::default());
    let e = exec(pool, "DELETE FROM audit_log WHERE action = 'aged'").await.unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let e =
        exec(pool, "UPDATE audit_log SET actor = 'someone else' WHERE action = 'retention_apply'").await.unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    exec(pool, "INSERT INTO audit_log (at, action, outcome) VALUES (now() - interval '500 days', 'aged2', 'success')")
        .await
        .unwrap();
    let e = exec(pool, "UPDATE audit_log SET actor = 'x' WHERE action = 'aged2'").await.unwrap_err();
    assert!(e.to_string().contains("append-only"), "an old row is not updated either: {e}");
    assert_eq!(exec(pool, "DELETE FROM audit_log WHERE action = 'aged2'").await.unwrap(), 1, "past the year");
    app.stop().await;
}
