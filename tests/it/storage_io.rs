//! A worker that never blocks or silently dies (issue 16): races between tag updates and manifest
//! deletes, upload ranges that overflow, oversized manifests refused from their head, the blocking
//! pool, the log queue, panics in tasks (through the test-only fault hooks), and large pushes written
//! around the page cache.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;

// On the S3 backend, too: pushed parts are hashed on the bulk lane.
on_s3!(pushed_bodies_are_hashed_on_low_priority_threads);

on_both_drivers!(
    a_manifest_delete_racing_a_tag_update_never_deletes_the_fresh_tag,
    an_upload_range_whose_length_overflows_is_refused,
    an_oversized_manifest_is_refused_from_its_head_and_the_client_reads_413,
    file_operations_run_on_the_blocking_pool,
    pushed_bodies_are_hashed_on_low_priority_threads,
    a_stderr_nobody_reads_never_stops_answers,
    a_panic_in_a_connection_closes_only_that_connection,
    a_panic_in_a_worker_task_ends_the_process_with_status_70,
    upload_sessions_are_capped_per_client_and_in_total_and_expire_when_idle,
    many_unused_upload_sessions_stay_bounded_and_leave_memory,
    large_pushes_are_written_around_the_page_cache,
    the_server_runs_without_transparent_huge_pages,
);

fn put_manifest(c: &mut Client, reference: &str, m: &[u8]) -> u16 {
    c.request(
        "PUT",
        &format!("/v2/race/app/manifests/{reference}"),
        &[("Content-Type", OCI_MANIFEST)],
        m,
    )
    .status
}

/// DELETE of manifest A (tagged `t`) and PUT of manifest B as `t`, at the same moment, many
/// times: whichever order they land in, `t` ends up at B. (A delete that removes the tags it
/// listed without holding them would remove `t` after it moved to B; A is large so that the
/// delete spends a while between listing and removing, reading it for its subject.)
fn a_manifest_delete_racing_a_tag_update_never_deletes_the_fresh_tag(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = push_blob(&mut c, "race/app", cfg);
    let ld = push_blob(&mut c, "race/app", b"layer");
    let mut deleter = s.client();
    let mut tagger = s.client();
    for i in 0..100 {
        let a = numbered_manifest(&cd, cfg.len(), &ld, 2 * i, 3 << 20);
        let b = numbered_manifest(&cd, cfg.len(), &ld, 2 * i + 1, 0);
        assert_eq!(put_manifest(&mut c, "t", &a), 201);
        // B stored first, so the racing PUT only moves the tag.
        assert_eq!(put_manifest(&mut c, &sha256(&b), &b), 201);
        let start = std::sync::Barrier::new(2);
        let (deleted, tagged) = std::thread::scope(|sc| {
            let del = sc.spawn(|| {
                start.wait();
                deleter
                    .request(
                        "DELETE",
                        &format!("/v2/race/app/manifests/{}", sha256(&a)),
                        &[],
                        b"",
                    )
                    .status
            });
            let tag = sc.spawn(|| {
                start.wait();
                put_manifest(&mut tagger, "t", &b)
            });
            (del.join().unwrap(), tag.join().unwrap())
        });
        assert_eq!(tagged, 201, "round {i}");
        // 202, or 409 when the delete saw the tag move between its authorization and its check.
        assert!(
            matches!(deleted, 202 | 409),
            "round {i}: delete answered {deleted}"
        );
        let r = c.request("HEAD", "/v2/race/app/manifests/t", &[], b"");
        assert_eq!(r.status, 200, "round {i}: the fresh tag t was deleted");
        assert_eq!(r.header("docker-content-digest"), Some(sha256(&b).as_str()));
    }
}

/// `Content-Range: 0-18446744073709551615` with `Content-Length: 0`: the range's length does not
/// fit in 64 bits, so it cannot match any body (it was once computed with a wrapping add).
fn an_upload_range_whose_length_overflows_is_refused(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let loc = start_upload(&mut c, "ranges/app");
    let r = c.request(
        "PATCH",
        &loc,
        &[("Content-Range", "0-18446744073709551615")],
        b"",
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "BLOB_UPLOAD_INVALID");
    // The session is untouched: a proper chunk still lands at 0.
    let r = c.request("PATCH", &loc, &[("Content-Range", "0-2")], b"abc");
    assert_eq!(r.status, 202);
    assert_eq!(r.header("range"), Some("0-2"));
}

/// A manifest PUT declaring more than `global.max_manifest_size` is answered 413 from its head,
/// and a client that writes the whole body before reading (Python's http.client) still reads it.
fn an_oversized_manifest_is_refused_from_its_head_and_the_client_reads_413(driver: &str) {
    let s = Server::start_with(driver, "[global]\nmax_manifest_size = 1024\n");
    // Without 100-continue, the whole body on the wire before the response is read.
    let script = r#"
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=20)
c.request("PUT", "/v2/big/app/manifests/t", body=b"{" + b" " * (8 << 20) + b"}",
          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
r = c.getresponse()
print(r.status, r.read().decode())
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &s.addr.ip().to_string(),
            &s.addr.port().to_string(),
        ])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("413 ") && stdout.contains("SIZE_INVALID"),
        "stdout {stdout:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // From the head alone: the 413 arrives though the body never comes.
    let mut raw = std::net::TcpStream::connect(s.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"PUT /v2/big/app/manifests/t HTTP/1.1\r\nHost: t\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 5000\r\n\r\n{").unwrap();
    let mut got = [0u8; 64];
    let n = raw.read(&mut got).unwrap();
    assert!(
        got[..n].starts_with(b"HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&got[..n])
    );
}

/// Pushes and pulls go through the blocking pool (its job counter moves) under both drivers, and
/// its size and bound are visible.
fn file_operations_run_on_the_blocking_pool(driver: &str) {
    let s = Server::start_with(driver, "[storage]\nblocking_threads = 3\n");
    let mut c = s.client();
    let before = sample(
        &c.get("/metrics").body_text(),
        "wharf_blocking_jobs_total{lane=\"io\"}",
    )
    .unwrap();
    push_image(&mut c, "pool/app", "v1", b"layer bytes");
    assert_eq!(c.get("/v2/pool/app/manifests/v1").status, 200);
    let text = c.get("/metrics").body_text();
    let after = sample(&text, "wharf_blocking_jobs_total{lane=\"io\"}").unwrap();
    assert!(after >= before + 6.0, "{before} -> {after}");
    assert_eq!(
        sample(&text, "wharf_blocking_threads{lane=\"io\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "wharf_blocking_queue_capacity{lane=\"io\"}"),
        Some(192.0)
    );
    assert_eq!(
        sample(&text, "wharf_blocking_panics_total{lane=\"io\"}"),
        Some(0.0)
    );
}

/// Large pushed bodies are hashed on the bulk lane (into a file or into the bucket's parts),
/// whose threads (one per worker) run at nice 10 while the workers and io threads keep the normal priority: a core busy hashing pushes still
/// serves its worker's requests first (loadtest/headofline.sh measures the effect).
fn pushed_bodies_are_hashed_on_low_priority_threads(driver: &str) {
    let s = Server::start(driver); // two workers
    let mut c = s.client();
    let bulk_jobs = |c: &mut Client| {
        sample(
            &c.get("/metrics").body_text(),
            "wharf_blocking_jobs_total{lane=\"bulk\"}",
        )
        .unwrap()
    };
    let before = bulk_jobs(&mut c);
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    push_blob(&mut c, "bulk/app", &data);
    assert!(
        bulk_jobs(&mut c) >= before + 3.0,
        "3 MiB were not hashed on the bulk lane"
    );
    assert_eq!(
        sample(
            &c.get("/metrics").body_text(),
            "wharf_blocking_threads{lane=\"bulk\"}"
        ),
        Some(2.0)
    );
    // Field 19 of /proc/<pid>/task/<tid>/stat is the thread's nice value.
    let mut nice = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", s.pid())).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap();
        let stat = std::fs::read_to_string(task.join("stat")).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let value: i32 = after_name.split(' ').nth(16).unwrap().parse().unwrap();
        nice.insert(comm.trim().to_string(), value);
    }
    assert_eq!(nice.get("wharf-bulk-0"), Some(&10), "{nice:?}");
    assert_eq!(nice.get("wharf-bulk-1"), Some(&10), "{nice:?}");
    assert_eq!(nice.get("wharf-io-0"), Some(&0), "{nice:?}");
    let workers: Vec<_> = nice
        .iter()
        .filter(|(n, _)| n.starts_with("wharf-worker"))
        .collect();
    assert!(
        !workers.is_empty() && workers.iter().all(|(_, v)| **v == 0),
        "{nice:?}"
    );
}

/// The access log goes through a bounded queue to a writer thread: with stderr a pipe nobody
/// reads (64 KiB, full after a few hundred lines), requests are still answered, and the lines
/// that did not fit are counted, not waited for.
fn a_stderr_nobody_reads_never_stops_answers(driver: &str) {
    let (_child, addr, _dir) = spawn_wharf(driver, &[("RUST_LOG", "info")], None);
    let mut c = Client::connect(addr);
    // More than the queue (8192 lines) and the pipe hold.
    for i in 0..12000 {
        let r = c.get_within(&format!("/v2/?n={i}"), Duration::from_secs(10));
        assert_eq!(r.expect("answered").status, 200, "request {i}");
    }
    let text = c.get("/metrics").body_text();
    let dropped = sample(&text, "wharf_log_lines_dropped_total").unwrap();
    assert!(
        dropped > 0.0,
        "the queue and pipe cannot hold 12000 lines: {text}"
    );
}

/// A wharf process started by hand; killed when dropped (a failing assertion leaks nothing).
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start wharf by hand with `env`, its stderr into `log` (else a pipe nobody reads); its process
/// (killed on drop), address and directory.
fn spawn_wharf(
    driver: &str,
    env: &[(&str, &str)],
    log: Option<&str>,
) -> (Spawned, std::net::SocketAddr, tempfile::TempDir) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(&cfg, "[server]\nport = 0\n[storage]\nroot = \"data\"\n").unwrap();
    let stderr = match log {
        Some(name) => std::fs::File::create(dir.path().join(name)).unwrap().into(),
        None => std::process::Stdio::piped(),
    };
    let mut cmd = std::process::Command::new(wharf_bin());
    cmd.args(["serve", "-c"])
        .arg(&cfg)
        .env("WHARF_IO_DRIVER", driver);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Spawned(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("wharf did not start: {line:?}"))
        .parse()
        .unwrap();
    (child, addr, dir)
}

/// Start wharf with the fault hooks on (the test build has them; `WHARF_FAULT_HOOKS=1` arms them).
fn start_with_fault_hooks(driver: &str) -> (Spawned, std::net::SocketAddr, tempfile::TempDir) {
    spawn_wharf(driver, &[("WHARF_FAULT_HOOKS", "1")], Some("wharf.log"))
}

/// A panic in one connection's task closes that connection; the worker and every other
/// connection go on, and the panic is counted.
fn a_panic_in_a_connection_closes_only_that_connection(driver: &str) {
    let (mut child, addr, _dir) = start_with_fault_hooks(driver);
    let mut other = Client::connect(addr);
    assert_eq!(other.get("/v2/").status, 200);
    let mut c = Client::connect(addr);
    c.send_raw(b"GET /_fault/panic-connection HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        c.closes_within(Duration::from_secs(5)),
        "the panicking connection closes"
    );
    assert_eq!(other.get("/v2/").status, 200, "another connection goes on");
    for _ in 0..4 {
        assert_eq!(Client::connect(addr).get("/v2/").status, 200);
    }
    // Counted right after the unwinding closed the socket, possibly on the other worker's clock.
    let panics = |c: &mut Client| {
        sample(
            &c.get("/metrics").body_text(),
            "wharf_connection_panics_total",
        )
    };
    wait_for("the panic to be counted", || {
        panics(&mut other) == Some(1.0)
    });
    assert!(child.0.try_wait().unwrap().is_none(), "still running");
}

/// A panic in a task the worker depends on ends the process with status 70 and says why.
fn a_panic_in_a_worker_task_ends_the_process_with_status_70(driver: &str) {
    let (mut child, addr, dir) = start_with_fault_hooks(driver);
    let mut c = Client::connect(addr);
    c.send_raw(b"GET /_fault/panic-worker HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut status = None;
    wait_for("wharf to exit", || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(70));
    let log = std::fs::read_to_string(dir.path().join("wharf.log")).unwrap();
    assert!(
        log.contains(
            "wharf: fatal: a fault-hook task panicked (fault hook: panic in a worker task)"
        ),
        "{log}"
    );
}

fn post(c: &mut Client) -> Resp {
    c.request("POST", "/v2/caps/app/blobs/uploads/", &[], b"")
}

fn open_sessions(c: &mut Client) -> f64 {
    sample(&c.get("/metrics").body_text(), "wharf_upload_sessions_open").unwrap()
}

/// A client past `max_upload_sessions_per_client` gets 429 with `Retry-After` while another
/// client still gets sessions until `max_upload_sessions`; after `upload_idle_timeout` unused
/// sessions are gone from memory (an empty one is unknown, one with data continues from disk)
/// and POSTs succeed again.
fn upload_sessions_are_capped_per_client_and_in_total_and_expire_when_idle(driver: &str) {
    let s = Server::start_with(
        driver,
        "[limits]\nmax_upload_sessions = 30\nmax_upload_sessions_per_client = 20\nupload_idle_timeout = \"1s\"\n",
    );
    let mut c = s.client();
    let mut first = Vec::new();
    for _ in 0..20 {
        let r = post(&mut c);
        assert_eq!(r.status, 202);
        first.push(r.header("location").unwrap().to_owned());
    }
    let r = post(&mut c);
    assert_eq!(r.status, 429, "{}", r.body_text());
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.body_text().contains("max_upload_sessions_per_client"),
        "{}",
        r.body_text()
    );
    // Another client: 10 more until the server-wide cap.
    let mut other = Client::over(Box::new(connect_from("127.0.0.2", s.addr)));
    for _ in 0..10 {
        assert_eq!(post(&mut other).status, 202);
    }
    let r = post(&mut other);
    assert_eq!(r.status, 429);
    assert!(
        r.body_text().contains("limits.max_upload_sessions)"),
        "{}",
        r.body_text()
    );
    assert_eq!(open_sessions(&mut c), 30.0);
    // One session gets data: it leaves memory too, but continues from disk.
    let with_data = first.pop().unwrap();
    let r = c.request("PATCH", &with_data, &[], b"abc");
    assert_eq!(r.status, 202);
    wait_for("idle sessions to leave memory", || {
        open_sessions(&mut c) == 0.0
    });
    let r = c.get(&first[0]);
    assert_eq!(r.status, 404, "an empty idle session is forgotten");
    assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");
    let r = c.request("PATCH", &with_data, &[("Content-Range", "3-5")], b"def");
    assert_eq!(r.status, 202, "{}", r.body_text());
    assert_eq!(r.header("range"), Some("0-5"));
    assert_eq!(post(&mut c).status, 202);
}

/// 100,000 POSTs that are never used (the issue's figure): at most `max_upload_sessions` (the
/// default 10,000) are held, RSS stays under the documented bound meanwhile, the rest are refused,
/// and once the idle timeout passes the table is empty and memory is back near where it was.
fn many_unused_upload_sessions_stay_bounded_and_leave_memory(driver: &str) {
    // The default global cap (10,000); the per-client cap off, so one client reaches it.
    let s = Server::start_with(
        driver,
        "[limits]\nmax_upload_sessions_per_client = 0\nupload_idle_timeout = \"3s\"\n",
    );
    let mut c = s.client();
    // Warm the connection, allocator and metrics before the baseline.
    for _ in 0..50 {
        assert_eq!(post(&mut c).status, 202);
    }
    wait_for("warm-up sessions to expire", || {
        open_sessions(&mut c) == 0.0
    });
    let idle = rss_kib(s.pid());
    let (mut accepted, mut refused, mut peak) = (0, 0, 0);
    for i in 0..100_000 {
        match post(&mut c).status {
            202 => accepted += 1,
            429 => refused += 1,
            other => panic!("POST answered {other}"),
        }
        if i % 10_000 == 9_999 {
            assert!(open_sessions(&mut c) <= 10_000.0);
            peak = peak.max(rss_kib(s.pid()).saturating_sub(idle));
        }
    }
    // 10,000 then refusals, unless the loop outlasted the idle timeout and early sessions expired
    // meanwhile: never more than the cap open at once.
    assert!(
        accepted >= 10_000 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    // docs/operations.md: 10,000 sessions are about 13 MiB; room for allocator slack.
    assert!(peak < 24 * 1024, "10,000 sessions grew RSS by {peak} KiB");
    wait_for("sessions to expire", || open_sessions(&mut c) == 0.0);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(s.pid()).saturating_sub(idle);
    assert!(
        after < 4 * 1024,
        "RSS stayed {after} KiB above idle after the sessions expired"
    );
}

/// Pages of `file` in the page cache now (`fincore`, util-linux).
fn resident_pages(file: &std::path::Path) -> usize {
    let out = std::process::Command::new("fincore")
        .args(["--noheadings", "--output", "PAGES"])
        .arg(file)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Large pushed blocks are written around the page cache (`O_DIRECT`) from an aligned copy, their
/// unaligned edges through it: a blob pushed in chunks that start and end anywhere reads back
/// byte for byte, nearly all of its bytes went the direct way (the metric), and before anyone
/// reads it most of its pages are not in the page cache (buffered writes leave every page there,
/// fsynced or not). A monolithic push goes the same way; a small blob stays on the page cache, and
/// so does everything with `storage.direct_writes = false`.
fn large_pushes_are_written_around_the_page_cache(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let direct = |c: &mut Client| {
        let text = c.get("/metrics").body_text();
        sample(&text, "wharf_direct_write_bytes_total").unwrap()
    };
    let pattern = |len: usize, seed: u32| -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    };
    let blob_file = |d: &str| s.root().join("blobs/sha256").join(&d[7..9]).join(&d[7..]);
    let before = direct(&mut c);
    let data = pattern((6 << 20) + 777, 1);
    let d = sha256(&data);
    let mut loc = start_upload(&mut c, "direct/app");
    let mut at = 0;
    for n in [100_001usize, 700_003, 1 << 20, (3 << 20) + 5] {
        let range = format!("{at}-{}", at + n - 1);
        let r = c.request(
            "PATCH",
            &loc,
            &[("Content-Range", &range)],
            &data[at..at + n],
        );
        assert_eq!(r.status, 202, "{}", r.body_text());
        loc = r.header("location").unwrap().to_owned();
        at += n;
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c.request("PUT", &format!("{loc}{sep}digest={d}"), &[], &data[at..]);
    assert_eq!(r.status, 201, "{}", r.body_text());
    let written = direct(&mut c) - before;
    assert!(
        written >= data.len() as f64 * 0.9,
        "{written} of {} bytes written around the page cache",
        data.len()
    );
    let (resident, pages) = (resident_pages(&blob_file(&d)), data.len().div_ceil(4096));
    assert!(
        resident * 4 < pages,
        "{resident} of the blob's {pages} pages are in the page cache"
    );
    let r = c.get(&format!("/v2/direct/app/blobs/{d}"));
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the blob read back differs");

    let big = pattern((9 << 20) + 3, 2);
    let before = direct(&mut c);
    let d = push_blob(&mut c, "direct/app", &big);
    assert!(direct(&mut c) - before >= big.len() as f64 * 0.9);
    let r = c.get(&format!("/v2/direct/app/blobs/{d}"));
    assert!(
        r.status == 200 && r.body == big,
        "the pushed blob read back differs"
    );

    let before = direct(&mut c);
    let d = push_blob(&mut c, "direct/app", &pattern(60_000, 3));
    assert_eq!(
        direct(&mut c),
        before,
        "a small blob went around the page cache"
    );
    assert_eq!(resident_pages(&blob_file(&d)), 60_000usize.div_ceil(4096));
}

/// The server turns transparent huge pages off for itself (its allocator would otherwise fault in
/// and zero 2 MiB for every new region it touches, and hold it): the kernel reports the process's
/// THP as disabled.
fn the_server_runs_without_transparent_huge_pages(driver: &str) {
    let s = Server::start(driver);
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("the kernel reports THP_enabled (Linux 5.0 or later)");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}
