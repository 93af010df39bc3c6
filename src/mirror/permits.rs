//! A process-wide bound on requests to one upstream (`upstream.max_connections`): a request
//! takes a permit before it connects and keeps it until its response body is read or dropped.
//! Waiters on any worker are woken across threads when a permit comes back; the lock is held
//! only to count and to queue a waker, never across an await.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Permits for one upstream.
pub(crate) struct Permits {
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    used: usize,
    next_id: u64,
    /// Waiting acquirers (id, waker), oldest first.
    waiting: VecDeque<(u64, Waker)>,
}

/// One request's right to a connection; given back when dropped.
pub(crate) struct Permit {
    permits: Arc<Permits>,
}

impl Permits {
    pub(crate) fn new(max: usize) -> Arc<Permits> {
        Arc::new(Permits {
            max,
            state: Mutex::new(State::default()),
        })
    }

    /// The bound.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Permits taken now.
    pub(crate) fn in_use(&self) -> usize {
        self.lock().used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit, once one is free (callers bound the wait with a timeout).
    pub(crate) fn acquire(self: &Arc<Permits>) -> Acquire {
        Acquire {
            permits: Arc::clone(self),
            id: None,
        }
    }

    /// Wake the oldest waiter, if a permit is free for it.
    fn wake_next(state: &mut State, max: usize) -> Option<Waker> {
        if state.used < max {
            state.waiting.pop_front().map(|(_, w)| w)
        } else {
            None
        }
    }
}

/// The future of `Permits::acquire`.
pub(crate) struct Acquire {
    permits: Arc<Permits>,
    /// Set once queued.
    id: Option<u64>,
}

impl Future for Acquire {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        let permits = Arc::clone(&self.permits);
        let mut s = permits.lock();
        if s.used < permits.max {
            s.used += 1;
            if let Some(id) = self.id.take() {
                s.waiting.retain(|(i, _)| *i != id);
            }
            return Poll::Ready(Permit {
                permits: Arc::clone(&permits),
            });
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                s.next_id += 1;
                let id = s.next_id;
                self.id = Some(id);
                id
            }
        };
        match s.waiting.iter_mut().find(|(i, _)| *i == id) {
            Some((_, w)) => w.clone_from(cx.waker()),
            None => s.waiting.push_back((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Acquire {
    /// A waiter that gives up (timed out) leaves the queue; if it had been woken for a free
    /// permit, the next waiter is woken instead.
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let next = {
            let mut s = self.permits.lock();
            s.waiting.retain(|(i, _)| *i != id);
            Permits::wake_next(&mut s, self.permits.max)
        };
        if let Some(w) = next {
            w.wake();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let next = {
            let mut s = self.permits.lock();
            s.used -= 1;
            Permits::wake_next(&mut s, self.permits.max)
        };
        if let Some(w) = next {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_and_handed_on() {
        let p = Permits::new(2);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let a = std::pin::pin!(p.acquire());
        let Poll::Ready(a) = a.poll(&mut cx) else {
            panic!("first permit")
        };
        let b = std::pin::pin!(p.acquire());
        let Poll::Ready(_b) = b.poll(&mut cx) else {
            panic!("second permit")
        };
        let mut c = Box::pin(p.acquire());
        assert!(c.as_mut().poll(&mut cx).is_pending(), "a third waits");
        assert_eq!(p.in_use(), 2);
        drop(a);
        let Poll::Ready(_c) = c.as_mut().poll(&mut cx) else {
            panic!("the waiter gets the permit given back")
        };
        // A waiter that gives up leaves no trace.
        let mut d = Box::pin(p.acquire());
        assert!(d.as_mut().poll(&mut cx).is_pending());
        drop(d);
        assert!(p.lock().waiting.is_empty());
    }
}
