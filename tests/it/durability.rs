//! Concurrency and fault behaviour: many connections racing on one blob, tag and upload; clients that
//! vanish mid-upload; upload sessions that survive a kill -9 of the server.

use crate::common::*;

fn blob_file(s: &Server, d: &str) -> std::path::PathBuf {
    s.root().join("blobs/sha256").join(&d[7..9]).join(&d[7..])
}

fn temp_files(s: &Server) -> Vec<String> {
    std::fs::read_dir(s.root().join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp"))
        .collect()
}

fn same_blob_and_tag_from_32_connections(driver: &str) {
    let s = Server::start(driver);
    let layer: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let cfg = br#"{"os":"linux"}"#.to_vec();
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let (addr, layer, cfg) = (s.addr, layer.clone(), cfg.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let ld = push_blob(&mut c, "race", &layer);
                let cd = push_blob(&mut c, "race", &cfg);
                // Each client pushes its own manifest to the same tag.
                let mut m = image_manifest(&cd, cfg.len(), &[(&ld, layer.len())]);
                m.truncate(m.len() - 1);
                m.extend_from_slice(
                    format!(",\"annotations\":{{\"client\":\"{i}\"}}}}").as_bytes(),
                );
                let r = c.request(
                    "PUT",
                    "/v2/race/manifests/latest",
                    &[("Content-Type", OCI_MANIFEST)],
                    &m,
                );
                assert_eq!(r.status, 201);
                sha256(&m)
            })
        })
        .collect();
    let pushed: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut c = s.client();
    let ld = sha256(&layer);
    assert_eq!(
        std::fs::read(blob_file(&s, &ld)).unwrap(),
        layer,
        "one intact blob"
    );
    let tagged = c.get("/v2/race/manifests/latest");
    assert_eq!(tagged.status, 200);
    let td = sha256(&tagged.body);
    assert!(
        pushed.contains(&td),
        "the tag points at one of the pushed manifests"
    );
    assert_eq!(tagged.header("Docker-Content-Digest"), Some(td.as_str()));
    assert!(temp_files(&s).is_empty());
    let tags = std::fs::read_dir(s.root().join("repositories/race/_manifests/tags"))
        .unwrap()
        .count();
    assert_eq!(tags, 1, "no temp files left beside the tag");
}

fn racing_patches_on_one_upload_never_corrupt(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let loc = c
        .request("POST", "/v2/same/blobs/uploads/", &[], b"")
        .header("Location")
        .unwrap()
        .to_owned();
    // 16 clients try to append their own first chunk at offset 0: exactly one wins, the rest get
    // 416. The chunks differ, so a mix of two clients' bytes cannot pass for the winner's.
    let chunks: Vec<Vec<u8>> = (0..16u8)
        .map(|i| {
            (0..200_000u32)
                .map(|k| (k as u8) ^ i.wrapping_mul(37))
                .collect()
        })
        .collect();
    let threads: Vec<_> = chunks
        .iter()
        .map(|chunk| {
            let (addr, loc, chunk) = (s.addr, loc.clone(), chunk.clone());
            std::thread::spawn(move || {
                Client::connect(addr)
                    .request("PATCH", &loc, &[("Content-Range", "0-199999")], &chunk)
                    .status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winner = &chunks[one_winner(&statuses, 202, 416)];
    let d = sha256(winner);
    let r = c.request("PUT", &format!("{loc}?digest={d}"), &[], b"");
    assert_eq!(
        r.status, 201,
        "the session does not hold the winner's bytes alone"
    );
    assert_eq!(c.get(&format!("/v2/same/blobs/{d}")).body, *winner);
}

fn client_vanishing_mid_upload_leaves_nothing_visible(driver: &str) {
    let s = Server::start(driver);
    let data = vec![1u8; 500_000];
    let d = sha256(&data);
    {
        let mut c = s.client();
        c.send_raw(
            format!(
                "POST /v2/gone/blobs/uploads/?digest={d} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        );
        c.send_raw(&data[..200_000]);
        // The upload is under way (its temp file exists) before the client vanishes.
        wait_for("the upload's temp file created", || {
            !temp_files(&s).is_empty()
        });
    } // connection dropped
    // The server notices the close and removes the partial temp file.
    wait_for("the vanished upload's temp file removed", || {
        temp_files(&s).is_empty()
    });
    let mut c = s.client();
    assert_eq!(c.get(&format!("/v2/gone/blobs/{d}")).status, 404);
    assert!(!blob_file(&s, &d).exists());
    assert!(
        temp_files(&s).is_empty(),
        "partial data removed: {:?}",
        temp_files(&s)
    );
    // A vanished PATCH leaves the session consistent: status reports what was stored, and it completes.
    let loc = c
        .request("POST", "/v2/gone/blobs/uploads/", &[], b"")
        .header("Location")
        .unwrap()
        .to_owned();
    {
        let mut p = s.client();
        p.send_raw(
            format!(
                "PATCH {loc} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        );
        p.send_raw(&data[..100_000]);
    }
    // Until the server notices the close, the session is leased (status answers 416 or an older
    // offset); then it reports what was stored.
    wait_for(
        "the vanished PATCH's session released with its bytes",
        || {
            let st = c.get(&loc);
            st.status == 204 && st.header("Range") == Some("0-99999")
        },
    );
    let st = c.get(&loc);
    let end: usize = st.header("Range").unwrap()[2..].parse().unwrap();
    let have = end + 1;
    assert_eq!(
        have, 100_000,
        "every byte that reached the server is kept for resuming"
    );
    let r = c.request(
        "PATCH",
        &loc,
        &[("Content-Range", &format!("{have}-{}", data.len() - 1))],
        &data[have..],
    );
    assert_eq!(
        r.status,
        202,
        "have={have} {:?} {}",
        r.headers,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        c.request("PUT", &format!("{loc}?digest={d}"), &[], b"")
            .status,
        201
    );
    assert_eq!(c.get(&format!("/v2/gone/blobs/{d}")).body, data);
}

fn upload_session_survives_kill_9(driver: &str) {
    let mut s = Server::start(driver);
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 241) as u8).collect();
    let d = sha256(&data);
    let loc = {
        let mut c = s.client();
        let loc = c
            .request("POST", "/v2/resume/blobs/uploads/", &[], b"")
            .header("Location")
            .unwrap()
            .to_owned();
        assert_eq!(
            c.request(
                "PATCH",
                &loc,
                &[("Content-Range", "0-249999")],
                &data[..250_000]
            )
            .status,
            202
        );
        push_image(&mut c, "resume", "kept", b"committed before the crash");
        loc
    };
    s.restart_hard();
    let mut c = s.client();
    let st = c.get(&loc);
    assert_eq!((st.status, st.header("Range")), (204, Some("0-249999")));
    let r = c.request(
        "PUT",
        &format!("{loc}?digest={d}"),
        &[("Content-Range", "250000-399999")],
        &data[250_000..],
    );
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(c.get(&format!("/v2/resume/blobs/{d}")).body, data);
    assert_eq!(c.get("/v2/resume/manifests/kept").status, 200);
}

/// Sessions in the layout before one-file sessions (`uploads/<id>/` with `data` and a CRC-checked
/// `state`), as an upgrade finds them: one with both files resumes where it was and completes
/// (moved to its one file on the way); one torn by a crash (no `data`, or no `state`) is unknown,
/// never a 500; one of another repository is unknown here.
fn upload_sessions_of_the_previous_layout_resume_or_are_unknown(driver: &str) {
    let s = Server::start(driver);
    let legacy = |n: u32, repo: &str, data: Option<&[u8]>, state: bool| {
        let id = format!("0000{n:04x}-0000-4000-8000-000000000000");
        let dir = s.root().join("uploads").join(&id);
        std::fs::create_dir(&dir).unwrap();
        if let Some(data) = data {
            std::fs::write(dir.join("data"), data).unwrap();
        }
        if state {
            let body = format!("wharf-upload-v1\n{repo}\nsha256\n");
            let crc = crc32fast::hash(body.as_bytes());
            std::fs::write(dir.join("state"), format!("{body}{crc:08x}\n")).unwrap();
        }
        (format!("/v2/torn/blobs/uploads/{id}"), dir)
    };
    let (whole, whole_dir) = legacy(1, "torn", Some(b"first half "), true);
    let (no_data, _) = legacy(2, "torn", None, true);
    let (no_state, _) = legacy(3, "torn", Some(b"x"), false);
    let (elsewhere, _) = legacy(4, "other", Some(b"x"), true);
    let mut c = s.client();
    for loc in [&no_data, &no_state, &elsewhere] {
        for (method, body) in [("GET", &b""[..]), ("PATCH", b"x"), ("DELETE", b"")] {
            let r = c.request(method, loc, &[], body);
            assert_eq!(r.status, 404, "{method} {loc}");
            assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN", "{method} {loc}");
        }
    }
    let st = c.get(&whole);
    assert_eq!((st.status, st.header("Range")), (204, Some("0-10")));
    assert!(!whole_dir.exists(), "moved to the one-file layout");
    assert_eq!(c.request("PATCH", &whole, &[], b"second half").status, 202);
    let d = sha256(b"first half second half");
    let r = c.request("PUT", &format!("{whole}?digest={d}"), &[], b"");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        c.get(&format!("/v2/torn/blobs/{d}")).body,
        b"first half second half"
    );
}

on_both_drivers!(
    upload_sessions_of_the_previous_layout_resume_or_are_unknown,
    same_blob_and_tag_from_32_connections,
    racing_patches_on_one_upload_never_corrupt,
    client_vanishing_mid_upload_leaves_nothing_visible,
    upload_session_survives_kill_9,
);

/// One completed system call from an `strace -f -y` trace: its name, the quoted paths among its
/// arguments, the path of a descriptor argument (`-y` prints `fd</path>`), and whether it succeeded.
#[derive(Debug)]
struct Call {
    name: String,
    quoted: Vec<String>,
    fd_path: Option<String>,
    line: String,
}

/// The calls of a trace in the order they completed (an `<unfinished ...>` call completes at its
/// `<... resumed>` line).
fn completed_calls(trace: &str) -> Vec<Call> {
    let mut pending: std::collections::HashMap<String, String> = Default::default();
    let mut out = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.trim_start().split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim_start();
        let full = if let Some(start) = rest.strip_suffix("<unfinished ...>") {
            pending.insert(pid.to_owned(), start.to_owned());
            continue;
        } else if rest.starts_with("<... ") {
            let Some(start) = pending.remove(pid) else {
                continue;
            };
            let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
            format!("{start}{tail}")
        } else {
            rest.to_owned()
        };
        let Some((name, args)) = full.split_once('(') else {
            continue;
        };
        // The result follows the last "= " (strace pads with spaces); failed calls ("= -1
        // ENOENT ...") change nothing.
        match full.rsplit_once("= ") {
            Some((_, result)) if !result.starts_with(['-', '?']) => {}
            _ => continue,
        }
        let quoted: Vec<String> = args
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        let fd_path = args
            .split_once('<')
            .and_then(|(_, p)| p.split_once('>'))
            .map(|(p, _)| p.to_owned());
        out.push(Call {
            name: name.to_owned(),
            quoted,
            fd_path,
            line: full.clone(),
        });
    }
    out
}

/// The missing-fsync detector (issue 22): kill -9 keeps the page cache, so only the system calls
/// can show that every commit is durable before it is visible. wharf runs under `strace` on the
/// epoll driver (every file call is then a system call; io_uring's would not be traced) while a
/// monolithic push, a chunked upload, a manifest with a tag, a conditional tag move and a tag
/// delete go through it. Then, in completion order: every rename into `blobs/` or
/// `repositories/` renames a file whose fsync completed before, and is followed by an fsync of
/// the destination's directory; every file and directory created there is followed by an fsync
/// of its parent. (That the answer waits for those fsyncs is the code's order; a trace cannot
/// tie a system call to a response.) Broken on purpose: without the temp file's fsync in
/// `prepare_replacement` the tag and revision renames are reported; without a tag update's
/// directory fsync, the tag's creation is.
#[test]
fn every_commit_is_fsynced_in_order() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nport = 0\nthreads = 2\n[storage]\nroot = \"{}\"\n",
            root.display()
        ),
    )
    .unwrap();
    let trace = dir.path().join("trace");
    let mut strace = std::process::Command::new(tool("strace"))
        .args(["-f", "-qq", "-y", "-s", "4096", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat,openat,unlink,unlinkat",
        ])
        .arg(wharf_bin())
        .args(["serve", "-c"])
        .arg(&cfg)
        .env("WHARF_IO_DRIVER", "epoll")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(strace.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("driver=epoll"), "{line:?}");
    let addr: std::net::SocketAddr = line
        .split("://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("wharf did not start under strace: {line:?}"))
        .parse()
        .unwrap();
    let mut c = Client::connect(addr);
    let d1 = push_image(&mut c, "dur/app", "v1", b"first layer");
    // A chunked upload over the pipelined path (more than 1 MiB per request).
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let loc = start_upload(&mut c, "dur/app");
    let r = c.request("PATCH", &loc, &[], &big[..2_000_000]);
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_owned();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c.request(
        "PUT",
        &format!("{loc}{sep}digest={}", sha256(&big)),
        &[],
        &big[2_000_000..],
    );
    assert_eq!(r.status, 201);
    let d2 = push_image(&mut c, "dur/app", "v2", b"second layer");
    let m2 = c.get("/v2/dur/app/manifests/v2").body;
    let r = c.request(
        "PUT",
        "/v2/dur/app/manifests/v1",
        &[
            ("Content-Type", OCI_MANIFEST),
            ("If-Match", &format!("\"{d1}\"")),
        ],
        &m2,
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        c.request("DELETE", "/v2/dur/app/manifests/v2", &[], b"")
            .status,
        202
    );
    assert_eq!(c.get(&format!("/v2/dur/app/manifests/{d2}")).status, 200);
    // Stop the server (strace's child) and let strace write out the trace.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id())).unwrap();
    let server: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: a plain signal to the server process this test started.
    unsafe { libc::kill(server, libc::SIGKILL) };
    strace.wait().unwrap();

    let calls = completed_calls(&std::fs::read_to_string(&trace).unwrap());
    let root = root.display().to_string();
    let inside = |p: &str| {
        p.starts_with(&format!("{root}/blobs/")) || p.starts_with(&format!("{root}/repositories/"))
    };
    let parent = |p: &str| p.rsplit_once('/').map(|(d, _)| d.to_owned()).unwrap();
    let synced_after = |i: usize, path: &str| {
        calls[i + 1..].iter().any(|c| {
            matches!(c.name.as_str(), "fsync" | "fdatasync") && c.fd_path.as_deref() == Some(path)
        })
    };
    let mut fsynced = std::collections::HashSet::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (i, call) in calls.iter().enumerate() {
        match call.name.as_str() {
            "fsync" | "fdatasync" => {
                fsynced.extend(call.fd_path.clone());
            }
            "rename" | "renameat" | "renameat2" if call.quoted.len() == 2 => {
                let (from, to) = (&call.quoted[0], &call.quoted[1]);
                if !inside(to) {
                    continue;
                }
                checked += 1;
                if !fsynced.contains(from) {
                    problems.push(format!(
                        "renamed before its data was fsynced: {}",
                        call.line
                    ));
                }
                if !synced_after(i, &parent(to)) {
                    problems.push(format!("directory never fsynced after: {}", call.line));
                }
            }
            "mkdir" | "mkdirat" | "openat" => {
                let Some(path) = call.quoted.first() else {
                    continue;
                };
                let created = call.name != "openat" || call.line.contains("O_CREAT");
                if created && inside(path) && !synced_after(i, &parent(path)) {
                    problems.push(format!(
                        "created, parent never fsynced after: {}",
                        call.line
                    ));
                }
            }
            _ => {}
        }
    }
    // Blobs (3 + 2 + the chunked one + 2 manifests), revisions, tags: the detector saw them.
    assert!(checked >= 10, "only {checked} commits traced:\n{calls:#?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
