//! Bounded per-worker caches of bytes that never change once checked against their digest:
//! manifest revisions (`revisions`) and small blobs (`blob`, `keep_blob`). A blob's bytes stand
//! for its digest forever; what a cache cannot say is whether the blob is still in a repository,
//! so a blob GET that finds its bytes here still asks the store for the repository's link (one
//! HEAD instead of a HEAD and the pointer, then the data). Bounded by entries and bytes per
//! worker, oldest out first; counted in `wharf_s3_blob_cache_total{outcome}`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The bytes an entry holds, for the byte bound.
pub(super) trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weight for (String, Vec<u8>) {
    fn weight(&self) -> usize {
        self.0.len() + self.1.len()
    }
}

/// A map bounded by entries and bytes that drops its oldest entries first. An entry larger
/// than a sixteenth of the bytes is not kept.
pub(super) struct Bounded<K, V> {
    map: HashMap<K, V>,
    /// Insertion order, oldest first: the eviction order.
    order: VecDeque<K>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<K: Hash + Eq + Clone, V: Clone + Weight> Bounded<K, V> {
    pub(super) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    pub(super) fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).cloned()
    }

    pub(super) fn put(&mut self, key: K, value: V) {
        let size = value.weight();
        if size > self.max_bytes / 16 || self.map.contains_key(&key) {
            return;
        }
        while self.map.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.map.remove(&old) {
                self.bytes -= v.weight();
            }
        }
        self.bytes += size;
        self.order.push_back(key.clone());
        self.map.insert(key, value);
    }

    #[cfg(test)]
    pub(super) fn len_and_bytes(&self) -> (usize, usize) {
        (self.map.len(), self.bytes)
    }
}

/// Blobs kept per worker thread.
const BLOB_ENTRIES: usize = 4096;
/// Bytes of blobs kept per worker thread.
const BLOB_BYTES: usize = 8 << 20;

/// (backend instance, digest).
type BlobKey = (u64, String);

thread_local! {
    static BLOBS: RefCell<Bounded<BlobKey, Vec<u8>>> =
        RefCell::new(Bounded::new(BLOB_ENTRIES, BLOB_BYTES));
}

static BLOB_COUNTS: crate::hits::Counts = crate::hits::Counts::new();

/// (hits, misses) of the blob cache, all workers.
pub fn blob_counts() -> (u64, u64) {
    BLOB_COUNTS.get()
}

/// The bytes of a blob read before on this thread.
pub(super) fn blob(backend: u64, digest: &str) -> Option<Vec<u8>> {
    let key = (backend, digest.to_owned());
    BLOB_COUNTS.count(BLOBS.with(|c| c.borrow().get(&key)))
}

/// Keep a blob just read from the store and checked against its digest.
pub(super) fn keep_blob(backend: u64, digest: &str, bytes: &[u8]) {
    if bytes.len() <= BLOB_BYTES / 16 {
        BLOBS.with(|c| {
            c.borrow_mut()
                .put((backend, digest.to_owned()), bytes.to_vec())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_entries_and_bytes_oldest_out_first() {
        let mut c: Bounded<u32, Vec<u8>> = Bounded::new(100, 1600);
        for i in 0..110 {
            c.put(i, vec![1]);
        }
        assert!(c.get(&0).is_none(), "the oldest went first");
        assert!(c.get(&109).is_some());
        assert_eq!(c.len_and_bytes(), (100, 100));
        for i in 200..240 {
            c.put(i, vec![0; 100]);
        }
        assert!(c.len_and_bytes().1 <= 1600);
        assert!(c.get(&239).is_some());
        c.put(999, vec![0; 101]);
        assert!(c.get(&999).is_none(), "too large to keep");
    }

    #[test]
    fn blobs_are_kept_per_backend() {
        keep_blob(1, "sha256:aa", b"x");
        assert_eq!(blob(1, "sha256:aa").as_deref(), Some(&b"x"[..]));
        assert!(blob(2, "sha256:aa").is_none(), "another backend's key");
    }
}
