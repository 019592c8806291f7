//! The group-commit writer against real Postgres (a fresh schema per test): many concurrent
//! transitions land in few transactions with per-task semantics (src/db/batch.rs).

mod common;

use devcycle::db::batch::TaskWriter;
use devcycle::db::tasks::{self, Outcome, Source, Start};
use devcycle::domain::{TaskRequest, TaskStatus};
use serde_json::json;

fn src(offset: i64) -> Source {
    Source { topic: "t".into(), partition: 0, offset }
}

fn succeeded(n: i64) -> Outcome {
    Outcome { status: TaskStatus::Succeeded, output: Some(json!({ "n": n })), error: None, error_class: None }
}

/// Group commits so far in this process (`devcycle_task_writer_batch_size_count`).
fn batch_count() -> f64 {
    let text = devcycle::events::encode();
    text.lines()
        .find_map(|l| l.strip_prefix("devcycle_task_writer_batch_size_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn concurrent_transitions_keep_per_task_semantics() {
    let deps = devcycle::app::Deps::connect(common::test_settings()).await.expect("connect");
    let pool = deps.pool.clone();
    let writer = TaskWriter::spawn(pool.clone(), 2).expect("writer thread");
    let reqs: Vec<TaskRequest> = (0..300).map(|i| TaskRequest::new("echo", json!({ "i": i }))).collect();

    let sources: Vec<Source> = (0..300).map(src).collect();
    // 300 starts at once, each task twice (a redelivery racing the first delivery).
    let commits_before = batch_count();
    let starts = futures::future::join_all(
        reqs.iter().zip(&sources).flat_map(|(r, s)| [writer.start(r, s), writer.start(r, s)]),
    )
    .await;
    for s in &starts {
        match s.as_ref().expect("start") {
            Start::Started(row, event) => {
                assert_eq!(row.status, TaskStatus::Running);
                assert_eq!(event.to_status, TaskStatus::Running);
            }
            Start::Finished(_) => panic!("nothing is final yet"),
        }
    }
    // Group commit: 600 transitions in far fewer calls (this binary's other tests add a few).
    // Without grouping it is 600; a slow machine (an instrumented build beside other tests took
    // 106) forms smaller groups, so the bound asks for three transitions per commit on average.
    let commits = batch_count() - commits_before;
    assert!((1.0..=200.0).contains(&commits), "600 starts took {commits} group commits");
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempts FROM tasks ORDER BY attempts").fetch_all(&pool).await.unwrap();
    assert_eq!(attempts.len(), 300);
    assert!(attempts.iter().all(|a| *a == 2), "each task started twice: {attempts:?}");

    // Finish them all; then a second, different outcome must change nothing.
    let outcomes: Vec<Outcome> = (0..300).map(succeeded).collect();
    let finishes = futures::future::join_all(
        reqs.iter().zip(&sources).zip(&outcomes).map(|((r, s), o)| writer.finish(r, s, o, None)),
    )
    .await;
    let mut published = Vec::new();
    for (i, f) in finishes.into_iter().enumerate() {
        let (row, mut events) = f.expect("finish");
        assert_eq!(row.status, TaskStatus::Succeeded);
        assert_eq!(row.output, Some(json!({ "n": i })));
        assert_eq!(events.len(), 1, "one event: the final one");
        let event = events.pop().expect("changed");
        assert_eq!(event.from_status, Some(TaskStatus::Running));
        published.push(event);
    }
    // The events answered (and published by the processor) are the ones stored.
    for e in published.iter().take(20) {
        let (task, from, to, attempt): (uuid::Uuid, Option<String>, String, i32) =
            sqlx::query_as("SELECT task_id, from_status, to_status, attempt FROM task_events WHERE event_id = $1")
                .bind(e.event_id)
                .fetch_one(&pool)
                .await
                .expect("the answered event is stored");
        assert_eq!((task, from.as_deref(), to.as_str(), attempt), (e.task_id, Some("running"), "succeeded", 2));
    }
    let failed = Outcome {
        status: TaskStatus::Failed,
        output: None,
        error: Some("late".into()),
        error_class: Some("late".into()),
    };
    let again = futures::future::join_all(reqs.iter().map(|r| writer.finish(r, &sources[0], &failed, None))).await;
    for (i, a) in again.into_iter().enumerate() {
        let (row, events) = a.expect("finish again");
        assert_eq!((row.status, row.output), (TaskStatus::Succeeded, Some(json!({ "n": i }))));
        assert!(events.is_empty(), "a final task records no new event");
    }
    let restart = writer.start(&reqs[0], &src(0)).await.expect("start after finish");
    assert!(matches!(restart, Start::Finished(row) if row.status == TaskStatus::Succeeded));

    // queued→running twice (running→running), then running→succeeded: 3 events per task.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM task_events").fetch_one(&pool).await.unwrap();
    assert_eq!(events, 900);
    let seq = tasks::events(&pool, reqs[7].task_id).await.unwrap();
    assert_eq!(seq.last().map(|(_, to, _)| to.as_str()), Some("succeeded"));
    // task_events has no foreign key (migration 20261126000010): the writers keep every event
    // with its task.
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task_events e WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = e.task_id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
}

#[tokio::test]
async fn one_bad_row_fails_only_its_own_caller() {
    let deps = devcycle::app::Deps::connect(common::test_settings()).await.expect("connect");
    let writer = TaskWriter::spawn(deps.pool.clone(), 2).expect("writer thread");
    let good: Vec<TaskRequest> = (0..50).map(|i| TaskRequest::new("echo", json!({ "i": i }))).collect();
    // No such agent: the row breaks the foreign key, in the same batch as the good ones.
    let bad = TaskRequest::new("no-such-agent", json!({}));
    let mut all: Vec<&TaskRequest> = good.iter().collect();
    all.insert(25, &bad);
    let one = src(1);
    let out = futures::future::join_all(all.iter().map(|r| writer.start(r, &one))).await;
    for (r, o) in all.iter().zip(out) {
        if r.task_id == bad.task_id {
            assert!(o.is_err(), "the unknown agent's start fails");
        } else {
            assert!(matches!(o, Ok(Start::Started(..))), "the others start");
        }
    }
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'running'").fetch_one(&deps.pool).await.unwrap();
    assert_eq!(n, 50);
    // The failed row's event went with it (events have no foreign key of their own).
    let events: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT task_id FROM task_events").fetch_all(&deps.pool).await.unwrap();
    assert_eq!(events.len(), 50);
    assert!(!events.contains(&bad.task_id), "no event for the task whose write failed");
}

#[tokio::test]
async fn a_finish_with_its_start_writes_the_attempt_once_with_both_events_in_order() {
    let deps = devcycle::app::Deps::connect(common::test_settings()).await.expect("connect");
    let pool = deps.pool.clone();
    let writer = TaskWriter::spawn(pool.clone(), 2).expect("writer thread");
    let reqs: Vec<TaskRequest> = (0..150).map(|i| TaskRequest::new("echo", json!({ "i": i }))).collect();
    // 0..50: new; 50..100: started once before (a redelivered attempt); 100..150: already final.
    for r in &reqs[50..100] {
        assert!(matches!(writer.start(r, &src(1)).await.unwrap(), Start::Started(..)));
    }
    for (i, r) in reqs[100..].iter().enumerate() {
        writer.finish(r, &src(1), &succeeded(i as i64), None).await.unwrap();
    }
    // Status reads, all at once (they share queries): no row, running, final.
    let statuses = futures::future::join_all(reqs.iter().map(|r| writer.status(r.task_id))).await;
    for (i, st) in statuses.into_iter().enumerate() {
        let want = [None, Some(TaskStatus::Running), Some(TaskStatus::Succeeded)][i / 50];
        assert_eq!(st.expect("status read"), want, "task {i}");
    }
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    let failed = Outcome {
        status: TaskStatus::Failed,
        output: None,
        error: Some("boom".into()),
        error_class: Some("agent_error".into()),
    };
    // All at once, so they share group commits.
    let seven = src(7);
    let out = futures::future::join_all(reqs.iter().map(|r| writer.finish(r, &seven, &failed, Some(started)))).await;
    for (i, (r, o)) in reqs.iter().zip(out).enumerate() {
        let (row, events) = o.expect("finish with start");
        let stored = tasks::events(&pool, r.task_id).await.unwrap();
        let stored: Vec<(Option<&str>, &str, i32)> =
            stored.iter().map(|e| (e.0.as_deref(), e.1.as_str(), e.2)).collect();
        if i >= 100 {
            assert_eq!(row.status, TaskStatus::Succeeded, "a final row is never changed");
            assert!(events.is_empty());
            assert_eq!(row.source_offset, Some(1));
            continue;
        }
        let attempts = if i < 50 { 1 } else { 2 };
        assert_eq!((row.status, row.attempts, row.source_offset), (TaskStatus::Failed, attempts, Some(7)));
        let at = |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros();
        assert_eq!(row.started_at.map(at), Some(at(started)), "started_at is the attempt's start");
        assert!(row.finished_at.is_some());
        // Answered: `running` (at the start) then `failed`, as stored, in that order.
        let answered: Vec<(Option<TaskStatus>, TaskStatus, i32)> =
            events.iter().map(|e| (e.from_status, e.to_status, e.attempt)).collect();
        let from = if i < 50 { TaskStatus::Queued } else { TaskStatus::Running };
        assert_eq!(
            answered,
            [(Some(from), TaskStatus::Running, attempts), (Some(TaskStatus::Running), TaskStatus::Failed, attempts)]
        );
        assert_eq!(at(events[0].at), at(started));
        let expected: &[(Option<&str>, &str, i32)] = if i < 50 {
            &[(Some("queued"), "running", 1), (Some("running"), "failed", 1)]
        } else {
            &[(Some("queued"), "running", 1), (Some("running"), "running", 2), (Some("running"), "failed", 2)]
        };
        assert_eq!(stored, expected);
    }
}

#[tokio::test]
async fn the_first_transition_function_still_applies_a_start_and_a_finish() {
    // Processors of the previous release call apply_task_transitions (20 arguments) during a
    // rolling upgrade; it now runs the second version.
    let deps = devcycle::app::Deps::connect(common::test_settings()).await.expect("connect");
    let req = TaskRequest::new("echo", json!({ "v": 1 }));
    let call = |start: bool, status: &'static str| {
        let (pool, req) = (deps.pool.clone(), req.clone());
        async move {
            sqlx::query_as::<_, (bool, String, i32)>(
                "SELECT changed, status, attempts FROM apply_task_transitions(
                     ARRAY[$1]::uuid[], ARRAY[$2], ARRAY[$3], ARRAY[$4]::int4[], ARRAY[$5]::jsonb[], ARRAY[NULL]::text[],
                     ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::timestamptz[], ARRAY[now()], ARRAY['t'],
                     ARRAY[0], ARRAY[1]::int8[], ARRAY[$6], ARRAY[$7], ARRAY[NULL]::jsonb[], ARRAY[NULL]::text[],
                     ARRAY[NULL]::text[], ARRAY[gen_random_uuid()], ARRAY[now()])",
            )
            .bind(req.task_id)
            .bind(start)
            .bind(&req.agent)
            .bind(req.priority)
            .bind(&req.input)
            .bind(status)
            .bind(status != "running")
            .fetch_one(&pool)
            .await
            .expect("the first version runs")
        }
    };
    assert_eq!(call(true, "running").await, (true, "running".to_string(), 1));
    assert_eq!(call(false, "succeeded").await, (true, "succeeded".to_string(), 1));
    assert_eq!(call(false, "failed").await, (false, "succeeded".to_string(), 1), "a final row is never changed");
    let seq = tasks::events(&deps.pool, req.task_id).await.unwrap();
    let seq: Vec<(Option<&str>, &str)> = seq.iter().map(|e| (e.0.as_deref(), e.1.as_str())).collect();
    assert_eq!(seq, [(Some("queued"), "running"), (Some("running"), "succeeded")]);
}

#[tokio::test]
async fn status_reads_use_the_primary_key_when_first_planned_on_a_small_table() {
    // A young deployment: a pool connection plans the status read while `tasks` holds a few
    // pages and keeps that plan; the table then grows. A plan that scans the table would read
    // every row for each batch of status reads (seen in the benchmarks: 1,000 scans in seconds).
    let deps = devcycle::app::Deps::connect(common::test_settings()).await.expect("connect");
    let mut conn = deps.pool.acquire().await.unwrap();
    const FILL: &str = "INSERT INTO tasks (task_id, agent, status, input)
        SELECT gen_random_uuid(), 'echo', 'succeeded', '{}' FROM generate_series(1, $1) RETURNING task_id";
    sqlx::query(FILL).bind(300).execute(&mut *conn).await.unwrap();
    // Postgres settles on a generic plan after five executions when it looks no dearer than
    // the custom ones; this connection takes it at once.
    sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await.unwrap();
    for _ in 0..3 {
        assert!(tasks::statuses(&mut *conn, &[uuid::Uuid::new_v4()]).await.unwrap().is_empty());
    }
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(FILL).bind(5000).fetch_all(&mut *conn).await.unwrap();
    const SCANS: &str =
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables WHERE relid = 'tasks'::regclass";
    let mut tx = sqlx::Acquire::begin(&mut *conn).await.unwrap();
    let before: (i64, i64) = sqlx::query_as(SCANS).fetch_one(&mut *tx).await.unwrap();
    let found = tasks::statuses(&mut *tx, &ids[..3]).await.unwrap();
    let after: (i64, i64) = sqlx::query_as(SCANS).fetch_one(&mut *tx).await.unwrap();
    assert_eq!(found.len(), 3);
    assert!(found.iter().all(|(id, status)| ids[..3].contains(id) && status == "succeeded"));
    assert_eq!(after.0 - before.0, 0, "the status read does not scan the table");
    assert!(after.1 > before.1, "the status read uses the primary key");
}
