//! Hits and misses of a per-worker cache, counted over all workers, and their `/metrics`
//! family. A leaf, like `histogram`: caches in `tls`, `policy`, `token` and `storage` count into
//! it and `metrics` renders them, without those layers depending on `metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Hits and misses of one cache, all workers.
pub struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Counts {
    pub const fn new() -> Counts {
        Counts {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Count one lookup: a hit or a miss.
    pub fn add(&self, hit: bool) {
        let c = if hit { &self.hits } else { &self.misses };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a lookup by what it found, which passes through.
    pub fn count<T>(&self, found: Option<T>) -> Option<T> {
        self.add(found.is_some());
        found
    }

    /// (hits, misses).
    pub fn get(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

impl Default for Counts {
    fn default() -> Self {
        Counts::new()
    }
}

/// A cache's counter family, `<name>{outcome="hit"|"miss"}`, in Prometheus text.
pub fn render(out: &mut String, name: &str, help: &str, (hits, misses): (u64, u64)) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{outcome=\"hit\"}} {hits}\n{name}{{outcome=\"miss\"}} {misses}"
    );
}
