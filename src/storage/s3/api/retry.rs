//! Answers that mean "again, a little later": a store that throttles (`503 SlowDown`, `429`) or
//! whose gateway stumbles once (`500`, `502`, `504` to a read) is asked again after a short,
//! growing wait before a client is told `503`. A throttled write was not applied; any write sent
//! again is marked `resent`, so a conditional one refused by its own first attempt is recognised
//! as done (as for an answer lost on the way).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The waits before the second, third and fourth attempt (each plus up to half again, so
/// workers throttled together do not come back together).
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(800),
];

static RETRIES: AtomicU64 = AtomicU64::new(0);

/// Requests sent again after such an answer (`wharf_objectstore_retries_total`).
pub fn retries() -> u64 {
    RETRIES.load(Ordering::Relaxed)
}

/// How long to wait before sending again a `method` request answered `status` after `tries`
/// retries, or `None`: the answer stands.
pub(super) fn again(method: &str, status: u16, tries: usize) -> Option<Duration> {
    let base = *BACKOFF.get(tries)?;
    let throttled = matches!(status, 429 | 503);
    let read = matches!(method, "GET" | "HEAD");
    if !(throttled || read && matches!(status, 500 | 502 | 504)) {
        return None;
    }
    RETRIES.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Some(base + base.mul_f64(f64::from(nanos % 1000) / 2000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_retried_for_all_a_server_error_only_for_reads_and_three_times_at_most() {
        for method in ["GET", "HEAD", "PUT", "POST", "DELETE"] {
            for status in [429, 503] {
                assert!(again(method, status, 0).is_some(), "{method} {status}");
            }
        }
        for status in [500, 502, 504] {
            assert!(again("GET", status, 0).is_some());
            assert!(again("HEAD", status, 2).is_some());
            assert!(
                again("PUT", status, 0).is_none(),
                "a write may have applied"
            );
        }
        for status in [200, 206, 404, 412, 403, 400] {
            assert!(again("GET", status, 0).is_none(), "{status}");
        }
        let waits: Vec<Duration> = (0..3).map(|t| again("GET", 503, t).unwrap()).collect();
        assert!(waits[0] >= BACKOFF[0] && waits[0] <= BACKOFF[0].mul_f64(1.5));
        assert!(waits[2] >= BACKOFF[2]);
        assert!(again("GET", 503, 3).is_none(), "a fourth retry");
    }
}
