//! The task writer's thread (its group-commit loops and status reader run off the processor's
//! runtime) ends once the last handle is dropped. Alone in its test binary, so no other test's
//! writer thread is counted.

mod common;

use devcycle::db::batch::TaskWriter;
use std::time::{Duration, Instant};

fn writer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("this process's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "task-writer")
        .count()
}

/// Waits up to 5 s for `want` writer threads.
async fn threads_become(want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = writer_threads();
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_writer_thread_serves_until_the_last_handle_is_dropped() {
    let deps = devcycle::app::Deps::connect(common::test_settings()).await.expect("connect");
    let writer = TaskWriter::spawn(deps.pool.clone(), 2).expect("writer thread");
    assert_eq!(threads_become(1).await, 1);
    let other = writer.clone();
    drop(writer);
    // The remaining handle still reads (over the thread's own connections).
    assert_eq!(other.status(uuid::Uuid::new_v4()).await.expect("status read"), None);
    assert_eq!(writer_threads(), 1);
    drop(other);
    assert_eq!(threads_become(0).await, 0, "the thread ends with its last handle");
}
