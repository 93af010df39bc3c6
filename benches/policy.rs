//! Policy decision cost on one core: the five seed rules of the access-control guide in one
//! `default = "deny"` policy, for the identity that matches the first rule, the last rule and none
//! (every rule evaluated). Run: `cargo bench --bench policy`; results in docs/performance.md.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use wharf::config::Config;
use wharf::http::Method;
use wharf::policy::{AccessControl, IdentityVal, Peer};
use wharf::registry::route;
use wharf::tls::CertIdentity;

// The allocator the wharf binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIVE_RULES: &str = r#"
[global.access_policy]
default = "deny"
rules = [
  "size(identity.certificate.common_names) > 0 && identity.certificate.organizations.contains('DevOps')",
  "identity.username != '' && request.action.startsWith('get-')",
  "request.action.startsWith('get-') || request.action == 'list-tags'",
  "'build-server' in identity.certificate.common_names",
  "identity.username == 'admin'",
]
"#;

fn cert(cn: &str, org: &str) -> CertIdentity {
    CertIdentity {
        common_names: vec![cn.to_owned()],
        organizations: vec![org.to_owned()],
        ..CertIdentity::default()
    }
}

fn bench_policy(c: &mut Criterion) {
    let ac = AccessControl::from_config(&Config::parse_str(FIVE_RULES).unwrap()).unwrap();
    let put = route(Method::Put, "/v2/team/app/manifests/v1.2.3", "").unwrap();
    let ip = "10.1.2.3".parse().unwrap();
    let devops = Peer::new(Some(&cert("alice", "DevOps")), ip);
    let builder = Peer::new(Some(&cert("build-server", "CI")), ip);
    let admin = Peer::new(None, ip);
    let nobody = Peer::new(Some(&cert("mallory", "Eng")), ip);
    let mut g = c.benchmark_group("policy_five_rules");
    g.bench_function("allowed_by_rule_0", |b| {
        b.iter(|| {
            black_box(
                ac.decide(IdentityVal::new(&devops, None), black_box(&put), "main")
                    .allowed,
            )
        })
    });
    g.bench_function("allowed_by_rule_3", |b| {
        b.iter(|| {
            black_box(
                ac.decide(IdentityVal::new(&builder, None), black_box(&put), "main")
                    .allowed,
            )
        })
    });
    g.bench_function("allowed_by_rule_4", |b| {
        let user = Some(("admin", "admin"));
        b.iter(|| {
            black_box(
                ac.decide(IdentityVal::new(&admin, user), black_box(&put), "main")
                    .allowed,
            )
        })
    });
    g.bench_function("denied_all_five_evaluated", |b| {
        b.iter(|| {
            black_box(
                ac.decide(IdentityVal::new(&nobody, None), black_box(&put), "main")
                    .allowed,
            )
        })
    });
    g.finish();
    c.bench_function("policy_compile_five_rules", |b| {
        let cfg = Config::parse_str(FIVE_RULES).unwrap();
        b.iter(|| AccessControl::from_config(black_box(&cfg)).unwrap())
    });
}

criterion_group!(benches, bench_policy);
criterion_main!(benches);
