//! The startup and `check-config` warning for a listener that anonymous clients on other hosts
//! can write or delete through: a policy is probed with an anonymous identity, once per listener
//! and configured repository name.

use crate::config::{ClientAuth, Config};
use crate::http::Method;
use crate::policy::{AccessControl, IdentityVal, Peer};

/// A repository name no rule is likely to single out, for the global policy.
const PROBE: &str = "wharf-anonymous-probe";

/// One line per listener not on loopback that lets an anonymous client push or delete.
pub fn warnings(cfg: &Config, access: &AccessControl) -> Vec<String> {
    let main = (
        "main",
        cfg.server.bind_address,
        cfg.server.port,
        cfg.server.tls.as_ref(),
    );
    let more = cfg
        .server
        .listener
        .iter()
        .map(|l| (l.name.as_str(), l.bind_address, l.port, l.tls.as_ref()));
    let peer = Peer::new(None, std::net::IpAddr::from([192, 0, 2, 1]));
    let repos: Vec<&str> = std::iter::once(PROBE)
        .chain(cfg.repository.keys().map(String::as_str))
        .collect();
    let mut out = Vec::new();
    for (name, bind, port, tls) in std::iter::once(main).chain(more) {
        let certificate_required = tls
            .is_some_and(|t| t.client_auth == ClientAuth::Required && t.client_ca_bundle.is_some());
        if bind.is_loopback() || certificate_required {
            continue;
        }
        let mut writes = Vec::new();
        for repo in &repos {
            for (method, path, what) in [
                (Method::Post, format!("/v2/{repo}/blobs/uploads/"), "push"),
                (
                    Method::Delete,
                    format!("/v2/{repo}/manifests/latest"),
                    "delete",
                ),
            ] {
                let Ok(action) = crate::registry::route(method, &path, "") else {
                    continue;
                };
                let open = access.is_open()
                    || access
                        .decide(IdentityVal::new(&peer, None), &action, name)
                        .allowed;
                if open {
                    writes.push(if *repo == PROBE {
                        format!("{what} to any repository")
                    } else {
                        format!("{what} to {repo}")
                    });
                }
            }
        }
        if writes.is_empty() {
            continue;
        }
        let why = if access.is_open() {
            "there is no access policy"
        } else {
            "the access policy allows it"
        };
        out.push(format!(
            "listener '{name}' on {bind}:{port} lets anonymous clients from other hosts {} ({why}); \
             add [global.access_policy] rules that need a client certificate or a user, or bind it to loopback",
            writes.join(", ")
        ));
    }
    out
}
