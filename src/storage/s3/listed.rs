//! Repositories this worker has already seen listed in the catalog (`catalog/<repo>`), so that a
//! push writes the catalog entry once per repository and worker instead of once per blob link.
//! Catalog entries are never deleted (a repository stays listed once it existed), so a
//! remembered entry stays true. Bounded (`MAX_ENTRIES` per worker, forgotten all at once when
//! full: the next push of each repository writes its entry again); counted in
//! `wharf_s3_catalog_writes_total{outcome}`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

/// Repositories remembered per worker thread.
const MAX_ENTRIES: usize = 4096;

thread_local! {
    static LISTED: RefCell<HashSet<(u64, String)>> = RefCell::new(HashSet::new());
}

static SKIPPED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// (catalog writes skipped, catalog writes made) by all workers.
pub fn counts() -> (u64, u64) {
    (
        SKIPPED.load(Ordering::Relaxed),
        WRITTEN.load(Ordering::Relaxed),
    )
}

/// Whether backend `backend` still has to write `repo`'s catalog entry (if not, counted as
/// skipped).
pub(super) fn needs_write(backend: u64, repo: &str) -> bool {
    let known = LISTED.with(|l| l.borrow().contains(&(backend, repo.to_owned())));
    if known {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
    }
    !known
}

/// `repo`'s catalog entry was just written to the bucket (counted).
pub(super) fn remember(backend: u64, repo: &str) {
    WRITTEN.fetch_add(1, Ordering::Relaxed);
    LISTED.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() >= MAX_ENTRIES {
            l.clear();
        }
        l.insert((backend, repo.to_owned()));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_per_backend_and_bounded() {
        assert!(needs_write(1, "a/b"));
        remember(1, "a/b");
        assert!(!needs_write(1, "a/b"));
        assert!(needs_write(2, "a/b"), "another backend's bucket");
        for i in 0..MAX_ENTRIES {
            remember(3, &i.to_string());
        }
        LISTED.with(|l| assert!(l.borrow().len() <= MAX_ENTRIES));
    }
}
