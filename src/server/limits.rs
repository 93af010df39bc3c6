//! Per-client request rates (token buckets keyed by client IP, IPv6 by /64, in shards shared by
//! all workers) and the cap on open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

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

/// IPv4 (also IPv4-mapped IPv6) by address, IPv6 by its /64: one host can hold a whole /64.
fn client_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_ipv6_mapped().octets(),
            None => {
                let mut k = v6.octets();
                k[8..].fill(0);
                k
            }
        },
    }
}

fn shard_of(key: &[u8; 16]) -> usize {
    let x = u128::from_le_bytes(*key);
    let h = (x as u64 ^ (x >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 58) as usize % SHARDS
}

/// The process-wide count of open connections against `limits.max_connections`.
pub struct ConnectionCap {
    open: AtomicUsize,
    max: usize,
}

/// One admitted connection; dropping it frees the slot.
pub struct Slot(Arc<ConnectionCap>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionCap {
    pub fn new(max: usize) -> ConnectionCap {
        ConnectionCap {
            open: AtomicUsize::new(0),
            max: if max == 0 { usize::MAX } else { max },
        }
    }

    /// A slot for a new connection, or `None` when `max` are open.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(Arc::clone(self));
        (before < self.max).then_some(slot)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Raise the soft open-file limit to the hard limit (connections and blob files need descriptors).
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
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
            max_connections: 0,
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
        let cap = Arc::new(ConnectionCap::new(2));
        let a = cap.admit().unwrap();
        let _b = cap.admit().unwrap();
        assert!(cap.admit().is_none());
        assert_eq!(cap.open(), 2);
        drop(a);
        assert!(cap.admit().is_some());
        assert!(Arc::new(ConnectionCap::new(0)).admit().is_some());
    }
}
