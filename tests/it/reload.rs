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
    // Settings that need a restart are reported, and the rest still applies.
    let moved = std::fs::read_to_string(s.config_file())
        .unwrap()
        .replace("port = 0", "port = 1");
    std::fs::write(s.config_file(), moved).unwrap();
    s.wait_for_log("needs a restart");

    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 20);
}

on_both_drivers!(identities_and_policies_reload_under_load);
