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
