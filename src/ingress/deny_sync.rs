//! Keeps the access-token deny list in Redis whole.
//!
//! A logged-out (or otherwise revoked) access token is refused by its field in the deny list's
//! hash (`auth::deny_jti`); Postgres keeps the same fact as the revoked session row. The hash
//! carries a mark, its field `auth::DENY_LIST_WHOLE`, written after each complete rewrite from
//! Postgres: while the mark is there, a token missing from the list is not revoked; while it is
//! not, admission looks the token up in Postgres. The list and its mark are one key, so Redis
//! loses them together: an eviction under `maxmemory` (the spec's `allkeys-lru`), a restart
//! without persistence, `FLUSHALL`, `FLUSHDB` or a delete by hand take both, and no revoked token
//! passes meanwhile.
//!
//! The ingress asks Redis every `auth.deny_list_check_secs` for its run id and its count of
//! evicted keys (`INFO`) and whether the mark is there, and writes every revoked, unexpired
//! access token from Postgres again (then the mark) when the run id is new (a restart), the
//! count moved (evictions, or a reset of Redis's stats), the mark is gone, or at its own start.
//! Once a minute it also drops the fields of expired tokens (Redis 7.0 has no per-field expiry).
//!
//! Invariants: the mark is written only after the whole list, so a rewrite cut short is done
//! again; a failed check keeps the previous state, so it is tried again; the rewrite only adds
//! fields (idempotent; several ingress replicas may do it at once). Left: a restart from a
//! snapshot (the spec's `save` rules) older than a revocation brings the mark back without that
//! token's field: until the next check (at most one interval) the token may pass. A flush in the
//! milliseconds between a rewrite's read of Postgres and its writes loses revocations made in
//! between, until the next loss is seen.

use crate::app::Deps;
use crate::auth::{deny_list_key, prune_deny_list, DENY_LIST_WHOLE};
use crate::cache::{Cache, CacheError};
use crate::db::{users, DbError};
use crate::events::{DenyListPruned, DenyListResynced, DenyListSyncFailed};
use fred::interfaces::{ClientLike, HashesInterface};
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
    /// Whether the deny list's mark (written after a complete rewrite) is there.
    pub whole: bool,
}

/// The run id and evicted-key count in the text of `INFO` (sections server and stats).
pub fn parse_info(info: &str) -> Option<(String, u64)> {
    let field = |name: &str| {
        info.lines().find_map(|l| l.trim_end().strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::to_owned))
    };
    Some((field("run_id")?, field("evicted_keys")?.parse().ok()?))
}

/// Why the deny list must be written again, if it must: `start` (no earlier mark), `restart`
/// (a new run id), `eviction` (the count moved; a count gone down is a stats reset, after
/// which evictions cannot be ruled out) or `flush` (the mark is gone).
pub fn resync_reason(last: Option<&Mark>, now: &Mark) -> Option<&'static str> {
    match last {
        None => Some("start"),
        Some(l) if l.run_id != now.run_id => Some("restart"),
        Some(l) if l.evicted_keys != now.evicted_keys => Some("eviction"),
        Some(_) if !now.whole => Some("flush"),
        Some(_) => None,
    }
}

/// Redis's current mark.
pub async fn mark(cache: &Cache) -> Result<Mark, DenySyncError> {
    let client = cache.pool().next();
    let info: String = client.info(None).await.map_err(CacheError::from)?;
    let (run_id, evicted_keys) = parse_info(&info).ok_or(DenySyncError::Info)?;
    let whole: bool = client.hexists(deny_list_key(cache), DENY_LIST_WHOLE).await.map_err(CacheError::from)?;
    Ok(Mark { run_id, evicted_keys, whole })
}

/// Writes every revoked, unexpired access token of Postgres to the deny list; returns how many.
pub async fn resync(pool: &sqlx::PgPool, cache: &Cache) -> Result<usize, DenySyncError> {
    let revoked = users::revoked_access_live(pool).await?;
    crate::auth::deny_all(cache, &revoked).await?;
    let _: () = cache.pool().hset(deny_list_key(cache), (DENY_LIST_WHOLE, "1")).await.map_err(CacheError::from)?;
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

/// How often the fields of expired tokens are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Checks at start, then every `every`, until `shutdown`; prunes every [`PRUNE_EVERY`].
pub async fn keep(deps: Arc<Deps>, every: Duration, shutdown: CancellationToken) {
    let mut last: Option<Mark> = None;
    let mut pruned = tokio::time::Instant::now();
    loop {
        match check(&deps, last.as_ref()).await {
            Ok(now) => last = Some(now),
            Err(e) => DenyListSyncFailed { error: &e }.emit(),
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            match prune_deny_list(&deps.cache, chrono::Utc::now().timestamp()).await {
                Ok(removed) => {
                    pruned = tokio::time::Instant::now();
                    DenyListPruned { removed }.emit();
                }
                Err(e) => DenyListSyncFailed { error: &DenySyncError::Redis(e) }.emit(),
            }
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
        Mark { run_id: run_id.into(), evicted_keys, whole: true }
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
        let flushed = Mark { whole: false, ..m("a", 5) };
        assert_eq!(resync_reason(Some(&m("a", 5)), &flushed), Some("flush"));
        assert_eq!(resync_reason(None, &flushed), Some("start"));
    }
}
