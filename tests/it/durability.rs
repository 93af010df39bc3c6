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
    assert_eq!(
        statuses.iter().filter(|&&st| st == 202).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&st| st == 202 || st == 416),
        "{statuses:?}"
    );
    let winner = &chunks[statuses.iter().position(|&st| st == 202).unwrap()];
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

/// A crash while a finished session's directory is being removed (or before its files exist)
/// leaves part of it behind; after the restart such a session is unknown, never a 500.
fn torn_upload_session_is_unknown_after_a_crash(driver: &str) {
    let mut s = Server::start(driver);
    let mut c = s.client();
    // A session has files once its first chunk arrived.
    let mut start = || {
        let loc = c
            .request("POST", "/v2/torn/blobs/uploads/", &[], b"")
            .header("Location")
            .unwrap()
            .to_owned();
        assert_eq!(c.request("PATCH", &loc, &[], b"x").status, 202);
        loc
    };
    let (no_data, no_state) = (start(), start());
    let dir = |loc: &str| {
        s.root()
            .join("uploads")
            .join(loc.rsplit('/').next().unwrap())
    };
    std::fs::remove_file(dir(&no_data).join("data")).unwrap();
    std::fs::remove_file(dir(&no_state).join("state")).unwrap();
    s.restart_hard();
    let mut c = s.client();
    for loc in [&no_data, &no_state] {
        for (method, body) in [("GET", &b""[..]), ("PATCH", b"x"), ("DELETE", b"")] {
            let r = c.request(method, loc, &[], body);
            assert_eq!(r.status, 404, "{method} {loc}");
            assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN", "{method} {loc}");
        }
    }
}

on_both_drivers!(
    torn_upload_session_is_unknown_after_a_crash,
    same_blob_and_tag_from_32_connections,
    racing_patches_on_one_upload_never_corrupt,
    client_vanishing_mid_upload_leaves_nothing_visible,
    upload_session_survives_kill_9,
);
