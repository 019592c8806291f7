//! Fixed-window rate limits in Redis, atomic across ingress instances (one Lua script: INCR,
//! set the window's expiry on the first hit, return the count and the seconds left).

use crate::cache::{Cache, CacheError};
use fred::prelude::*;

const SCRIPT: &str = r#"
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
local ttl = redis.call('TTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"#;

/// The outcome of one counted request.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

/// Counts one request against `bucket` (e.g. `auth:ip:1.2.3.4`).
pub async fn hit(cache: &Cache, bucket: &str, limit: u64, window_secs: u64) -> Result<Decision, CacheError> {
    hit_n(cache, bucket, 1, limit, window_secs).await
}

/// Counts `n` units (records, bytes) against `bucket`.
pub async fn hit_n(cache: &Cache, bucket: &str, n: u64, limit: u64, window_secs: u64) -> Result<Decision, CacheError> {
    let key = format!("{}rl:{bucket}", cache.prefix());
    let r: Vec<i64> = cache.pool().eval(SCRIPT, vec![key], vec![window_secs as i64, n as i64]).await?;
    let n = r.first().copied().unwrap_or(0).max(0) as u64;
    let ttl = r.get(1).copied().unwrap_or(window_secs as i64).max(1) as u64;
    Ok(Decision { allowed: n <= limit, limit, remaining: limit.saturating_sub(n), reset_secs: ttl })
}
