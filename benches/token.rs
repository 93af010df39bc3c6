//! Registry-token cost on one core: verifying a token wharf signed (Ed25519 and P-256, for a Basic
//! user and for an OIDC workload whose claims become CEL values), and the keyed SHA-256 that finds
//! an already verified token in a worker's cache (what every request after the first costs).
//! Run: `cargo bench --bench token`; results in docs/performance.md.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use serde_json::json;
use wharf::config::Config;
use wharf::token::{OidcIdentity, Subject, Tokens, Use};

// The allocator the wharf binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn service(dir: &std::path::Path, ecdsa: bool) -> Tokens {
    let key = dir.join(if ecdsa { "p256.pem" } else { "ed25519.pem" });
    std::fs::write(&key, wharf::token::keys::generate(ecdsa).unwrap()).unwrap();
    let toml = format!(
        "[auth.token]\nservice = \"bench\"\nsigning_key = \"{}\"\n",
        key.display()
    );
    Tokens::from_config(&Config::parse_str(&toml).unwrap(), None)
        .unwrap()
        .unwrap()
}

/// Claims the size of a GitHub Actions ID token's.
fn github_claims() -> serde_json::Map<String, serde_json::Value> {
    let c = json!({
        "sub": "repo:org/app:ref:refs/heads/main", "aud": "bench", "ref": "refs/heads/main",
        "sha": "3f786850e387550fdab836ed7e6dc881de23001b", "repository": "org/app",
        "repository_owner": "org", "repository_owner_id": "1342004", "repository_id": "98765",
        "repository_visibility": "private", "run_id": "6121449372", "run_number": "42",
        "run_attempt": "1", "actor": "octocat", "actor_id": "583231", "workflow": "build",
        "workflow_ref": "org/app/.github/workflows/build.yml@refs/heads/main",
        "job_workflow_ref": "org/app/.github/workflows/build.yml@refs/heads/main",
        "event_name": "push", "ref_type": "branch", "ref_protected": "true",
        "runner_environment": "github-hosted", "iss": "https://token.actions.githubusercontent.com",
        "nbf": 1_796_000_000, "iat": 1_796_000_000, "exp": 1_796_000_300,
    });
    c.as_object().unwrap().clone()
}

fn bench_tokens(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let exp = wharf::token::jws::now() + 3600;
    let mut g = c.benchmark_group("registry_token");
    for (name, ecdsa) in [("ed25519", false), ("p256", true)] {
        let t = service(dir.path(), ecdsa);
        let user = t.issue(&Subject::User("ci".into()), Use::Access, exp, &[]);
        g.bench_function(format!("verify_{name}_user"), |b| {
            b.iter(|| black_box(t.verify(black_box(&user), Use::Access).unwrap()))
        });
    }
    let t = service(dir.path(), false);
    let oidc = Subject::Oidc(std::rc::Rc::new(OidcIdentity::new(
        "github",
        github_claims(),
    )));
    let token = t.issue(&oidc, Use::Access, exp, &[]);
    g.bench_function("verify_ed25519_github_claims", |b| {
        b.iter(|| black_box(t.verify(black_box(&token), Use::Access).unwrap()))
    });
    let auth = wharf::auth::Authenticator::from_config(&Default::default()).unwrap();
    let header = format!("Bearer {token}");
    g.bench_function("cache_key_of_the_header", |b| {
        b.iter(|| black_box(auth.cache_key(black_box(&header))))
    });
    g.finish();
}

criterion_group!(benches, bench_tokens);
criterion_main!(benches);
