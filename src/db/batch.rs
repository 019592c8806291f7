//! Group commit for task transitions. The `start` and `finish` of many concurrent tasks go
//! through one bounded channel to a few writer loops; each loop takes what is waiting (up to
//! [`MAX_BATCH`]) and applies it in one transaction with multi-row statements, then answers
//! every caller. Under load a task's transition costs a share of one commit instead of a
//! commit and half a dozen round trips of its own.
//!
//! Invariants: per task, the same semantics as [`tasks::start`] and [`tasks::finish`] (a
//! terminal row is never changed; a change and its event commit together); a caller is
//! answered only after the transaction committed; a batch never holds the same task twice
//! (repeats wait for the next round); when a batch fails, each of its jobs is retried alone,
//! so one bad row (say, an unknown agent) fails only its own caller.

use super::tasks::{self, Outcome, Source, Start, TaskRow};
use super::DbError;
use crate::domain::{TaskEvent, TaskRequest, TaskStatus};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

/// Most transitions applied in one transaction.
pub const MAX_BATCH: usize = 512;
/// Writer loops; while one commits, the next gathers a batch.
pub const WRITERS: usize = 2;

enum Op {
    Start,
    Finish(Outcome),
}

enum Reply {
    Started(Start),
    Finished(TaskRow, Option<TaskEvent>),
}

struct Job {
    req: TaskRequest,
    src: Source,
    op: Op,
    reply: oneshot::Sender<Result<Reply, DbError>>,
}

/// The handle tasks use; writer loops stop when the last handle is dropped.
#[derive(Clone)]
pub struct TaskWriter {
    tx: mpsc::Sender<Job>,
}

impl TaskWriter {
    /// Starts the writer loops on the current runtime.
    pub fn spawn(pool: PgPool) -> TaskWriter {
        let (tx, rx) = mpsc::channel(MAX_BATCH * WRITERS * 2);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(pool.clone(), rx.clone()));
        }
        TaskWriter { tx }
    }

    async fn submit(&self, req: &TaskRequest, src: &Source, op: Op) -> Result<Reply, DbError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { req: req.clone(), src: src.clone(), op, reply };
        self.tx.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// [`tasks::start`], group-committed.
    pub async fn start(&self, req: &TaskRequest, src: &Source) -> Result<Start, DbError> {
        match self.submit(req, src, Op::Start).await? {
            Reply::Started(s) => Ok(s),
            Reply::Finished(..) => unreachable!("a start is answered with Started"),
        }
    }

    /// [`tasks::finish`], group-committed.
    pub async fn finish(
        &self,
        req: &TaskRequest,
        src: &Source,
        outcome: &Outcome,
    ) -> Result<(TaskRow, Option<TaskEvent>), DbError> {
        match self.submit(req, src, Op::Finish(outcome.clone())).await? {
            Reply::Finished(row, event) => Ok((row, event)),
            Reply::Started(_) => unreachable!("a finish is answered with Finished"),
        }
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

async fn run_round(pool: &PgPool, jobs: Vec<Job>) {
    match apply(pool, &jobs).await {
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
                let reply = match &job.op {
                    Op::Start => tasks::start(pool, &job.req, &job.src).await.map(Reply::Started),
                    Op::Finish(o) => {
                        tasks::finish(pool, &job.req, &job.src, o).await.map(|(r, e)| Reply::Finished(r, e))
                    }
                };
                let _ = job.reply.send(reply);
            }
        }
    }
}

/// Applies one round (distinct task ids) in one transaction.
async fn apply(pool: &PgPool, jobs: &[Job]) -> Result<HashMap<Uuid, Reply>, DbError> {
    let mut ids: Vec<Uuid> = jobs.iter().map(|j| j.req.task_id).collect();
    ids.sort();
    let mut tx = pool.begin().await?;
    let prior: HashMap<Uuid, String> = sqlx::query_as::<_, (Uuid, String)>(
        "SELECT task_id, status FROM tasks WHERE task_id = ANY($1) ORDER BY task_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let starts: Vec<&Job> = jobs.iter().filter(|j| matches!(j.op, Op::Start)).collect();
    let finishes: Vec<&Job> = jobs.iter().filter(|j| matches!(j.op, Op::Finish(_))).collect();
    let mut changed: HashMap<Uuid, TaskRow> = HashMap::new();
    if !starts.is_empty() {
        changed.extend(upsert_starts(&mut tx, &starts).await?.into_iter().map(|r| (r.task_id, r)));
    }
    if !finishes.is_empty() {
        changed.extend(upsert_finishes(&mut tx, &finishes).await?.into_iter().map(|r| (r.task_id, r)));
    }
    // Rows the guard left alone are final already: read them as they are.
    let unchanged: Vec<Uuid> = ids.iter().filter(|id| !changed.contains_key(id)).copied().collect();
    let mut current: HashMap<Uuid, TaskRow> = HashMap::new();
    if !unchanged.is_empty() {
        current = tasks::get_many(&mut *tx, &unchanged).await?.into_iter().map(|r| (r.task_id, r)).collect();
    }
    let mut replies = HashMap::with_capacity(jobs.len());
    let mut events = Vec::new();
    for job in jobs {
        let id = job.req.task_id;
        let from: Option<TaskStatus> = prior.get(&id).and_then(|s| s.parse().ok());
        let reply = match (&job.op, changed.remove(&id)) {
            (Op::Start, Some(row)) => {
                let event = event_for(&row, from.or(Some(TaskStatus::Queued)), None);
                events.push(event.clone());
                Reply::Started(Start::Started(row, event))
            }
            (Op::Finish(o), Some(row)) => {
                let event = event_for(&row, from, o.error.clone());
                events.push(event.clone());
                Reply::Finished(row, Some(event))
            }
            (op, None) => {
                let row = current.remove(&id).ok_or_else(|| {
                    DbError::Other(sqlx::Error::Protocol("task vanished during a batched write".into()))
                })?;
                match op {
                    Op::Start => Reply::Started(Start::Finished(row)),
                    Op::Finish(_) => Reply::Finished(row, None),
                }
            }
        };
        replies.insert(id, reply);
    }
    tasks::insert_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(replies)
}

fn event_for(row: &TaskRow, from: Option<TaskStatus>, message: Option<String>) -> TaskEvent {
    TaskEvent::new(row.task_id, &row.agent, from, row.status, row.attempts, message, row.request_id.clone())
}

/// Per-column arrays of the request fields both upserts take.
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

/// The UNNEST arguments $1..$12 for [`RequestColumns`], aliased for the statements below.
const REQUEST_UNNEST: &str = "UNNEST($1::uuid[], $2::text[], $3::int4[], $4::jsonb[], $5::text[], $6::text[], \
    $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::int4[], $12::int8[]) \
    AS t(id, agent, priority, input, submitted_by, request_id, traceparent, deadline, created_at, topic, part, off)";

async fn upsert_starts(tx: &mut Transaction<'_, Postgres>, jobs: &[&Job]) -> Result<Vec<TaskRow>, DbError> {
    let c = RequestColumns::of(jobs);
    let sql = format!(
        "INSERT INTO tasks (task_id, agent, status, attempts, priority, input, submitted_by, request_id,
                            traceparent, deadline, created_at, started_at, source_topic, source_partition, source_offset)
         SELECT t.id, t.agent, 'running', 1, t.priority, t.input, t.submitted_by, t.request_id, t.traceparent,
                t.deadline, t.created_at, now(), t.topic, t.part, t.off
         FROM {REQUEST_UNNEST}
         ON CONFLICT (task_id) DO UPDATE SET status = 'running', attempts = tasks.attempts + 1, started_at = now(),
             updated_at = now(), source_topic = EXCLUDED.source_topic,
             source_partition = EXCLUDED.source_partition, source_offset = EXCLUDED.source_offset
           WHERE tasks.status NOT IN {}
         RETURNING {}",
        TaskStatus::TERMINAL_SQL,
        tasks::COLUMNS
    );
    let rows = bind_request(sqlx::query(AssertSqlSafe(sql)), c).fetch_all(&mut **tx).await?;
    rows.iter().map(tasks::row_to_task).collect()
}

async fn upsert_finishes(tx: &mut Transaction<'_, Postgres>, jobs: &[&Job]) -> Result<Vec<TaskRow>, DbError> {
    let outcome = |j: &&Job| match &j.op {
        Op::Finish(o) => o.clone(),
        Op::Start => unreachable!("only finishes here"),
    };
    let outcomes: Vec<Outcome> = jobs.iter().map(outcome).collect();
    let status: Vec<&str> = outcomes.iter().map(|o| o.status.as_str()).collect();
    let finished: Vec<bool> = outcomes.iter().map(|o| o.status.is_terminal()).collect();
    let output: Vec<Option<serde_json::Value>> = outcomes.iter().map(|o| o.output.clone()).collect();
    let error: Vec<Option<String>> = outcomes.iter().map(|o| o.error.clone()).collect();
    let class: Vec<Option<String>> = outcomes.iter().map(|o| o.error_class.clone()).collect();
    let sql = format!(
        "INSERT INTO tasks (task_id, agent, status, attempts, priority, input, output, error, error_class,
                            submitted_by, request_id, traceparent, deadline, created_at, finished_at,
                            source_topic, source_partition, source_offset)
         SELECT t.id, t.agent, o.status, 0, t.priority, t.input, o.output, o.error, o.error_class, t.submitted_by,
                t.request_id, t.traceparent, t.deadline, t.created_at, CASE WHEN o.finished THEN now() END,
                t.topic, t.part, t.off
         FROM {REQUEST_UNNEST}
         JOIN UNNEST($1::uuid[], $13::text[], $14::bool[], $15::jsonb[], $16::text[], $17::text[])
              AS o(id, status, finished, output, error, error_class) USING (id)
         ON CONFLICT (task_id) DO UPDATE SET status = EXCLUDED.status, output = EXCLUDED.output,
             error = EXCLUDED.error, error_class = EXCLUDED.error_class, finished_at = EXCLUDED.finished_at,
             updated_at = now()
           WHERE tasks.status NOT IN {}
         RETURNING {}",
        TaskStatus::TERMINAL_SQL,
        tasks::COLUMNS
    );
    let rows = bind_request(sqlx::query(AssertSqlSafe(sql)), RequestColumns::of(jobs))
        .bind(status)
        .bind(finished)
        .bind(output)
        .bind(error)
        .bind(class)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter().map(tasks::row_to_task).collect()
}

type Query<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

fn bind_request(q: Query<'_>, c: RequestColumns) -> Query<'_> {
    q.bind(c.id)
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
}
