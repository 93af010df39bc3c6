//! Counts per client address shared by every worker (password checks in flight, open
//! connections): a place is taken by `acquire` and given back when its `Held` drops. An address is
//! its IPv4 address (IPv4-mapped IPv6 too) or its IPv6 /64 (`client_key`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

/// One shard: client key → places held.
type Counts = Mutex<HashMap<[u8; 16], usize>>;

/// At most `max` places per client key; an entry exists only while its client holds a place, so
/// the maps are bounded by what is held (checks queued, connections open).
pub struct PerClient {
    max: usize,
    shards: Box<[Counts]>,
}

/// One place held by a client; dropping it gives the place back.
pub struct Held {
    owner: Arc<PerClient>,
    key: [u8; 16],
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self.owner.shard(&self.key);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl PerClient {
    /// `max` places per client; `0` means unlimited.
    pub fn new(max: usize) -> PerClient {
        PerClient {
            max: if max == 0 { usize::MAX } else { max },
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: &[u8; 16]) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], usize>> {
        let i = key
            .iter()
            .fold(0usize, |h, b| h.wrapping_mul(31) ^ *b as usize)
            % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more place for `ip`, or `None` when it holds `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        let key = client_key(ip);
        let mut map = self.shard(&key);
        let n = map.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(map);
        Some(Held {
            owner: Arc::clone(self),
            key,
        })
    }

    /// Clients holding a place now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// A client's key for per-client limits: IPv4 (also IPv4-mapped IPv6) by address, IPv6 by its
/// /64, since one host can hold a whole /64.
pub fn client_key(ip: IpAddr) -> [u8; 16] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => {
            let mut k = v6.octets();
            k[8..].fill(0);
            k
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_client_and_come_back() {
        let f = Arc::new(PerClient::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let s1 = f.acquire(a).unwrap();
        let _s2 = f.acquire(mapped).unwrap();
        assert!(f.acquire(a).is_none(), "mapped IPv4 is the same client");
        assert!(f.acquire("2001:db8::1".parse().unwrap()).is_some());
        drop(s1);
        assert!(f.acquire(a).is_some());
        drop(_s2);
        assert_eq!(f.clients(), 0, "entries go with their last place");
        let same64: [IpAddr; 2] = [
            "2001:db8::1".parse().unwrap(),
            "2001:db8::ffff".parse().unwrap(),
        ];
        assert_eq!(client_key(same64[0]), client_key(same64[1]));
    }
}
