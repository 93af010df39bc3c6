//! A worker's connections waiting for their next request, oldest first, so that at
//! `limits.max_connections` a new client can take the place of the longest-idle one instead of
//! being refused (no locks: one runtime per thread).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A connection idle for less than this is between requests of a busy client, not idle.
pub(crate) const MIN_IDLE: Duration = Duration::from_secs(1);

/// Set when the connection is chosen to close; its request loop waits on it while idle.
#[derive(Default)]
pub struct Evict {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Evict {
    fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once the connection was chosen to close.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        EvictWait(self)
    }
}

struct EvictWait<'a>(&'a Evict);

impl Future for EvictWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.fired.get() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The idle connections of one worker, by the order they became idle.
#[derive(Default)]
pub struct Idle {
    next: Cell<u64>,
    waiting: RefCell<BTreeMap<u64, (Instant, Rc<Evict>)>>,
}

/// A connection's place in `Idle` while it waits; leaves it when dropped.
pub struct Entered<'a> {
    idle: &'a Idle,
    seq: u64,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.idle.waiting.borrow_mut().remove(&self.seq);
    }
}

impl Idle {
    /// Hot path: a connection starts waiting for its next request.
    pub fn enter(&self, evict: &Rc<Evict>) -> Entered<'_> {
        let seq = self.next.get();
        self.next.set(seq + 1);
        self.waiting
            .borrow_mut()
            .insert(seq, (Instant::now(), Rc::clone(evict)));
        Entered { idle: self, seq }
    }

    /// Close the connection idle longest, if it has been idle at least `MIN_IDLE`.
    pub fn evict_oldest(&self) -> bool {
        let mut waiting = self.waiting.borrow_mut();
        let Some(entry) = waiting.first_entry() else {
            return false;
        };
        if entry.get().0.elapsed() < MIN_IDLE {
            return false;
        }
        let (_, evict) = entry.remove();
        drop(waiting);
        evict.fire();
        true
    }

    /// Connections waiting now.
    pub fn len(&self) -> usize {
        self.waiting.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_connection_goes_first_and_busy_ones_stay() {
        let idle = Idle::default();
        let (a, b) = (Rc::new(Evict::default()), Rc::new(Evict::default()));
        let _ea = idle.enter(&a);
        let _eb = idle.enter(&b);
        assert!(!idle.evict_oldest(), "idle for less than MIN_IDLE");
        idle.waiting
            .borrow_mut()
            .values_mut()
            .for_each(|v| v.0 -= MIN_IDLE);
        assert!(idle.evict_oldest());
        assert!(a.fired.get() && !b.fired.get());
        assert_eq!(idle.len(), 1);
        drop(_eb);
        assert_eq!(idle.len(), 0);
        assert!(!idle.evict_oldest());
    }
}
