//! The process's memory policy, applied first thing in `main` (the service's and the load
//! generator's).
//!
//! mimalloc (the global allocator; with its `override` feature also the C libraries' `malloc`)
//! asks the kernel for transparent huge pages on its arenas (`madvise(MADV_HUGEPAGE)`). Under the
//! kernel's THP mode `madvise` (Debian's default) every touched 2 MiB of an arena then stays
//! resident as a whole. Measured (load-tests/RESULTS.md): 1,024 sleep tasks in one processor
//! 107–111 MiB of peak RSS with huge pages and 70–72 without; the ingress at 1,000 connections
//! 122–125 and 90–92 MiB, against the spec's limits of 256 and 128 MiB; the CPU per record of
//! 100-record batches was ~10% lower with huge pages in one A/B comparison and no different in
//! another. Within those limits the memory margin counts more: huge pages are off for the
//! process unless `MIMALLOC_ALLOW_THP=1` asks for them.
//!
//! Invariant: applied before the process has touched much memory (it concerns pages faulted
//! after it). Child processes (`command` agents) inherit it.

/// The environment variable that keeps transparent huge pages on (mimalloc's own name for it).
pub const ALLOW_THP: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process unless [`ALLOW_THP`] is `1`. Returns
/// whether they are off afterwards (false also where the kernel has no such switch).
pub fn apply() -> bool {
    if std::env::var(ALLOW_THP).is_ok_and(|v| v.trim() == "1") {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with these arguments only sets a flag of the calling process.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn huge_pages_are_off_after_apply_unless_asked_for() {
        let asked = std::env::var(super::ALLOW_THP).is_ok_and(|v| v.trim() == "1");
        let off = super::apply();
        // SAFETY: reads a flag of the calling process.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(off, !asked);
        if !asked {
            assert_eq!(flag, 1, "the kernel reports THP disabled for this process");
        }
    }
}
