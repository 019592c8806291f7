//! The `agents` table: CRUD, a paged list and full-text search.

use super::DbError;
use crate::domain::{Agent, AgentStatus, ExecutorKind};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

const COLUMNS: &str = "name, executor, config, description, status, created_at, updated_at";

/// The fields a client may set on an agent.
#[derive(Debug, Clone)]
pub struct AgentWrite {
    pub executor: ExecutorKind,
    pub config: serde_json::Value,
    pub description: String,
    pub status: AgentStatus,
}

/// An agent for a hot path: the cache (process memo, then Redis) first, then this table,
/// caching what it finds. A Redis outage only costs the Postgres read. Caching what it read is
/// boxed: that Redis command's future (~5.8 KB) would otherwise make every caller's future that
/// much larger for the whole of its life (a submission waiting for its acknowledgement, for one).
pub async fn load(pool: &PgPool, cache: &crate::cache::Cache, name: &str) -> Result<Option<Agent>, DbError> {
    if let Ok(Some(a)) = cache.get_agent(name).await {
        return Ok(Some(a));
    }
    let agent = get(pool, name).await?;
    if let Some(a) = &agent {
        let _ = Box::pin(cache.put_agent(a)).await;
    }
    Ok(agent)
}

fn row_to_agent(r: &PgRow) -> Result<Agent, DbError> {
    let executor: String = r.try_get("executor")?;
    let status: String = r.try_get("status")?;
    Ok(Agent {
        name: r.try_get("name")?,
        executor: ExecutorKind::parse(&executor).unwrap_or(ExecutorKind::Builtin),
        config: r.try_get("config")?,
        description: r.try_get("description")?,
        status: AgentStatus::parse(&status).unwrap_or(AgentStatus::Disabled),
        created_at: r.try_get::<DateTime<Utc>, _>("created_at")?,
        updated_at: r.try_get::<DateTime<Utc>, _>("updated_at")?,
    })
}

pub async fn get(pool: &PgPool, name: &str) -> Result<Option<Agent>, DbError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM agents WHERE name = $1")))
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(row_to_agent).transpose()
}

/// Inserts a new agent; `Ok(None)` when the name is taken.
pub async fn create(pool: &PgPool, name: &str, w: &AgentWrite) -> Result<Option<Agent>, DbError> {
    write(
        pool,
        name,
        w,
        "INSERT INTO agents (name, executor, config, description, status) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO NOTHING",
    )
    .await
}

/// Replaces an existing agent's fields; `Ok(None)` when it does not exist.
pub async fn update(pool: &PgPool, name: &str, w: &AgentWrite) -> Result<Option<Agent>, DbError> {
    write(
        pool,
        name,
        w,
        "UPDATE agents SET executor = $2, config = $3, description = $4, status = $5, updated_at = now()
         WHERE name = $1",
    )
    .await
}

/// Runs `statement` with the agent's name and fields as $1..$5; the row it returned, if any.
async fn write(pool: &PgPool, name: &str, w: &AgentWrite, statement: &str) -> Result<Option<Agent>, DbError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{statement} RETURNING {COLUMNS}")))
        .bind(name)
        .bind(w.executor.as_str())
        .bind(&w.config)
        .bind(&w.description)
        .bind(w.status.as_str())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(row_to_agent).transpose()
}

pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// Tasks refer to the agent; disable it instead.
    InUse,
}

pub async fn delete(pool: &PgPool, name: &str) -> Result<DeleteOutcome, DbError> {
    match sqlx::query("DELETE FROM agents WHERE name = $1").bind(name).execute(pool).await {
        Ok(r) if r.rows_affected() == 0 => Ok(DeleteOutcome::NotFound),
        Ok(_) => Ok(DeleteOutcome::Deleted),
        Err(e) => match DbError::from(e) {
            DbError::Constraint { .. } => Ok(DeleteOutcome::InUse),
            other => Err(other),
        },
    }
}

/// A page of agents ordered by name, optionally filtered by a full-text query; with the total.
pub async fn list(pool: &PgPool, query: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<Agent>, i64), DbError> {
    let filter = "($1::text IS NULL OR search @@ plainto_tsquery('simple', $1))";
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM agents WHERE {filter} ORDER BY name LIMIT $2 OFFSET $3"
    )))
    .bind(query)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM agents WHERE {filter}")))
        .bind(query)
        .fetch_one(pool)
        .await?;
    let agents = rows.iter().map(row_to_agent).collect::<Result<_, _>>()?;
    Ok((agents, total))
}
