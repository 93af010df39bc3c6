#![no_main]
//! CEL rules: compiling arbitrary text never panics, and whatever compiles evaluates to a decision
//! (never a panic) for arbitrary identities and a few request shapes. Input: rule text, then a NUL,
//! then newline-separated CNs / Os / username.
use libfuzzer_sys::fuzz_target;
use wharf::config::{AccessPolicyConfig, Config, PolicyDefault};
use wharf::http::Method;
use wharf::policy::{AccessControl, IdentityVal, Peer};
use wharf::tls::CertIdentity;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (rule, who) = text.split_once('\0').unwrap_or((text, ""));
    let mut parts = who.split('\n');
    let mut field = || parts.next().unwrap_or("").split(',').map(str::to_owned).collect::<Vec<_>>();
    let cert = CertIdentity { common_names: field(), organizations: field() };
    let username = field().join(",");
    let mut cfg = Config::default();
    for default in [PolicyDefault::Allow, PolicyDefault::Deny] {
        cfg.global.access_policy = Some(AccessPolicyConfig { default, rules: vec![rule.to_owned()] });
        let Ok(ac) = AccessControl::from_config(&cfg) else { return };
        let peer = Peer::new(Some(&cert), "192.0.2.1".parse().unwrap());
        for (m, path, q) in [
            (Method::Get, "/v2/", ""),
            (Method::Put, "/v2/a/b/manifests/latest", ""),
            (Method::Post, "/v2/a/blobs/uploads/", "mount=sha256:0000000000000000000000000000000000000000000000000000000000000000&from=c"),
            (Method::Get, "/v2/_catalog", "n=1"),
        ] {
            let action = wharf::registry::route(m, path, q).unwrap();
            let _ = ac.decide(IdentityVal::new(&peer, Some(("id", &username))), &action).allowed;
        }
    }
});
