//! The tasks running in this process, by task id: how copies of one task take turns, and where
//! a cancel finds them.
//!
//! Two records can carry the same task: a producer's retry without idempotence, a replayed
//! dead letter, a redelivery while the first copy still runs. Copies in this process run one at
//! a time: a later copy waits for the one running to end, and then finds its task final (the
//! status read of an agent with side effects, or the outcome's write, which leaves a final task
//! as it was) instead of running the agent beside it. Copies on other members are kept apart by
//! the partition hand-over (`runtime::revoke`) and the key (the task id) that puts them on one
//! partition.
//!
//! Invariants: every copy of a task shares one cancellation token, so a cancel reaches whichever
//! copy runs; an entry leaves the map when its last copy ends or is dropped, waiting or running
//! (a runner cancelling records after its grace period leaves nothing behind).

use crate::events::DuplicateTaskWaiting;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The tasks with a copy in this process.
#[derive(Clone, Default)]
pub(super) struct Running(Arc<Mutex<HashMap<Uuid, Entry>>>);

#[derive(Default)]
struct Entry {
    token: CancellationToken,
    turn: Arc<tokio::sync::Mutex<()>>,
    copies: usize,
}

/// A copy's turn at its task: the only copy of the task running in this process while held.
pub(super) struct Turn {
    pub token: CancellationToken,
    _turn: OwnedMutexGuard<()>,
    _copy: Copy,
}

/// A copy counted in its task's entry (waiting or running); uncounted when dropped.
struct Copy {
    running: Running,
    task_id: Uuid,
}

impl Drop for Copy {
    fn drop(&mut self) {
        let mut map = self.running.0.lock().expect("lock");
        if let Some(e) = map.get_mut(&self.task_id) {
            e.copies -= 1;
            if e.copies == 0 {
                map.remove(&self.task_id);
            }
        }
    }
}

impl Running {
    /// Waits for the task's turn: at once unless another copy of it runs here.
    pub async fn turn(&self, task_id: Uuid) -> Turn {
        let (turn, token, waits) = {
            let mut map = self.0.lock().expect("lock");
            let e = map.entry(task_id).or_default();
            e.copies += 1;
            (e.turn.clone(), e.token.clone(), e.copies > 1)
        };
        // Counted before waiting, so a copy dropped while it waits is uncounted too.
        let copy = Copy { running: self.clone(), task_id };
        if waits {
            DuplicateTaskWaiting { task_id }.emit();
        }
        Turn { token, _turn: turn.lock_owned().await, _copy: copy }
    }

    /// Cancels the task's running copy (and those waiting) when it has any here.
    pub fn cancel(&self, task_id: Uuid) {
        if let Some(e) = self.0.lock().expect("lock").get(&task_id) {
            e.token.cancel();
        }
    }

    #[cfg(test)]
    fn copies(&self, task_id: Uuid) -> usize {
        self.0.lock().expect("lock").get(&task_id).map_or(0, |e| e.copies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn copies_of_a_task_take_turns_and_other_tasks_do_not_wait() {
        let running = Running::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = running.turn(a).await;
        let mut second = Box::pin(running.turn(a));
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut second).await.is_err(), "waits for the first");
        assert_eq!(running.copies(a), 2);
        // Another task is not held up.
        let other = tokio::time::timeout(Duration::from_millis(50), running.turn(b)).await.expect("no wait");
        drop(first);
        let second = tokio::time::timeout(Duration::from_millis(50), second).await.expect("its turn");
        assert_eq!(running.copies(a), 1);
        drop((second, other));
        assert_eq!((running.copies(a), running.copies(b)), (0, 0));
        assert!(running.0.lock().unwrap().is_empty(), "no entry left behind");
    }

    #[tokio::test]
    async fn a_cancel_reaches_every_copy_and_only_its_task() {
        let running = Running::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = running.turn(a).await;
        let mut waiting = Box::pin(running.turn(a));
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut waiting).await.is_err());
        let other = running.turn(b).await;
        running.cancel(a);
        assert!(first.token.is_cancelled());
        assert!(!other.token.is_cancelled());
        drop(first);
        // The copy that waited gets its turn cancelled (its task is).
        let second = waiting.await;
        assert!(second.token.is_cancelled());
        drop(second);
        // Once no copy is left, a new copy starts afresh; a cancel of a task not here is a no-op.
        running.cancel(Uuid::new_v4());
        assert!(!running.turn(a).await.token.is_cancelled());
    }

    #[tokio::test]
    async fn a_copy_dropped_while_waiting_leaves_nothing_behind() {
        let running = Running::default();
        let a = Uuid::new_v4();
        let first = running.turn(a).await;
        let mut waiting = Box::pin(running.turn(a));
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut waiting).await.is_err());
        drop(waiting);
        assert_eq!(running.copies(a), 1);
        drop(first);
        assert!(running.0.lock().unwrap().is_empty());
    }
}
