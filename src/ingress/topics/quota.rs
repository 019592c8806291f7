//! Per-user produce quotas of the gateway (records/s and bytes/s), shared by every ingress
//! instance through Redis in one-second windows.
//!
//! Invariant: charges are all or nothing: a refused request or stream line costs nothing.

use crate::auth::ratelimit::{self, Charge, Refused};
use crate::ingress::{ApiError, Ctx};

/// A caller's produce quotas (records/s and bytes/s; 0 = off), shared by all ingress instances
/// through Redis in one-second windows. Charges are all or nothing: a refused request or line
/// costs nothing.
pub(super) struct Quota {
    cache: crate::cache::Cache,
    user: String,
    records_per_sec: u64,
    bytes_per_sec: u64,
}

impl Quota {
    const WINDOW_MS: u64 = 1000;

    /// None for an anonymous caller or when both quotas are off.
    pub(super) fn of(ctx: &Ctx) -> Option<Quota> {
        let g = &ctx.deps.settings.gateway;
        let user = ctx.principal.as_ref()?.id.clone();
        (g.quota_records_per_sec > 0 || g.quota_bytes_per_sec > 0).then(|| Quota {
            cache: ctx.deps.cache.clone(),
            user,
            records_per_sec: g.quota_records_per_sec,
            bytes_per_sec: g.quota_bytes_per_sec,
        })
    }

    /// Charges `records` and `bytes` to the current window (`commit`), or only looks whether
    /// they would fit; a refusal names its unit (`records` or `bytes`).
    pub(super) async fn take(
        &self,
        records: u64,
        bytes: u64,
        commit: bool,
    ) -> Result<Result<(), (&'static str, Refused)>, crate::cache::CacheError> {
        let (units, charges): (Vec<&'static str>, Vec<Charge>) =
            [("records", records, self.records_per_sec), ("bytes", bytes, self.bytes_per_sec)]
                .into_iter()
                .filter(|(_, _, limit)| *limit > 0)
                .map(|(unit, amount, limit)| {
                    (unit, Charge { bucket: format!("quota:{unit}:{}", self.user), amount, limit })
                })
                .unzip();
        Ok(ratelimit::take(&self.cache, &charges, Self::WINDOW_MS, commit).await?.map_err(|r| (units[r.index], r)))
    }
}

/// A non-streaming request is charged whole before anything is produced; over a quota it is
/// refused with 429 and Retry-After.
pub(super) async fn check_quota(ctx: &Ctx, records: usize, bytes: usize) -> Result<(), ApiError> {
    let Some(quota) = Quota::of(ctx) else { return Ok(()) };
    match quota.take(records as u64, bytes as u64, true).await? {
        Ok(()) => Ok(()),
        Err((unit, r)) => Err(ApiError::QuotaExceeded { unit, decision: r.decision() }),
    }
}
