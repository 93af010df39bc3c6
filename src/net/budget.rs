//! The process-wide budget for response buffers that wait on slow clients (`limits.response_buffer_budget`):
//! large file blocks are used while it lasts; past it, files go out in small records or by
//! `sendfile`, so a thousand clients that stop reading pin kilobytes each, not megabytes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT);
static IN_USE: AtomicUsize = AtomicUsize::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// `limits.response_buffer_budget`'s default: 16 MiB.
pub const DEFAULT: usize = 16 << 20;

/// Set the budget (at startup and on reload).
pub fn set_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// Bytes reserved now (`wharf_response_buffer_bytes`).
pub fn in_use() -> usize {
    IN_USE.load(Ordering::Relaxed)
}

/// Sends that found the budget spent and used small buffers (`wharf_response_buffer_fallbacks_total`).
pub fn fallbacks() -> u64 {
    FALLBACKS.load(Ordering::Relaxed)
}

/// Bytes of the budget held by one send; returned when dropped.
#[derive(Debug)]
pub struct Reservation(usize);

impl Drop for Reservation {
    fn drop(&mut self) {
        IN_USE.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Reserve `bytes` for one send's buffers, or `None` (counted) when the budget cannot hold them.
pub fn reserve(bytes: usize) -> Option<Reservation> {
    let before = IN_USE.fetch_add(bytes, Ordering::Relaxed);
    if before + bytes <= LIMIT.load(Ordering::Relaxed) {
        return Some(Reservation(bytes));
    }
    IN_USE.fetch_sub(bytes, Ordering::Relaxed);
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_come_back() {
        // The only test touching the statics (others run in parallel in this binary).
        set_limit(3 << 20);
        let a = reserve(1 << 20).unwrap();
        let b = reserve(2 << 20).unwrap();
        let before = fallbacks();
        assert!(reserve(1).is_none());
        assert_eq!(fallbacks(), before + 1);
        drop(a);
        let c = reserve(1 << 20).unwrap();
        assert_eq!(in_use(), 3 << 20);
        drop((b, c));
        assert_eq!(in_use(), 0);
        set_limit(DEFAULT);
    }
}
