//! PostgreSQL: the durable record. Pool construction, migrations, and the repositories.
//!
//! Invariants: every connection's `search_path` is the configured schema (tests get a fresh
//! schema each), so queries never name a schema; migrations are embedded in the binary and
//! applied under sqlx's migration lock.

pub mod agents;
pub mod batch;
pub mod idempotency;
pub mod retention;
pub mod tasks;
pub mod users;

use crate::settings::DatabaseSettings;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Postgres is unreachable or overloaded: retry later.
    #[error("postgres unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// A constraint refused the write (unique, foreign key, check).
    #[error("constraint {constraint} violated: {message}")]
    Constraint { constraint: String, message: String },
    #[error("postgres error: {0}")]
    Other(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // A protocol error is the connection's, not the query's: e.g. a proxy that accepts
            // and at once closes connections while the server is down (sqlx reads the closed
            // TLS negotiation as an invalid answer).
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => DbError::Unavailable(e),
            sqlx::Error::Database(d) => {
                // Class 08 (connection), 53 (resources), 57 (operator intervention): transient.
                let code = d.code().map(|c| c.to_string()).unwrap_or_default();
                if code.starts_with("08") || code.starts_with("53") || code.starts_with("57") {
                    return DbError::Unavailable(e);
                }
                match d.constraint() {
                    Some(c) => DbError::Constraint { constraint: c.to_string(), message: d.message().to_string() },
                    None => DbError::Other(e),
                }
            }
            _ => DbError::Other(e),
        }
    }
}

impl DbError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

/// Connects a pool whose connections use `settings.schema`, creating the schema if needed.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let base = PgConnectOptions::from_str(settings.url.expose()).map_err(DbError::Other)?;
    if settings.schema != "public" {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
            .connect_with(base.clone())
            .await?;
        admin.execute(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", settings.schema))).await?;
        admin.close().await;
    }
    let opts = base.options([("search_path", settings.schema.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_with(opts)
        .await?)
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether Postgres answers a trivial query.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::DbError;

    #[test]
    fn connection_trouble_is_unavailable_and_query_trouble_is_not() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let unavailable = [
            sqlx::Error::Io(io),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into()),
        ];
        for e in unavailable {
            assert!(DbError::from(e).is_unavailable());
        }
        assert!(!DbError::from(sqlx::Error::RowNotFound).is_unavailable());
    }
}
