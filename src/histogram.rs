//! The bucket bounds every latency histogram in `/metrics` shares, and the bucket of a duration.
//! A leaf: the request histograms (`metrics`) and the object store's (`storage::s3::api`) both
//! count into it without depending on each other.

use std::time::Duration;

/// Upper bounds in seconds.
pub const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets per histogram: one per bound, and +Inf.
pub const BUCKETS: usize = BOUNDS.len() + 1;

/// The bucket (index into `BOUNDS`, or its length for +Inf) a duration falls in.
pub fn bucket(took: Duration) -> usize {
    let secs = took.as_secs_f64();
    BOUNDS
        .iter()
        .position(|le| secs <= *le)
        .unwrap_or(BOUNDS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_falls_in_the_first_bucket_that_holds_it() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_micros(500)), 0);
        assert_eq!(bucket(Duration::from_micros(501)), 1);
        assert_eq!(bucket(Duration::from_secs(10)), BOUNDS.len() - 1);
        assert_eq!(bucket(Duration::from_secs(11)), BOUNDS.len());
    }
}
