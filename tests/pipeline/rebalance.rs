//! Members joining the group while tasks run: partitions are handed over once their running
//! tasks end (or those are cancelled after the grace period), so no task runs twice at once.

use super::*;

/// How many partitions each member of `group` holds, from the broker's description of the group
/// (each member's assignment in the consumer protocol: version, then per topic its name and
/// partitions, then user data).
fn partitions_per_member(app: &TestApp, group: &str) -> Vec<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = devcycle::kafka::reader_config(&app.deps.settings.kafka, "describe").create().unwrap();
    let list = c.fetch_group_list(Some(group), Duration::from_secs(10)).expect("group description");
    let count = |b: &[u8]| -> usize {
        let int = |at: usize, n: usize| b.get(at..at + n).map_or(0, |x| x.iter().fold(0i64, |v, y| v << 8 | *y as i64));
        let (mut at, mut partitions) = (6, 0);
        for _ in 0..int(2, 4) {
            at += 2 + int(at, 2) as usize;
            let n = int(at, 4) as usize;
            at += 4 + 4 * n;
            partitions += n;
        }
        partitions
    };
    list.groups().iter().flat_map(|g| g.members()).map(|m| count(m.assignment().unwrap_or_default())).collect()
}

/// Scaling out while tasks run: the member losing partitions hands them over only once their
/// running tasks have ended, so the new member finds those tasks final and does not run them
/// again (their side effects would happen twice). One task per partition, each a command that
/// counts its runs and takes 6 s; a second processor joins the group while they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_joining_while_tasks_run_does_not_run_them_again() {
    joining_while_tasks_run("at_least_once").await;
}

/// The same in exactly-once mode, where the member handing partitions over first commits the
/// transaction holding their finished records' outputs and offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_joining_while_tasks_run_does_not_run_them_again_in_exactly_once_mode() {
    joining_while_tasks_run("exactly_once").await;
}

async fn joining_while_tasks_run(guarantee: &str) {
    let tasks = SlowTasks::start(&[("guarantee", format!("\"{guarantee}\""))], 6).await;
    let (app, ids, runs) = (&tasks.app, &tasks.ids, &tasks.starts);
    let second = tasks.second_member_joins().await;
    for id in ids {
        let done = app.wait_status(*id, "succeeded", WAIT).await;
        assert_eq!(done["attempts"], 1, "{done}");
    }
    // Give a second run on the new member time to show before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lines(runs), ids.len(), "each task's command ran once");
    if guarantee == "exactly_once" {
        // The results, read from the beginning: one per task (a duplicate among the first ones
        // read would leave a task without its result here).
        let results = app.read_results(ids, WAIT).await;
        let distinct: std::collections::HashSet<_> = results.iter().map(|(r, _)| r.task_id).collect();
        assert_eq!(distinct.len(), ids.len(), "one result per task");
    }
    second.stop().await;
    tasks.stop().await;
}

/// A task that outlives the revoke's grace period is cancelled on the member handing its
/// partition over (its command killed), so it never runs on beside the new owner's run: each
/// task's command gets to its end once. The grace here is 1.5 s and each command takes 12 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_outliving_the_revoke_grace_is_cancelled_where_it_ran() {
    let tasks = SlowTasks::start(&[("shutdown_grace_ms", "1500".into())], 12).await;
    let (app, ids) = (&tasks.app, &tasks.ids);
    let second = tasks.second_member_joins().await;
    let mut moved = 0;
    for id in ids {
        let done = app.wait_status(*id, "succeeded", WAIT).await;
        let attempts = done["attempts"].as_i64().unwrap();
        assert!(attempts == 1 || attempts == 2, "{done}");
        moved += (attempts == 2) as usize;
    }
    // Every run started has ended 12 s after its start unless it was cancelled (its command
    // killed): wait for the last start's end (the file was last written by that start).
    let last_start = std::fs::metadata(&tasks.starts).and_then(|m| m.modified()).expect("runs started");
    if let Ok(left) = (last_start + Duration::from_secs(13)).duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    assert!(moved > 0, "some partitions moved while their tasks ran");
    assert_eq!(lines(&tasks.starts), ids.len() + moved, "the moved tasks started again on the new member");
    assert_eq!(lines(&tasks.ends), ids.len(), "each task's command got to its end once");
    second.stop().await;
    tasks.stop().await;
}

/// One `slow` command task on each of the 6 partitions of a processor edited with `edits`, all
/// running: each run appends a line to `starts`, sleeps `secs` and appends one to `ends`.
struct SlowTasks {
    app: TestApp,
    ids: Vec<uuid::Uuid>,
    starts: std::path::PathBuf,
    ends: std::path::PathBuf,
}

impl SlowTasks {
    async fn start(edits: &[(&str, String)], secs: u64) -> SlowTasks {
        let app = TestApp::spawn_with(|s| {
            let tag = format!("slow-{}", s.database.schema);
            s.paths.processors = common::processors_with(&tag, edits);
        })
        .await;
        let file = |what: &str| std::env::temp_dir().join(format!("devcycle-{what}-{}", uuid::Uuid::new_v4()));
        let (starts, ends) = (file("starts"), file("ends"));
        let script = format!("echo run >> '{}'; sleep {secs}; echo end >> '{}'; cat", starts.display(), ends.display());
        let agent = json!({"name": "slow", "executor": "command", "config": {"program": "sh", "args": ["-c", script]}});
        assert_eq!(app.post("/v1/agents", &agent).await.0, 201);
        let mut ids = Vec::new();
        for p in 0..6 {
            let req = devcycle::domain::TaskRequest::new("slow", json!({"p": p}));
            ids.push(req.task_id);
            app.produce_request(&req, Some(p)).await;
        }
        for id in &ids {
            app.wait_status(*id, "running", WAIT).await;
        }
        SlowTasks { app, ids, starts, ends }
    }

    /// A second processor joins the group; returns once partitions are on both members.
    async fn second_member_joins(&self) -> TestApp {
        let app = &self.app;
        let second = TestApp::start(app.deps.clone(), devcycle::app::Mode::Process("agent-executor".into())).await;
        let group = app.deps.catalog.group_name("devcycle.agent-executor");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let members = partitions_per_member(app, &group);
            if members.len() == 2 && members.iter().all(|n| *n > 0) {
                assert_eq!(members.iter().sum::<usize>(), self.ids.len(), "{members:?}");
                return second;
            }
            assert!(std::time::Instant::now() < deadline, "the group never settled on two members: {members:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn stop(self) {
        let _ = std::fs::remove_file(&self.starts);
        let _ = std::fs::remove_file(&self.ends);
        self.app.stop().await;
    }
}

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}
