//! Password checks in flight per client address, shared by every worker: a client over its share
//! is answered 429 before its check is queued, so one address cannot fill the verifier queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

/// One shard: client key → checks in flight.
type Counts = Mutex<HashMap<[u8; 16], u32>>;

/// Counts per client key (`client_key`); an entry exists only while its client has checks in
/// flight, so the maps hold at most the verifier queue's length plus its threads.
pub(crate) struct InFlight {
    max: u32,
    shards: Box<[Counts]>,
}

/// One check in flight; dropping it frees the client's place.
pub(crate) struct Slot {
    owner: Arc<InFlight>,
    key: [u8; 16],
}

impl Drop for Slot {
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

impl InFlight {
    /// `max` checks per client; `0` means unlimited.
    pub(crate) fn new(max: u32) -> InFlight {
        InFlight {
            max: if max == 0 { u32::MAX } else { max },
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: &[u8; 16]) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], u32>> {
        let i = key
            .iter()
            .fold(0usize, |h, b| h.wrapping_mul(31) ^ *b as usize)
            % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more check by `ip`, or `None` when it has `max` in flight.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = client_key(ip);
        let mut map = self.shard(&key);
        let n = map.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(map);
        Some(Slot {
            owner: Arc::clone(self),
            key,
        })
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
        let f = Arc::new(InFlight::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let s1 = f.acquire(a).unwrap();
        let _s2 = f.acquire(mapped).unwrap();
        assert!(f.acquire(a).is_none(), "mapped IPv4 is the same client");
        assert!(f.acquire("2001:db8::1".parse().unwrap()).is_some());
        drop(s1);
        assert!(f.acquire(a).is_some());
        let same64: [IpAddr; 2] = [
            "2001:db8::1".parse().unwrap(),
            "2001:db8::ffff".parse().unwrap(),
        ];
        assert_eq!(client_key(same64[0]), client_key(same64[1]));
    }
}
