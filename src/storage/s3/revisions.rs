//! Manifest revisions recently read, per worker thread, for GETs by tag: a revision's bytes never
//! change (they are checked against their digest), so after the tag object names a digest the
//! bytes may come from here instead of a second round trip to the store. Only a GET by tag uses
//! it: the tag object, read every time, is what says the manifest still exists (a manifest delete
//! removes the tags pointing at it before the revision), so another node's delete is seen at
//! once. A GET by digest always asks the store. Bounded (`MAX_ENTRIES`, `MAX_BYTES` per worker);
//! counted in `wharf_s3_revision_cache_total{outcome}`.

use std::cell::RefCell;

use super::kept::Bounded;
use crate::hits::Counts;

/// Revisions kept per worker thread.
const MAX_ENTRIES: usize = 1024;
/// Bytes of revisions kept per worker thread.
const MAX_BYTES: usize = 8 << 20;

/// (backend instance, repository, digest).
type Key = (u64, String, String);

thread_local! {
    static CACHE: RefCell<Bounded<Key, (String, Vec<u8>)>> =
        RefCell::new(Bounded::new(MAX_ENTRIES, MAX_BYTES));
}

static COUNTS: Counts = Counts::new();

/// (hits, misses) of all workers.
pub fn counts() -> (u64, u64) {
    COUNTS.get()
}

/// The media type and bytes of a revision read before on this thread.
pub(super) fn get(backend: u64, repo: &str, digest: &str) -> Option<(String, Vec<u8>)> {
    let key = (backend, repo.to_owned(), digest.to_owned());
    COUNTS.count(CACHE.with(|c| c.borrow().get(&key)))
}

/// Keep a revision just read from the store (and verified against its digest).
pub(super) fn put(backend: u64, repo: &str, digest: &str, media_type: &str, bytes: &[u8]) {
    if media_type.len() + bytes.len() > MAX_BYTES / 16 {
        return;
    }
    let key = (backend, repo.to_owned(), digest.to_owned());
    CACHE.with(|c| {
        c.borrow_mut()
            .put(key, (media_type.to_owned(), bytes.to_vec()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_entries_and_bytes_oldest_out_first() {
        for i in 0..MAX_ENTRIES + 10 {
            put(7, "r", &i.to_string(), "m", b"x");
        }
        assert!(get(7, "r", "0").is_none(), "the oldest went first");
        assert!(get(7, "r", &(MAX_ENTRIES + 9).to_string()).is_some());
        CACHE.with(|c| assert_eq!(c.borrow().len_and_bytes().0, MAX_ENTRIES));
        let big = vec![0u8; MAX_BYTES / 16];
        for i in 0..40 {
            put(8, "r", &i.to_string(), "", &big);
        }
        CACHE.with(|c| assert!(c.borrow().len_and_bytes().1 <= MAX_BYTES));
        assert!(get(8, "r", "39").is_some());
        put(9, "r", "huge", "", &vec![0u8; MAX_BYTES]);
        assert!(get(9, "r", "huge").is_none(), "too large to keep");
        assert!(get(1, "r", "39").is_none(), "another backend's key");
    }
}
