//! Fixed-window rate limits in Redis, atomic across ingress instances (one Lua script: INCR,
//! set the window's expiry on the first hit, return the count and the seconds left).

use crate::cache::{Cache, CacheError, Script};

static SCRIPT: Script = Script::new(
    r#"
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
local ttl = redis.call('TTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"#,
);

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
    let r: Vec<i64> = SCRIPT.run(cache.pool(), vec![key], vec![window_secs as i64, n as i64]).await?;
    let n = r.first().copied().unwrap_or(0).max(0) as u64;
    let ttl = r.get(1).copied().unwrap_or(window_secs as i64).max(1) as u64;
    Ok(Decision { allowed: n <= limit, limit, remaining: limit.saturating_sub(n), reset_secs: ttl })
}

/// Refuses at once when a guard field exists (ARGV[2] = '1': field ARGV[3] of the hash KEYS[1],
/// e.g. a revoked token, whose field ARGV[4] vouches the guards are all there), else counts one
/// hit in each bucket (the remaining KEYS) like [`SCRIPT`]. Returns {-1} (guarded) or {whole,
/// n1, ttl1, n2, ttl2, ...}, `whole` 0 when the voucher is missing (the guard's absence proves
/// nothing then).
static GUARDED_HITS: Script = Script::new(
    r#"
local first = 1
local whole = 1
if ARGV[2] == '1' then
  local v = redis.call('HMGET', KEYS[1], ARGV[3], ARGV[4])
  if v[1] then return {-1} end
  if v[2] then whole = 1 else whole = 0 end
  first = 2
end
local out = {whole}
for i = first, #KEYS do
  local n = redis.call('INCRBY', KEYS[i], 1)
  local ttl = redis.call('TTL', KEYS[i])
  if n == 1 or ttl < 0 then
    redis.call('EXPIRE', KEYS[i], ARGV[1])
    ttl = tonumber(ARGV[1])
  end
  out[#out + 1] = n
  out[#out + 1] = ttl
end
return out
"#,
);

/// What refuses a request in [`guarded_hits`]: the field `field` of the hash `hash`, trusted
/// absent only while the hash's field `voucher` is there.
#[derive(Debug, Clone)]
pub struct Guard {
    pub hash: String,
    pub field: String,
    pub voucher: &'static str,
}

/// What a request's admission found.
#[derive(Debug, Clone)]
pub enum Admission {
    /// The guard field exists (e.g. the token is deny-listed): refuse; nothing was counted.
    Guarded,
    /// One hit counted in each bucket, its decisions in order; `vouched` is false when a guard
    /// was asked for and its voucher field is missing (the guard's absence proves nothing then).
    Counted { decisions: Vec<Decision>, vouched: bool },
}

/// One round trip for a request's admission: [`Admission::Guarded`] when `guard`'s field
/// exists, else one hit counted in each `(bucket, limit)`, and whether `guard`'s voucher exists.
pub async fn guarded_hits(
    cache: &Cache,
    guard: Option<Guard>,
    buckets: &[(String, u64)],
    window_secs: u64,
) -> Result<Admission, CacheError> {
    if guard.is_none() && buckets.is_empty() {
        return Ok(Admission::Counted { decisions: Vec::new(), vouched: true });
    }
    let mut keys = Vec::with_capacity(buckets.len() + 1);
    let mut args = vec![window_secs.to_string()];
    match guard {
        Some(g) => {
            keys.push(g.hash);
            args.extend(["1".to_string(), g.field, g.voucher.to_string()]);
        }
        None => args.push("0".to_string()),
    }
    keys.extend(buckets.iter().map(|(b, _)| format!("{}rl:{b}", cache.prefix())));
    let r: Vec<i64> = GUARDED_HITS.run(cache.pool(), keys, args).await?;
    if r.first() == Some(&-1) {
        return Ok(Admission::Guarded);
    }
    let pairs = r.get(1..).unwrap_or_default();
    let decisions = buckets
        .iter()
        .enumerate()
        .map(|(i, (_, limit))| {
            let n = pairs.get(2 * i).copied().unwrap_or(0).max(0) as u64;
            let ttl = pairs.get(2 * i + 1).copied().unwrap_or(window_secs as i64).max(1) as u64;
            Decision { allowed: n <= *limit, limit: *limit, remaining: limit.saturating_sub(n), reset_secs: ttl }
        })
        .collect();
    Ok(Admission::Counted { decisions, vouched: r.first() == Some(&1) })
}

/// All-or-nothing over several buckets of one fixed window (milliseconds): each bucket is
/// charged its amount only if every bucket stays within its limit; with ARGV[2] = 0 nothing is
/// charged (a look). Returns {1} or {0, index (1-based), used, ms left in the window}.
static TAKE: Script = Script::new(
    r#"
local window = tonumber(ARGV[1])
local n = #KEYS
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used + tonumber(ARGV[2 + i]) > tonumber(ARGV[2 + n + i]) then
    local left = redis.call('PTTL', KEYS[i])
    if left < 0 then left = window end
    return {0, i, used, left}
  end
end
if ARGV[2] == '1' then
  for i = 1, n do
    redis.call('INCRBY', KEYS[i], ARGV[2 + i])
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], window) end
  end
end
return {1}
"#,
);

/// One bucket of a [`take`]: what to charge against which limit.
#[derive(Debug, Clone)]
pub struct Charge {
    pub bucket: String,
    pub amount: u64,
    pub limit: u64,
}

/// Why a [`take`] charged nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The index of the first bucket that had no room.
    pub index: usize,
    pub limit: u64,
    /// Already used in the current window.
    pub used: u64,
    /// What was asked of that bucket.
    pub amount: u64,
    /// Milliseconds until the current window ends.
    pub wait_ms: u64,
}

impl Refused {
    /// The amount is more than a whole window allows: waiting never helps.
    pub fn never_fits(&self) -> bool {
        self.amount > self.limit
    }

    /// The same refusal as a rate-limit decision (for 429 headers).
    pub fn decision(&self) -> Decision {
        Decision {
            allowed: false,
            limit: self.limit,
            remaining: self.limit.saturating_sub(self.used),
            reset_secs: self.wait_ms.div_ceil(1000).max(1),
        }
    }
}

/// Charges every bucket of `charges` in the current `window_ms` window, or none of them when one
/// would go over its limit (so a refused request costs nothing). With `commit = false` it only
/// looks: whether the amounts would fit now.
pub async fn take(
    cache: &Cache,
    charges: &[Charge],
    window_ms: u64,
    commit: bool,
) -> Result<Result<(), Refused>, CacheError> {
    if charges.is_empty() {
        return Ok(Ok(()));
    }
    let keys: Vec<String> = charges.iter().map(|c| format!("{}rl:{}", cache.prefix(), c.bucket)).collect();
    let mut args: Vec<String> = vec![window_ms.to_string(), if commit { "1" } else { "0" }.to_string()];
    args.extend(charges.iter().map(|c| c.amount.to_string()));
    args.extend(charges.iter().map(|c| c.limit.to_string()));
    let r: Vec<i64> = TAKE.run(cache.pool(), keys, args).await?;
    if r.first() == Some(&1) {
        return Ok(Ok(()));
    }
    let index = (r.get(1).copied().unwrap_or(1).max(1) as usize - 1).min(charges.len() - 1);
    let c = &charges[index];
    Ok(Err(Refused {
        index,
        limit: c.limit,
        used: r.get(2).copied().unwrap_or(0).max(0) as u64,
        amount: c.amount,
        wait_ms: r.get(3).copied().unwrap_or(window_ms as i64).max(1) as u64,
    }))
}
