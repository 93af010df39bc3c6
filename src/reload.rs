//! Values a reload replaces while workers read them: one `Cell` (the current value behind a lock
//! only reloads write, and a generation counter workers check with one atomic load), and one
//! watcher thread shape that polls a fingerprint and reloads on change. The TLS material of each
//! listener and the config's live part both use them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often watchers look at their files (they are small: reading them is cheap).
pub const POLL: Duration = Duration::from_secs(1);

/// The current value and its generation.
pub struct Cell<T> {
    current: RwLock<Arc<T>>,
    generation: AtomicU64,
}

impl<T> Cell<T> {
    pub fn new(value: T) -> Cell<T> {
        Cell {
            current: RwLock::new(Arc::new(value)),
            generation: AtomicU64::new(0),
        }
    }

    /// Hot path: the generation, which moves with every `swap`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The value and the generation it is at least as new as. The generation is read first: a
    /// swap in between pairs a newer value with an older generation, which only causes one more
    /// load later, never a missed update.
    pub fn load(&self) -> (u64, Arc<T>) {
        let g = self.generation.load(Ordering::Acquire);
        let v = Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()));
        (g, v)
    }

    /// Replace the value, then move the generation.
    pub fn swap(&self, value: T) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Run `check` every `POLL` on a thread named `name` for the life of the process.
pub fn watch(name: &str, check: impl Fn() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(POLL);
                check();
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_moves_the_generation_after_the_value() {
        let c = Cell::new(1);
        let (g0, v0) = c.load();
        assert_eq!((g0, *v0), (0, 1));
        c.swap(2);
        assert_eq!(c.generation(), 1);
        let (g1, v1) = c.load();
        assert_eq!((g1, *v1), (1, 2));
    }
}
