//! Per-thread shutdown signal and connection count (no locks: one runtime per thread).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Fired once when the worker stops accepting; idle connections wait on it.
#[derive(Default)]
pub struct Shutdown {
    fired: Cell<bool>,
    next_id: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
    active: Cell<usize>,
}

impl Shutdown {
    pub fn trigger(&self) {
        self.fired.set(true);
        for (_, w) in self.waiters.borrow_mut().drain() {
            w.wake();
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once `trigger` has been called.
    pub fn wait(&self) -> Wait<'_> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        Wait { shutdown: self, id }
    }

    /// Open connections on this thread.
    pub fn active(&self) -> usize {
        self.active.get()
    }

    /// Count a connection for as long as the guard lives.
    pub fn track(&self) -> Tracked<'_> {
        self.active.set(self.active.get() + 1);
        Tracked { shutdown: self }
    }
}

pub struct Wait<'a> {
    shutdown: &'a Shutdown,
    id: u64,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.fired.get() {
            return Poll::Ready(());
        }
        self.shutdown
            .waiters
            .borrow_mut()
            .insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.shutdown.waiters.borrow_mut().remove(&self.id);
    }
}

pub struct Tracked<'a> {
    shutdown: &'a Shutdown,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.shutdown.active.set(self.shutdown.active.get() - 1);
    }
}
