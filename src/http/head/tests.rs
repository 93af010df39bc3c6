use super::*;

fn p(s: &str) -> Result<Option<(RequestHead, usize)>, HeadError> {
    parse(s.as_bytes(), &Limits::default())
}

#[test]
fn parses_a_simple_get() {
    let (h, n) = p("GET /v2/a/manifests/latest?x=1 HTTP/1.1\r\nHost: x\r\n\r\nEXTRA")
        .unwrap()
        .unwrap();
    assert_eq!(n, 52);
    assert_eq!(h.method, Method::Get);
    assert_eq!(h.path, "/v2/a/manifests/latest");
    assert_eq!(h.query, "x=1");
    assert_eq!(h.framing, Framing::None);
    assert!(!h.close);
}

#[test]
fn two_authorization_headers_are_refused() {
    let two =
        "GET /v2/ HTTP/1.1\r\nAuthorization: Basic YTpi\r\nauthorization: Basic YzpkZA==\r\n\r\n";
    assert_eq!(
        p(two).unwrap_err(),
        HeadError::Bad("duplicate Authorization")
    );
    let one = "GET /v2/ HTTP/1.1\r\nAuthorization: Basic YTpi\r\n\r\n";
    let (h, _) = p(one).unwrap().unwrap();
    assert_eq!(h.authorization.as_deref(), Some("Basic YTpi"));
}

#[test]
fn incomplete_head_needs_more() {
    assert!(p("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
}

#[test]
fn smuggling_defences() {
    let both = "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(p(both).unwrap_err().status(), 400);
    let dup = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(p(dup).unwrap_err().status(), 400);
    for bad in ["+5", "5,5", "0x5", "", "5 5", "-1", "99999999999999999999"] {
        let req = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(p(&req).unwrap_err().status(), 400, "{bad:?}");
    }
    let gzip = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    assert_eq!(p(gzip).unwrap_err().status(), 501);
    let two = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(p(two).unwrap_err().status(), 501);
    let ok = "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n";
    assert_eq!(p(ok).unwrap().unwrap().0.framing, Framing::Chunked);
}

#[test]
fn size_limits() {
    let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
    assert_eq!(p(&long_target).unwrap_err().status(), 414);
    let huge_target = format!("GET /{}", "a".repeat(20000));
    assert_eq!(p(&huge_target).unwrap_err().status(), 414);
    let big_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(17000));
    assert_eq!(p(&big_header).unwrap_err().status(), 431);
    let partial_big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(17000));
    assert_eq!(p(&partial_big).unwrap_err().status(), 431);
}

#[test]
fn connection_semantics() {
    assert!(p("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().0.close);
    assert!(
        !p("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap()
            .0
            .close
    );
    assert!(
        p("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap()
            .0
            .close
    );
    let e = p("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .unwrap()
        .unwrap()
        .0;
    assert!(e.expect_continue);
    assert_eq!(e.framing, Framing::Length(3));
}
