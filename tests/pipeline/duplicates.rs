//! Two records of one task in flight at once in one processor (a producer's retry without
//! idempotence, a replay while the first copy still runs): the second waits for the first, so
//! the agent runs once, and a cancel stops the task whichever copy runs.

use super::*;
use std::path::{Path, PathBuf};

/// A task of a command agent that marks its start and its end in files and takes `secs` in
/// between, produced twice, back to back, to one partition.
struct Duplicated {
    app: TestApp,
    id: uuid::Uuid,
    starts: PathBuf,
    ends: PathBuf,
}

impl Duplicated {
    async fn start(secs: u64) -> Duplicated {
        let app = TestApp::spawn().await;
        let file = |what: &str| std::env::temp_dir().join(format!("devcycle-dup-{what}-{}", uuid::Uuid::new_v4()));
        let (starts, ends) = (file("starts"), file("ends"));
        let script = format!("echo run >> '{}'; sleep {secs}; echo end >> '{}'; cat", starts.display(), ends.display());
        let agent =
            json!({"name": "twice", "executor": "command", "config": {"program": "sh", "args": ["-c", script]}});
        assert_eq!(app.post("/v1/agents", &agent).await.0, 201);
        let req = devcycle::domain::TaskRequest::new("twice", json!({"n": 1}));
        app.produce_request(&req, Some(0)).await;
        app.produce_request(&req, Some(0)).await;
        Duplicated { app, id: req.task_id, starts, ends }
    }

    async fn stop(self) {
        self.app.stop().await;
        let _ = std::fs::remove_file(&self.starts);
        let _ = std::fs::remove_file(&self.ends);
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}

/// Fails when the second copy runs the agent beside the first (its status read finds the task
/// `queued` or `running`, not final): two starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_s_second_record_arriving_while_it_runs_does_not_run_it_again() {
    let d = Duplicated::start(2).await;
    let done = d.app.wait_status(d.id, "succeeded", WAIT).await;
    assert_eq!(done["attempts"], 1, "{done}");
    // Both records end in the one stored result, published for each.
    let results = d.app.read_results(&[d.id, d.id], WAIT).await;
    for (r, _) in &results {
        assert_eq!((r.status, r.attempts), (TaskStatus::Succeeded, 1), "{results:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((lines(&d.starts), lines(&d.ends)), (1, 1), "the agent ran once");
    let statuses: Vec<String> =
        devcycle::db::tasks::events(&d.app.deps.pool, d.id).await.unwrap().into_iter().map(|e| e.1).collect();
    assert_eq!(statuses, ["running", "succeeded"]);
    d.stop().await;
}

/// A cancel while the second copy waits stops the running one (its command killed) and the
/// waiting one does not start. Fails when a copy's cancellation token replaces the other's (the
/// cancel then misses the running copy, which gets to its end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_a_task_whose_second_record_waits_for_it() {
    let secs = 8;
    let d = Duplicated::start(secs).await;
    d.app.wait_status(d.id, "running", WAIT).await;
    // Both records were fetched together; give the second time to reach its task.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (s, b) = d.app.post(&format!("/v1/tasks/{}/cancel", d.id), &json!({})).await;
    assert_eq!(s, 200, "{b}");
    let results = d.app.read_results(&[d.id, d.id], WAIT).await;
    for (r, _) in &results {
        assert_eq!(r.status, TaskStatus::Cancelled, "{results:?}");
    }
    // A run not stopped would end `secs` after its start: wait past that before counting.
    let started = std::fs::metadata(&d.starts).and_then(|m| m.modified()).expect("the agent started");
    if let Ok(left) = (started + Duration::from_secs(secs + 1)).duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    assert_eq!((lines(&d.starts), lines(&d.ends)), (1, 0), "one run, stopped by the cancel");
    let statuses: Vec<String> =
        devcycle::db::tasks::events(&d.app.deps.pool, d.id).await.unwrap().into_iter().map(|e| e.1).collect();
    assert_eq!(statuses, ["running", "cancelled"]);
    d.stop().await;
}
