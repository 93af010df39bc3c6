//! Per-client request rates (token buckets keyed by client IP, IPv6 by /64, in shards shared by
//! all workers) and the cap on open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;
use crate::net::per_client::{Held, PerClient, client_key};

const SHARDS: usize = 64;
/// Clients remembered per shard before idle (full) buckets are forgotten.
const SHARD_CAP: usize = 4096;

/// Which bucket a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Read = 0,
    Write = 1,
}

#[derive(Clone, Copy)]
struct Rate {
    per_sec: f64,
    burst: f64,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, rate: Rate, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_sec;
        (self.tokens + refill).min(rate.burst)
    }
}

/// A shard's clients: address key → read and write buckets.
type Clients = HashMap<[u8; 16], [Bucket; 2]>;

/// Token buckets for reads and writes per client; `None` rates are unlimited.
pub struct RateLimits {
    rates: [Option<Rate>; 2],
    shards: Box<[Mutex<Clients>]>,
}

impl RateLimits {
    pub fn new(cfg: &LimitsConfig) -> RateLimits {
        let rate = |per_sec: f64| {
            (per_sec > 0.0).then(|| Rate {
                per_sec,
                burst: if cfg.burst > 0 {
                    f64::from(cfg.burst)
                } else {
                    per_sec.ceil().max(1.0)
                },
            })
        };
        RateLimits {
            rates: [rate(cfg.read_rps), rate(cfg.write_rps)],
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Take one request from `ip`'s bucket for `class`; `Err` carries how long until one is allowed.
    pub fn check(&self, ip: IpAddr, class: Class) -> Result<(), Duration> {
        let Some(rate) = self.rates[class as usize] else {
            return Ok(());
        };
        let key = client_key(ip);
        let shard = &self.shards[shard_of(&key)];
        let now = Instant::now();
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SHARD_CAP && !map.contains_key(&key) {
            self.forget_idle(&mut map, now);
        }
        let full = |r: Option<Rate>| Bucket {
            tokens: r.map_or(0.0, |r| r.burst),
            at: now,
        };
        let buckets = map
            .entry(key)
            .or_insert_with(|| [full(self.rates[0]), full(self.rates[1])]);
        let b = &mut buckets[class as usize];
        b.tokens = b.level(rate, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate.per_sec))
        }
    }

    /// Drop clients whose buckets have refilled (they would start full anyway). If a flood of
    /// distinct addresses leaves the shard still full, it is cleared: memory stays bounded, and
    /// those clients start again with a full burst.
    fn forget_idle(&self, map: &mut Clients, now: Instant) {
        map.retain(|_, b| {
            self.rates
                .iter()
                .zip(b.iter())
                .any(|(r, b)| r.is_some_and(|r| b.level(r, now) < r.burst))
        });
        if map.len() >= SHARD_CAP {
            map.clear();
        }
    }
}

fn shard_of(key: &[u8; 16]) -> usize {
    let x = u128::from_le_bytes(*key);
    let h = (x as u64 ^ (x >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 58) as usize % SHARDS
}

/// Open connections against `limits.max_connections` (process-wide) and
/// `limits.max_connections_per_client` (per client address, shared by the workers).
pub struct ConnectionCap {
    open: AtomicUsize,
    max: usize,
    clients: Arc<PerClient>,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Global,
    /// The client holds `max_connections_per_client`.
    Client,
}

/// One admitted connection; dropping it frees its places.
pub struct Slot {
    cap: Arc<ConnectionCap>,
    _client: Held,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.cap.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionCap {
    /// `0` means unlimited, for either cap.
    pub fn new(max: usize, per_client: usize) -> ConnectionCap {
        ConnectionCap {
            open: AtomicUsize::new(0),
            max: if max == 0 { usize::MAX } else { max },
            clients: Arc::new(PerClient::new(per_client)),
        }
    }

    /// A slot for a new connection from `ip`. At the global cap `make_room` may close an idle
    /// connection (it returns whether it did), and the new one is admitted in its place.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        make_room: impl FnOnce() -> bool,
    ) -> Result<Slot, Refusal> {
        let held = self.clients.acquire(ip).ok_or(Refusal::Client)?;
        let slot = Slot {
            cap: Arc::clone(self),
            _client: held,
        };
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        // The evicted connection frees its slot as it closes, a moment later.
        if before < self.max || make_room() {
            Ok(slot)
        } else {
            Err(Refusal::Global)
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
