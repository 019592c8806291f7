//! Keeps the access-token deny list in Redis whole.
//!
//! A logged-out (or otherwise revoked) access token is refused by the Redis key that
//! `auth::deny_jti` writes; Postgres keeps the same fact as the revoked session row. Redis can
//! lose that key before the token expires: a restart without persistence (or with a snapshot
//! older than the revocation), a failover, or eviction under `maxmemory` (the spec's
//! `allkeys-lru` evicts any key, deny-list keys included). A lost key would let a revoked token
//! through until it expires.
//!
//! So the ingress asks Redis every `auth.deny_list_check_secs` for its run id and its count of
//! evicted keys (`INFO`) and whether the sentinel key it writes after each rewrite is still
//! there, and writes every revoked, unexpired access token from Postgres again when the run id
//! is new (a restart), the count moved (evictions, or a reset of Redis's stats), the sentinel is
//! gone (`FLUSHALL`, `FLUSHDB` or keys deleted by hand), or at its own start.
//!
//! Invariants: the mark is taken before the list is read, so an eviction during a rewrite is
//! seen at the next check; the sentinel is written only after the whole list, so a rewrite cut
//! short is done again; a failed check keeps the previous mark, so it is tried again; the
//! rewrite only adds keys (idempotent; several ingress replicas may do it at once). While the
//! sentinel is missing (a restart, a flush, or the sentinel itself evicted: until the next
//! rewrite) each request's token is looked up in Postgres instead, so no revoked token passes.
//! Evictions of deny-list keys that leave the sentinel are seen at the next check only: until
//! then (at most one interval) such a revoked token may pass; a flush in the milliseconds of a
//! rewrite itself goes unseen until the next loss is.

use crate::app::Deps;
use crate::cache::{Cache, CacheError};
use crate::db::{users, DbError};
use crate::events::{DenyListResynced, DenyListSyncFailed};
use fred::interfaces::{ClientLike, KeysInterface};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a check failed; the next check tries again.
#[derive(Debug, thiserror::Error)]
pub enum DenySyncError {
    #[error("redis: {0}")]
    Redis(#[from] CacheError),
    #[error("redis INFO lacks run_id or evicted_keys")]
    Info,
    #[error("postgres: {0}")]
    Db(#[from] DbError),
}

/// What tells whether Redis lost keys since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub run_id: String,
    pub evicted_keys: u64,
    /// Whether the key written after the last complete rewrite is there.
    pub sentinel: bool,
}

/// The run id and evicted-key count in the text of `INFO` (sections server and stats).
pub fn parse_info(info: &str) -> Option<(String, u64)> {
    let field = |name: &str| {
        info.lines().find_map(|l| l.trim_end().strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::to_owned))
    };
    Some((field("run_id")?, field("evicted_keys")?.parse().ok()?))
}

/// The key written after each complete rewrite of the deny list: while it is there, a token
/// missing from the list is not revoked; while it is not, admission asks Postgres.
pub fn sentinel_key(cache: &Cache) -> String {
    format!("{}auth:deny-list-written", cache.prefix())
}

/// Why the deny list must be written again, if it must: `start` (no earlier mark), `restart`
/// (a new run id), `eviction` (the count moved; a count gone down is a stats reset, after
/// which evictions cannot be ruled out) or `flush` (the sentinel is gone).
pub fn resync_reason(last: Option<&Mark>, now: &Mark) -> Option<&'static str> {
    match last {
        None => Some("start"),
        Some(l) if l.run_id != now.run_id => Some("restart"),
        Some(l) if l.evicted_keys != now.evicted_keys => Some("eviction"),
        Some(_) if !now.sentinel => Some("flush"),
        Some(_) => None,
    }
}

/// Redis's current mark.
pub async fn mark(cache: &Cache) -> Result<Mark, DenySyncError> {
    let client = cache.pool().next();
    let info: String = client.info(None).await.map_err(CacheError::from)?;
    let (run_id, evicted_keys) = parse_info(&info).ok_or(DenySyncError::Info)?;
    let sentinel: i64 = client.exists(sentinel_key(cache)).await.map_err(CacheError::from)?;
    Ok(Mark { run_id, evicted_keys, sentinel: sentinel == 1 })
}

/// Writes every revoked, unexpired access token of Postgres to the deny list; returns how many.
pub async fn resync(pool: &sqlx::PgPool, cache: &Cache) -> Result<usize, DenySyncError> {
    let revoked = users::revoked_access_live(pool).await?;
    crate::auth::deny_all(cache, &revoked).await?;
    let _: () = cache.pool().set(sentinel_key(cache), "1", None, None, false).await.map_err(CacheError::from)?;
    Ok(revoked.len())
}

/// One check: the new mark, after a rewrite when one was due.
pub async fn check(deps: &Deps, last: Option<&Mark>) -> Result<Mark, DenySyncError> {
    let now = mark(&deps.cache).await?;
    if let Some(reason) = resync_reason(last, &now) {
        let tokens = resync(&deps.pool, &deps.cache).await?;
        DenyListResynced { reason, tokens }.emit();
    }
    Ok(now)
}

/// Checks at start, then every `every`, until `shutdown`.
pub async fn keep(deps: Arc<Deps>, every: Duration, shutdown: CancellationToken) {
    let mut last: Option<Mark> = None;
    loop {
        match check(&deps, last.as_ref()).await {
            Ok(now) => last = Some(now),
            Err(e) => DenyListSyncFailed { error: &e }.emit(),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(run_id: &str, evicted_keys: u64) -> Mark {
        Mark { run_id: run_id.into(), evicted_keys, sentinel: true }
    }

    #[test]
    fn the_mark_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f2c9a\r\ntcp_port:6379\r\n\r\n# Stats\r\n\
                    expired_keys:12\r\nevicted_keys:3\r\nevicted_clients:0\r\n";
        assert_eq!(parse_info(info), Some(("4f2c9a".to_string(), 3)));
        assert_eq!(parse_info("run_id:x\nexpired_keys:1\n"), None, "no evicted_keys");
        assert_eq!(parse_info("evicted_keys:1\n"), None, "no run_id");
        assert_eq!(parse_info("run_id:x\nevicted_keys:many\n"), None, "not a number");
    }

    #[test]
    fn a_rewrite_is_due_at_start_after_a_restart_after_evictions_and_after_a_flush() {
        assert_eq!(resync_reason(None, &m("a", 0)), Some("start"));
        assert_eq!(resync_reason(Some(&m("a", 0)), &m("a", 0)), None);
        assert_eq!(resync_reason(Some(&m("a", 0)), &m("b", 0)), Some("restart"));
        assert_eq!(resync_reason(Some(&m("a", 5)), &m("b", 9)), Some("restart"));
        assert_eq!(resync_reason(Some(&m("a", 5)), &m("a", 6)), Some("eviction"));
        assert_eq!(resync_reason(Some(&m("a", 5)), &m("a", 0)), Some("eviction"), "stats reset");
        let flushed = Mark { sentinel: false, ..m("a", 5) };
        assert_eq!(resync_reason(Some(&m("a", 5)), &flushed), Some("flush"));
        assert_eq!(resync_reason(None, &flushed), Some("start"));
    }
}
