//! Verified credentials per worker thread (no locks), keyed by a keyed SHA-256 of the whole
//! `Authorization` header so no password is kept; checks of the same header that arrive while
//! one is running wait for it instead of starting their own.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A header's cache key.
pub type Key = [u8; 32];

/// What checking a header found: the user's index, or wrong credentials.
pub type Outcome = Option<usize>;

struct Entry {
    outcome: Outcome,
    expires: Instant,
}

/// A check in flight that other requests with the same header wait for.
#[derive(Default)]
pub struct Pending {
    /// `Some` once known; `Some(None)` inside means the credentials were wrong.
    outcome: Cell<Option<Option<Outcome>>>,
    wakers: RefCell<Vec<Waker>>,
}

impl Pending {
    /// Wait for the check; `None` if it could not run (not a verdict on the credentials).
    pub fn wait(self: Rc<Self>) -> impl Future<Output = Option<Outcome>> {
        Wait(self)
    }
}

struct Wait(Rc<Pending>);

impl Future for Wait {
    type Output = Option<Outcome>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.outcome.get() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                self.0.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// One worker thread's verified credentials.
pub struct Cache {
    ttl: Duration,
    max: usize,
    entries: RefCell<HashMap<Key, Entry>>,
    pending: RefCell<HashMap<Key, Rc<Pending>>>,
}

impl Cache {
    pub fn new(ttl: Duration, max: usize) -> Cache {
        Cache {
            ttl,
            max: max.max(1),
            entries: RefCell::new(HashMap::new()),
            pending: RefCell::new(HashMap::new()),
        }
    }

    /// Hot path: a verified (or refused) header seen within the TTL.
    pub fn lookup(&self, key: &Key, now: Instant) -> Option<Outcome> {
        let entries = self.entries.borrow();
        let e = entries.get(key)?;
        (e.expires > now).then_some(e.outcome)
    }

    /// The check already running for this header, if any.
    pub fn pending(&self, key: &Key) -> Option<Rc<Pending>> {
        self.pending.borrow().get(key).cloned()
    }

    /// Register a check that is about to run.
    pub fn start(&self, key: Key) -> Rc<Pending> {
        let p = Rc::new(Pending::default());
        self.pending.borrow_mut().insert(key, Rc::clone(&p));
        p
    }

    /// Record a finished check (`None`: it could not run, remember nothing) and wake its waiters.
    pub fn finish(&self, key: Key, outcome: Option<Outcome>, now: Instant) {
        if let Some(outcome) = outcome {
            let mut entries = self.entries.borrow_mut();
            if entries.len() >= self.max {
                entries.retain(|_, e| e.expires > now);
                if entries.len() >= self.max {
                    entries.clear();
                }
            }
            entries.insert(
                key,
                Entry {
                    outcome,
                    expires: now + self.ttl,
                },
            );
        }
        if let Some(p) = self.pending.borrow_mut().remove(&key) {
            p.outcome.set(Some(outcome));
            for w in p.wakers.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.entries.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_stays_bounded() {
        let c = Cache::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for i in 0..3u8 {
            c.start([i; 32]);
            c.finish([i; 32], Some(Some(i as usize)), t0);
        }
        assert_eq!(c.lookup(&[1; 32], t0), Some(Some(1)));
        assert_eq!(c.lookup(&[1; 32], t0 + Duration::from_secs(61)), None);
        c.finish([9; 32], Some(None), t0);
        assert!(c.remembered() <= 3);
        assert_eq!(
            c.lookup(&[9; 32], t0),
            Some(None),
            "wrong credentials are remembered too"
        );
        c.finish([8; 32], None, t0);
        assert_eq!(
            c.lookup(&[8; 32], t0),
            None,
            "a check that could not run is not remembered"
        );
    }
}
