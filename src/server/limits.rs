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
mod tests {
    use super::*;

    fn limits(read: f64, write: f64, burst: u32) -> RateLimits {
        RateLimits::new(&LimitsConfig {
            read_rps: read,
            write_rps: write,
            burst,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn burst_then_refusal_with_the_wait_until_the_next_token() {
        let l = limits(2.0, 0.0, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            l.check(ip, Class::Read).unwrap();
        }
        let wait = l.check(ip, Class::Read).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Writes are unlimited, and other clients have their own buckets.
        for _ in 0..100 {
            l.check(ip, Class::Write).unwrap();
        }
        l.check("192.0.2.2".parse().unwrap(), Class::Read).unwrap();
    }

    #[test]
    fn default_burst_is_one_seconds_worth_and_at_least_one() {
        let l = limits(0.5, 5.0, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        l.check(ip, Class::Read).unwrap();
        assert!(l.check(ip, Class::Read).is_err());
        for _ in 0..5 {
            l.check(ip, Class::Write).unwrap();
        }
        assert!(l.check(ip, Class::Write).is_err());
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_mapped_v4_is_v4() {
        let l = limits(1.0, 0.0, 1);
        l.check("2001:db8::1".parse().unwrap(), Class::Read)
            .unwrap();
        assert!(
            l.check("2001:db8::2".parse().unwrap(), Class::Read)
                .is_err()
        );
        l.check("2001:db8:0:1::1".parse().unwrap(), Class::Read)
            .unwrap();
        l.check("192.0.2.9".parse().unwrap(), Class::Read).unwrap();
        assert!(
            l.check("::ffff:192.0.2.9".parse().unwrap(), Class::Read)
                .is_err()
        );
    }

    #[test]
    fn a_flood_of_addresses_keeps_memory_bounded() {
        let l = limits(1.0, 0.0, 1);
        for i in 0..(SHARDS * SHARD_CAP * 2) as u32 {
            let _ = l.check(IpAddr::from(i.to_be_bytes()), Class::Read);
        }
        let held: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * SHARD_CAP, "{held}");
    }

    #[test]
    fn connection_cap_counts_slots() {
        let cap = Arc::new(ConnectionCap::new(2, 0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = cap.admit(ip, || false).unwrap();
        let _b = cap.admit(ip, || false).unwrap();
        assert_eq!(cap.admit(ip, || false).err(), Some(Refusal::Global));
        assert_eq!(cap.open(), 2);
        drop(a);
        assert!(cap.admit(ip, || false).is_ok());
        assert!(
            Arc::new(ConnectionCap::new(0, 0))
                .admit(ip, || false)
                .is_ok()
        );
    }

    #[test]
    fn at_the_global_cap_an_evicted_idle_connection_makes_room() {
        let cap = Arc::new(ConnectionCap::new(1, 0));
        let _a = cap.admit("192.0.2.1".parse().unwrap(), || false).unwrap();
        let b = cap.admit("192.0.2.2".parse().unwrap(), || true);
        assert!(b.is_ok(), "admitted in place of the evicted connection");
    }

    #[test]
    fn one_client_holds_at_most_its_share_of_connections() {
        let cap = Arc::new(ConnectionCap::new(0, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<Slot> = (0..2).map(|_| cap.admit(a, || false).unwrap()).collect();
        assert_eq!(
            cap.admit("::ffff:192.0.2.1".parse().unwrap(), || false)
                .err(),
            Some(Refusal::Client),
            "an IPv4-mapped address is the same client"
        );
        assert!(cap.admit("192.0.2.2".parse().unwrap(), || false).is_ok());
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _x = cap.admit(v6("2001:db8::1"), || false).unwrap();
        let _y = cap.admit(v6("2001:db8::2"), || false).unwrap();
        assert!(
            cap.admit(v6("2001:db8::3"), || false).is_err(),
            "one /64 is one client"
        );
        drop(held);
        assert!(cap.admit(a, || false).is_ok());
    }
}
