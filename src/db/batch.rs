//! Group commit for task transitions. The `start` and `finish` of many concurrent tasks go
//! through one bounded channel to `database.task_writers` writer loops (on a thread and
//! connections of their own: see [`TaskWriter::spawn`]); each loop takes what is waiting (up to
//! [`MAX_BATCH`]) and applies it with one call of the `apply_task_transitions_v2` function
//! (migrations/20261126000007): one round trip, one transaction. Then it answers every caller.
//! A finish may include its start: a task that ended quickly is written once, with both of its
//! events.
//! Under load a task's transition costs a share of one commit and one round trip instead of
//! a commit and half a dozen round trips of its own.
//!
//! Invariants: a start inserts the task (first delivery) or moves it to `running`, raising
//! `attempts`; a finish moves it to its outcome (inserting a task never started: expired,
//! dead-lettered); a terminal row is never changed; a change and its events commit together;
//! a caller is answered only after the transaction committed; a batch never holds the same
//! task twice (repeats wait for the next round); when a batch fails, each of its jobs is
//! retried alone, so one bad row (say, an unknown agent) fails only its own caller.

use super::tasks::{self, Outcome, Source, Start, TaskRow};
use super::DbError;
use crate::domain::{TaskEvent, TaskRequest, TaskStatus};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

/// Most transitions applied in one transaction.
pub const MAX_BATCH: usize = 512;

enum Op {
    Start,
    /// The outcome, and when the attempt started if its start is written with it.
    Finish(Outcome, Option<DateTime<Utc>>),
}

enum Reply {
    Started(Start),
    /// The row as it now reads and the events stored (none when it was already final).
    Finished(TaskRow, Vec<TaskEvent>),
}

struct Job {
    req: TaskRequest,
    src: Source,
    op: Op,
    reply: oneshot::Sender<Result<Reply, DbError>>,
}

/// A status read: the task id and where to answer.
type Peek = (Uuid, oneshot::Sender<Result<Option<TaskStatus>, DbError>>);

/// The handle tasks use; writer loops stop when the last handle is dropped.
#[derive(Clone)]
pub struct TaskWriter {
    tx: mpsc::Sender<Job>,
    peeks: mpsc::Sender<Peek>,
}

impl TaskWriter {
    /// Starts `writers` writer loops and the status reader on a thread of their own, with their
    /// own connections (`pool`'s options, `writers` + 1 of them, opened when first used). On the
    /// processor's runtime each of their awaits (a reply from Postgres) queued behind every
    /// ready task future: with a thousand tasks in flight that was as long again as the commit
    /// itself. The thread ends when the last handle is dropped and its loops have finished.
    /// While one writer commits, the transitions arriving meanwhile wait in the channel for the
    /// next commit (one writer) or for another writer's (several). On two cores one writer gave
    /// the lower end-to-end latency at the same throughput (load-tests/RESULTS.md).
    pub fn spawn(pool: PgPool, writers: usize) -> std::io::Result<TaskWriter> {
        let writers = writers.max(1);
        let (tx, rx) = mpsc::channel(MAX_BATCH * writers * 2);
        let (peeks, peek_rx) = mpsc::channel(MAX_BATCH * 2);
        let options = PgPoolOptions::new()
            .max_connections(writers as u32 + 1)
            .acquire_timeout(pool.options().get_acquire_timeout());
        let connect = pool.connect_options();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("task-writer".into()).spawn(move || {
            runtime.block_on(async move {
                let own = options.connect_lazy_with((*connect).clone());
                let rx = Arc::new(Mutex::new(rx));
                let mut loops = tokio::task::JoinSet::new();
                for _ in 0..writers {
                    loops.spawn(writer(own.clone(), rx.clone()));
                }
                loops.spawn(peeker(own.clone(), peek_rx));
                while loops.join_next().await.is_some() {}
                own.close().await;
            })
        })?;
        Ok(TaskWriter { tx, peeks })
    }

    /// The task's status in Postgres (`None`: no row yet). Reads waiting at the same time
    /// share one query.
    pub async fn status(&self, id: Uuid) -> Result<Option<TaskStatus>, DbError> {
        let (reply, answer) = oneshot::channel();
        self.peeks.send((id, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    async fn submit(&self, req: &TaskRequest, src: &Source, op: Op) -> Result<Reply, DbError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { req: req.clone(), src: src.clone(), op, reply };
        self.tx.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Records the start of an attempt (see the module's invariants), group-committed:
    /// [`Start::Finished`] when the task is already final and must not run again.
    pub async fn start(&self, req: &TaskRequest, src: &Source) -> Result<Start, DbError> {
        match self.submit(req, src, Op::Start).await? {
            Reply::Started(s) => Ok(s),
            Reply::Finished(..) => unreachable!("a start is answered with Started"),
        }
    }

    /// Records an outcome, group-committed; with `started`, the attempt's start too (at that
    /// time: attempt + 1 and its `running` event) in the same transaction. Answers the row as
    /// it now reads and the events stored, `running` first; none when the task was already
    /// final (the row is then unchanged).
    pub async fn finish(
        &self,
        req: &TaskRequest,
        src: &Source,
        outcome: &Outcome,
        started: Option<DateTime<Utc>>,
    ) -> Result<(TaskRow, Vec<TaskEvent>), DbError> {
        match self.submit(req, src, Op::Finish(outcome.clone(), started)).await? {
            Reply::Finished(row, events) => Ok((row, events)),
            Reply::Started(_) => unreachable!("a finish is answered with Finished"),
        }
    }
}

fn finish(j: &Job) -> Option<&Outcome> {
    match &j.op {
        Op::Finish(o, _) => Some(o),
        Op::Start => None,
    }
}

fn started_at(j: &Job) -> Option<DateTime<Utc>> {
    match &j.op {
        Op::Finish(_, started) => *started,
        Op::Start => None,
    }
}

fn closed() -> DbError {
    DbError::Unavailable(sqlx::Error::PoolClosed)
}

async fn writer(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        while !jobs.is_empty() {
            // One round per distinct task id; repeats (rare redeliveries) go to the next round.
            let mut seen = HashSet::new();
            let (round, later): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| seen.insert(j.req.task_id));
            run_round(&pool, round).await;
            jobs = later;
        }
    }
}

/// Answers status reads, each round with one query for everything waiting.
async fn peeker(pool: PgPool, mut rx: mpsc::Receiver<Peek>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
        match tasks::statuses(&pool, &ids).await {
            Ok(rows) => {
                let rows: HashMap<Uuid, String> = rows.into_iter().collect();
                for (id, reply) in batch {
                    let status = rows.get(&id).map(|s| s.parse::<TaskStatus>()).transpose().map_err(|e| {
                        DbError::Other(sqlx::Error::Protocol(format!("task {id} has an unknown status: {e}")))
                    });
                    let _ = reply.send(status);
                }
            }
            Err(e) => {
                let message = e.to_string();
                let unavailable = DbError::from(e).is_unavailable();
                for (_, reply) in batch {
                    let err = match unavailable {
                        true => DbError::Unavailable(sqlx::Error::Io(std::io::Error::other(message.clone()))),
                        false => DbError::Other(sqlx::Error::Protocol(message.clone())),
                    };
                    let _ = reply.send(Err(err));
                }
            }
        }
    }
}

async fn run_round(pool: &PgPool, jobs: Vec<Job>) {
    let started = std::time::Instant::now();
    let applied = apply(pool, &jobs).await;
    crate::events::TaskBatchWritten { jobs: jobs.len(), elapsed: started.elapsed() }.emit();
    match applied {
        Ok(mut replies) => {
            for job in jobs {
                let reply = replies.remove(&job.req.task_id).ok_or_else(|| {
                    DbError::Other(sqlx::Error::Protocol("task missing from its batch's answer".into()))
                });
                let _ = job.reply.send(reply);
            }
        }
        Err(e) if e.is_unavailable() => {
            let message = e.to_string();
            for job in jobs {
                let _ =
                    job.reply.send(Err(DbError::Unavailable(sqlx::Error::Io(std::io::Error::other(message.clone())))));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, jobs = jobs.len(), "batch failed; applying its jobs one by one");
            for job in jobs {
                let reply = apply(pool, std::slice::from_ref(&job)).await.and_then(|mut r| {
                    r.remove(&job.req.task_id).ok_or_else(|| {
                        DbError::Other(sqlx::Error::Protocol("task missing from its batch's answer".into()))
                    })
                });
                let _ = job.reply.send(reply);
            }
        }
    }
}

/// Applies one round (distinct task ids) in one call of `apply_task_transitions_v2` (migrations):
/// one round trip and one implicit transaction for the whole batch.
async fn apply(pool: &PgPool, jobs: &[Job]) -> Result<HashMap<Uuid, Reply>, DbError> {
    let refs: Vec<&Job> = jobs.iter().collect();
    let c = RequestColumns::of(&refs);
    let is_start: Vec<bool> = jobs.iter().map(|j| matches!(j.op, Op::Start)).collect();
    // Finish columns (ignored for starts, whose status is `running`).
    let status: Vec<&str> = jobs.iter().map(|j| finish(j).map_or("running", |o| o.status.as_str())).collect();
    let finished: Vec<bool> = jobs.iter().map(|j| finish(j).is_some_and(|o| o.status.is_terminal())).collect();
    let output: Vec<Option<serde_json::Value>> =
        jobs.iter().map(|j| finish(j).and_then(|o| o.output.clone())).collect();
    let error: Vec<Option<String>> = jobs.iter().map(|j| finish(j).and_then(|o| o.error.clone())).collect();
    let class: Vec<Option<String>> = jobs.iter().map(|j| finish(j).and_then(|o| o.error_class.clone())).collect();
    // The event of each job, should its row change: its id and time are chosen here so the
    // published event equals the stored one.
    let event_ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::new_v4()).collect();
    let at = chrono::Utc::now();
    // Finishes that include their start: when it started, and the id of its `running` event.
    let started: Vec<Option<DateTime<Utc>>> = jobs.iter().map(started_at).collect();
    let start_event_ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::new_v4()).collect();
    let rows = sqlx::query(
        "SELECT * FROM apply_task_transitions_v2($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
         $15, $16, $17, $18, $19, $20, $21, $22)",
    )
    .bind(c.id)
    .bind(is_start)
    .bind(c.agent)
    .bind(c.priority)
    .bind(c.input)
    .bind(c.submitted_by)
    .bind(c.request_id)
    .bind(c.traceparent)
    .bind(c.deadline)
    .bind(c.created_at)
    .bind(c.topic)
    .bind(c.partition)
    .bind(c.offset)
    .bind(status)
    .bind(finished)
    .bind(output)
    .bind(error)
    .bind(class)
    .bind(&event_ids)
    .bind(vec![at; jobs.len()])
    .bind(&started)
    .bind(&start_event_ids)
    .fetch_all(pool)
    .await?;
    let mut current: HashMap<Uuid, (bool, Option<TaskStatus>, TaskRow)> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let changed: bool = r.try_get("changed")?;
        let prior: Option<String> = r.try_get("prior_status")?;
        let row = tasks::row_to_task(r)?;
        current.insert(row.task_id, (changed, prior.and_then(|s| s.parse().ok()), row));
    }
    let mut replies = HashMap::with_capacity(jobs.len());
    for ((job, event_id), start_event_id) in jobs.iter().zip(event_ids).zip(start_event_ids) {
        let id = job.req.task_id;
        let (changed, from, row) = current
            .remove(&id)
            .ok_or_else(|| DbError::Other(sqlx::Error::Protocol("task missing from its batch's answer".into())))?;
        // The same `from` and message the function stored.
        let event = |event_id, from: Option<TaskStatus>, to, message: Option<String>, at| TaskEvent {
            event_id,
            task_id: id,
            agent: row.agent.clone(),
            from_status: from,
            to_status: to,
            attempt: row.attempts,
            message,
            at,
            request_id: row.request_id.clone(),
        };
        let queued_or = |from: Option<TaskStatus>| from.or(Some(TaskStatus::Queued));
        let reply = match (&job.op, changed) {
            (Op::Start, true) => {
                let e = event(event_id, queued_or(from), TaskStatus::Running, None, at);
                Reply::Started(Start::Started(row, e))
            }
            (Op::Finish(o, None), true) => {
                let e = event(event_id, from, row.status, o.error.clone(), at);
                Reply::Finished(row, vec![e])
            }
            (Op::Finish(o, Some(started)), true) => {
                let running = event(start_event_id, queued_or(from), TaskStatus::Running, None, *started);
                let last = event(event_id, Some(TaskStatus::Running), row.status, o.error.clone(), at);
                Reply::Finished(row, vec![running, last])
            }
            (Op::Start, false) => Reply::Started(Start::Finished(row)),
            (Op::Finish(..), false) => Reply::Finished(row, Vec::new()),
        };
        replies.insert(id, reply);
    }
    Ok(replies)
}

/// Per-column arrays of the request fields of a batch.
struct RequestColumns {
    id: Vec<Uuid>,
    agent: Vec<String>,
    priority: Vec<i32>,
    input: Vec<serde_json::Value>,
    submitted_by: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    traceparent: Vec<Option<String>>,
    deadline: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    created_at: Vec<chrono::DateTime<chrono::Utc>>,
    topic: Vec<String>,
    partition: Vec<i32>,
    offset: Vec<i64>,
}

impl RequestColumns {
    fn of(jobs: &[&Job]) -> Self {
        RequestColumns {
            id: jobs.iter().map(|j| j.req.task_id).collect(),
            agent: jobs.iter().map(|j| j.req.agent.clone()).collect(),
            priority: jobs.iter().map(|j| j.req.priority).collect(),
            input: jobs.iter().map(|j| j.req.input.clone()).collect(),
            submitted_by: jobs.iter().map(|j| j.req.submitted_by.clone()).collect(),
            request_id: jobs.iter().map(|j| j.req.request_id.clone()).collect(),
            traceparent: jobs.iter().map(|j| j.req.traceparent.clone()).collect(),
            deadline: jobs.iter().map(|j| j.req.deadline).collect(),
            created_at: jobs.iter().map(|j| j.req.submitted_at).collect(),
            topic: jobs.iter().map(|j| j.src.topic.clone()).collect(),
            partition: jobs.iter().map(|j| j.src.partition).collect(),
            offset: jobs.iter().map(|j| j.src.offset).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::TaskStatus;

    #[test]
    fn the_transition_function_knows_the_same_final_statuses() {
        let sql = include_str!("../../migrations/20261126000007_task_runs.sql");
        let guard = format!("tasks.status NOT IN {}", TaskStatus::TERMINAL_SQL);
        assert_eq!(sql.matches(&guard).count(), 2, "both upserts guard with TERMINAL_SQL: {guard}");
    }
}
