//! Verified credentials per worker thread (no locks), keyed by a keyed SHA-256 of the whole
//! `Authorization` header so no password is kept; checks of the same header that arrive while
//! one is running wait for it instead of starting their own. Successes and failures are kept in
//! separate bounded sets, so a flood of wrong credentials never evicts a user who verified.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A header's cache key.
pub type Key = [u8; 32];

/// How a header was answered: remembered (verified or refused within the TTL), by joining a
/// check already running for it, or by a check of its own (all workers).
pub enum Lookup {
    Hit,
    Joined,
    Miss,
}

static LOOKUPS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Count one `Authorization` header's lookup.
pub fn count(how: Lookup) {
    LOOKUPS[how as usize].fetch_add(1, Ordering::Relaxed);
}

/// (hit, joined, miss) lookups so far, all workers.
pub fn lookups() -> [u64; 3] {
    LOOKUPS.each_ref().map(|c| c.load(Ordering::Relaxed))
}

/// What checking a header found: the user's index, or wrong credentials.
pub type Outcome = Option<usize>;

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

/// A map of at most `max` keys that forgets the oldest insertion first (FIFO, not a `clear()`).
struct Bounded<V> {
    max: usize,
    /// Key → value and the sequence number of its insertion.
    map: HashMap<Key, (V, u64)>,
    /// Insertion order; entries whose sequence number no longer matches the map are stale.
    order: VecDeque<(Key, u64)>,
    seq: u64,
}

impl<V> Bounded<V> {
    fn new(max: usize) -> Self {
        Bounded {
            max: max.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    fn get(&self, key: &Key) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    fn insert(&mut self, key: Key, value: V) {
        self.seq += 1;
        self.map.insert(key, (value, self.seq));
        self.order.push_back((key, self.seq));
        while self.map.len() > self.max {
            let Some((k, s)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, at)| *at == s) {
                self.map.remove(&k);
            }
        }
        // Re-inserted keys leave stale order entries behind; keep the queue within 2 × max.
        if self.order.len() > 2 * self.max {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|(_, at)| at == s));
        }
        debug_assert!(self.map.len() <= self.max && self.order.len() <= 2 * self.max + 1);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// One worker thread's verified credentials.
pub struct Cache {
    ttl: Duration,
    /// Headers that verified: user index and expiry. Only a correct password gets in here.
    verified: RefCell<Bounded<(usize, Instant)>>,
    /// Headers that did not verify, and their expiry.
    refused: RefCell<Bounded<Instant>>,
    pending: RefCell<HashMap<Key, Rc<Pending>>>,
    /// Registry tokens that verified, until they expire (bounded like `verified`).
    tokens: RefCell<Bounded<(Rc<crate::token::Subject>, Instant)>>,
}

impl Cache {
    /// `max` bounds each of the two sets (successes, failures).
    pub fn new(ttl: Duration, max: usize) -> Cache {
        Cache {
            ttl,
            verified: RefCell::new(Bounded::new(max)),
            refused: RefCell::new(Bounded::new(max)),
            pending: RefCell::new(HashMap::new()),
            tokens: RefCell::new(Bounded::new(max)),
        }
    }

    /// Hot path: a verified (or refused) header seen within the TTL.
    pub fn lookup(&self, key: &Key, now: Instant) -> Option<Outcome> {
        if let Some(&(user, expires)) = self.verified.borrow().get(key)
            && expires > now
        {
            return Some(Some(user));
        }
        match self.refused.borrow().get(key) {
            Some(&expires) if expires > now => Some(None),
            _ => None,
        }
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
        let expires = now + self.ttl;
        match outcome {
            Some(Some(user)) => self.verified.borrow_mut().insert(key, (user, expires)),
            Some(None) => self.refused.borrow_mut().insert(key, expires),
            None => {}
        }
        if let Some(p) = self.pending.borrow_mut().remove(&key) {
            p.outcome.set(Some(outcome));
            for w in p.wakers.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    /// Hot path: who a registry token verified within its lifetime speaks for.
    pub fn token(&self, key: &Key, now: Instant) -> Option<Rc<crate::token::Subject>> {
        let found = self
            .tokens
            .borrow()
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| Rc::clone(s));
        crate::token::cache_lookup(found.is_some());
        found
    }

    /// Remember a verified registry token until `until`.
    pub fn remember_token(&self, key: Key, subject: Rc<crate::token::Subject>, until: Instant) {
        self.tokens.borrow_mut().insert(key, (subject, until));
    }

    /// Headers remembered (verified and refused).
    pub fn remembered(&self) -> usize {
        self.verified.borrow().len() + self.refused.borrow().len()
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
        assert!(c.remembered() <= 6);
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

    #[test]
    fn a_flood_of_wrong_credentials_never_evicts_a_verified_user() {
        let c = Cache::new(Duration::from_secs(60), 16);
        let t0 = Instant::now();
        c.finish([1; 32], Some(Some(0)), t0);
        for i in 0..10_000u32 {
            let mut k = [0xEE; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.finish(k, Some(None), t0);
        }
        assert_eq!(c.lookup(&[1; 32], t0), Some(Some(0)));
        assert!(c.remembered() <= 32, "{}", c.remembered());
    }

    #[test]
    fn the_oldest_entry_goes_first_and_reinsertion_refreshes() {
        let mut b = Bounded::new(3);
        for i in 0..3u8 {
            b.insert([i; 32], i);
        }
        b.insert([0; 32], 10);
        b.insert([7; 32], 7);
        assert_eq!(b.get(&[1; 32]), None, "the oldest insertion was dropped");
        assert_eq!(b.get(&[0; 32]), Some(&10), "re-inserted, so younger");
        for i in 0..100u8 {
            b.insert([0; 32], i);
        }
        assert!(b.order.len() <= 7 && b.len() <= 3);
    }
}
