//! Live reload of the config file (SIGHUP and file changes): identities and policies change under
//! load without a failed request; an invalid file is refused with its key and the old config keeps
//! serving; settings that need a restart say so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::common::*;

fn config(alice: &str, bob: Option<&str>, rule: &str) -> String {
    let mut t = format!("[auth.identity.alice]\nusername = \"alice\"\npassword = \"{alice}\"\n");
    if let Some(b) = bob {
        t.push_str(&format!(
            "[auth.identity.bob]\nusername = \"bob\"\npassword = \"{b}\"\n"
        ));
    }
    t.push_str(&format!(
        "[global.access_policy]\ndefault = \"deny\"\nrules = [\"{rule}\"]\n"
    ));
    t
}

/// Replace the extra part of the server's config file (everything after the harness's [server]).
fn rewrite(s: &Server, extra: &str) {
    let path = s.config_file();
    let old = std::fs::read_to_string(&path).unwrap();
    let base_end = old.find("[auth.").unwrap();
    let storage = "[storage]\nroot = \"data\"\n";
    std::fs::write(&path, format!("{}{extra}\n{storage}", &old[..base_end])).unwrap();
}

fn push_as(s: &Server, auth: &str, data: &[u8]) -> u16 {
    let mut c = s.client();
    c.request(
        "POST",
        &format!("/v2/r/blobs/uploads/?digest={}", sha256(data)),
        &[("Authorization", auth)],
        data,
    )
    .status
}

fn identities_and_policies_reload_under_load(driver: &str) {
    let (alice_h, bob_h) = (hash_password("a-pw"), hash_password("b-pw"));
    let only_alice = config(&alice_h, None, "identity.username == 'alice'");
    let s = Server::start_logged(driver, &only_alice, "warn,wharf=info");
    let (alice, bob) = (basic("alice", "a-pw"), basic("bob", "b-pw"));
    assert_eq!(push_as(&s, &bob, b"bob 0"), 401);

    // Alice pushes and pulls continuously; not one request may fail across the reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let load = {
        let (stop, done, addr, alice) = (stop.clone(), done.clone(), s.addr, alice.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let data = format!("alice {i}").into_bytes();
                let d = sha256(&data);
                let r = c.request(
                    "POST",
                    &format!("/v2/r/blobs/uploads/?digest={d}"),
                    &[("Authorization", &alice)],
                    &data,
                );
                assert_eq!(r.status, 201, "push {i} failed during a reload");
                let r = c.request(
                    "GET",
                    &format!("/v2/r/blobs/{d}"),
                    &[("Authorization", &alice)],
                    b"",
                );
                assert_eq!(r.body, data, "pull {i} failed during a reload");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The load runs before each reload and goes on after it was applied (so the reloads happen
    // under it, not beside an idle server).
    let running = |what: &str| {
        let n = done.load(Ordering::Relaxed);
        wait_for(what, || done.load(Ordering::Relaxed) > n);
    };
    running("alice's load running before the first reload");

    // SIGHUP: bob and a rule for him arrive.
    rewrite(
        &s,
        &config(
            &alice_h,
            Some(&bob_h),
            "identity.username in ['alice', 'bob']",
        ),
    );
    unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
    wait_for("bob may push after SIGHUP", || {
        push_as(&s, &bob, b"bob 1") == 201
    });
    running("alice's load going on after the first reload");

    // An invalid file is refused, naming the rule, and the running config keeps serving bob.
    rewrite(
        &s,
        &config(&alice_h, Some(&bob_h), "identity.username ==== 'x'"),
    );
    unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
    let log = s.wait_for_log("not reloading");
    assert!(log.contains("global.access_policy.rules[0]"), "{log}");
    assert_eq!(push_as(&s, &bob, b"bob 2"), 201);

    // A change to the file alone (no signal) is picked up: bob is gone again.
    rewrite(&s, &only_alice);
    wait_for("bob refused after the file changed", || {
        push_as(&s, &bob, b"bob 3") == 401
    });
    running("alice's load going on after the file reload");
    // Reloads of identities and policies alone warned of no restart.
    assert!(!s.log().contains("needs a restart"), "{}", s.log());
    // Settings that need a restart are reported, and the rest still applies.
    let moved = std::fs::read_to_string(s.config_file())
        .unwrap()
        .replace("port = 0", "port = 1");
    std::fs::write(s.config_file(), moved).unwrap();
    let log = s.wait_for_log("needs a restart");
    assert!(log.contains("server.port changed in"), "{log}");

    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
}

/// Rewrite the config file with `tables` after the harness's `[server]` keys and `storage` keys
/// in `[storage]`, then SIGHUP.
fn reconfigure(s: &Server, tables: &str, storage: &str) {
    let path = s.config_file();
    let old = std::fs::read_to_string(&path).unwrap();
    let base = &old[..old.find("\n[").unwrap() + 1];
    std::fs::write(
        &path,
        format!("{base}{tables}\n[storage]\nroot = \"data\"\n{storage}"),
    )
    .unwrap();
    unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
}

/// The switches and the rate limits change on reload, not only identities and rules: read-only
/// on and off, deletes off and on, a read rate appearing and going.
fn switches_and_rate_limits_reload(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let d = push_blob(&mut c, "sw", b"before");
    let blob = format!("/v2/sw/blobs/{d}");
    let push = |data: &[u8]| {
        Client::connect(s.addr)
            .request(
                "POST",
                &format!("/v2/sw/blobs/uploads/?digest={}", sha256(data)),
                &[],
                data,
            )
            .status
    };
    reconfigure(&s, "", "read_only = true\n");
    wait_for("writes refused after read_only = true", || {
        push(b"ro") == 405
    });
    assert_eq!(Client::connect(s.addr).get(&blob).status, 200);

    reconfigure(&s, "", "delete_enabled = false\n");
    wait_for("writes accepted after read_only = false", || {
        push(b"rw") == 201
    });
    let r = Client::connect(s.addr).request("DELETE", &blob, &[], b"");
    assert_eq!(
        r.status, 405,
        "deletes still allowed after delete_enabled = false"
    );

    reconfigure(&s, "[limits]\nread_rps = 1\nburst = 1\n", "");
    wait_for("a second read within the second answered 429", || {
        let mut c = Client::connect(s.addr);
        c.get("/v2/").status == 200 && Client::connect(s.addr).get("/v2/").status == 429
    });
    reconfigure(&s, "", "");
    wait_for("reads unlimited again", || {
        (0..5).all(|_| Client::connect(s.addr).get("/v2/").status == 200)
    });
    let r = Client::connect(s.addr).request("DELETE", &blob, &[], b"");
    assert_eq!(
        r.status, 202,
        "deletes still refused after delete_enabled = true"
    );
}

/// `server.hsts_max_age` changes on reload (new connections carry the new value).
fn hsts_reloads(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::common::pki::Pki::new(dir.path());
    let extra = format!("hsts_max_age = \"8760h\"\n{}", pki.server_toml(None));
    let s = Server::start_in(dir, driver, &extra, "warn");
    let hsts = || {
        let mut conn =
            crate::common::pki::tls_connect(s.addr, pki.client_config(None, false)).unwrap();
        conn.client
            .get("/v2/")
            .header("strict-transport-security")
            .map(str::to_owned)
    };
    assert_eq!(hsts().as_deref(), Some("max-age=31536000"));
    let cfg = std::fs::read_to_string(s.config_file()).unwrap();
    std::fs::write(
        s.config_file(),
        cfg.replace("hsts_max_age = \"8760h\"", "hsts_max_age = \"1h\""),
    )
    .unwrap();
    unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
    wait_for("the new HSTS max-age after reload", || {
        hsts().as_deref() == Some("max-age=3600")
    });
}

on_both_drivers!(
    identities_and_policies_reload_under_load,
    switches_and_rate_limits_reload,
    hsts_reloads,
);
