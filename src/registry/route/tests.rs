use super::*;
use crate::action::ACTIONS;

#[test]
fn every_action_has_its_own_index_and_name() {
    let d = format!("sha256:{}", "a".repeat(64));
    let id = "0b6f7a2e-4c1d-4e8f-9a3b-2c5d6e7f8a9b";
    let requests = [
        (Method::Get, "/v2/".to_owned(), String::new()),
        (Method::Get, format!("/v2/r/blobs/{d}"), String::new()),
        (Method::Delete, format!("/v2/r/blobs/{d}"), String::new()),
        (Method::Post, "/v2/r/blobs/uploads/".into(), String::new()),
        (
            Method::Post,
            "/v2/r/blobs/uploads/".into(),
            format!("mount={d}"),
        ),
        (
            Method::Patch,
            format!("/v2/r/blobs/uploads/{id}"),
            String::new(),
        ),
        (
            Method::Put,
            format!("/v2/r/blobs/uploads/{id}"),
            format!("digest={d}"),
        ),
        (
            Method::Get,
            format!("/v2/r/blobs/uploads/{id}"),
            String::new(),
        ),
        (
            Method::Delete,
            format!("/v2/r/blobs/uploads/{id}"),
            String::new(),
        ),
        (Method::Get, "/v2/r/manifests/v1".into(), String::new()),
        (Method::Put, "/v2/r/manifests/v1".into(), String::new()),
        (Method::Delete, "/v2/r/manifests/v1".into(), String::new()),
        (Method::Get, format!("/v2/r/referrers/{d}"), String::new()),
        (Method::Get, "/v2/r/tags/list".into(), String::new()),
        (Method::Get, "/v2/_catalog".into(), String::new()),
        (Method::Get, "/metrics".into(), String::new()),
        (Method::Get, "/healthz".into(), String::new()),
        (Method::Get, "/readyz".into(), String::new()),
        (Method::Post, "/token".into(), String::new()),
    ];
    assert_eq!(requests.len(), ACTIONS.len());
    for (i, (m, path, q)) in requests.iter().enumerate() {
        let a = route(*m, path, q).unwrap();
        assert_eq!((a.index(), a.name()), (i, ACTIONS[i]), "{path}?{q}");
    }
}

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn routes_every_endpoint() {
    assert_eq!(
        route(Method::Get, "/v2/", "").unwrap(),
        Action::GetApiVersion
    );
    assert_eq!(
        route(Method::Head, "/v2", "").unwrap().name(),
        "get-api-version"
    );
    assert_eq!(
        route(Method::Get, &format!("/v2/a/b/blobs/{D}"), "")
            .unwrap()
            .name(),
        "get-blob"
    );
    assert_eq!(
        route(Method::Delete, &format!("/v2/a/blobs/{D}"), "")
            .unwrap()
            .name(),
        "delete-blob"
    );
    assert_eq!(
        route(Method::Post, "/v2/a/blobs/uploads/", "")
            .unwrap()
            .name(),
        "start-upload"
    );
    let mono = route(
        Method::Post,
        "/v2/a/blobs/uploads/",
        &format!("digest={}", D.replace(':', "%3A")),
    )
    .unwrap();
    assert!(matches!(
        mono,
        Action::StartUpload {
            digest: Some(_),
            ..
        }
    ));
    let m = route(
        Method::Post,
        "/v2/a/blobs/uploads/",
        &format!("mount={D}&from=b%2Fc"),
    )
    .unwrap();
    assert!(matches!(m, Action::MountBlob { from: Some(ref f), .. } if f.as_str() == "b/c"));
    let id = crate::storage::random_id();
    assert_eq!(
        route(Method::Patch, &format!("/v2/a/blobs/uploads/{id}"), "")
            .unwrap()
            .name(),
        "update-upload"
    );
    assert_eq!(
        route(
            Method::Put,
            &format!("/v2/a/blobs/uploads/{id}"),
            &format!("digest={D}")
        )
        .unwrap()
        .name(),
        "complete-upload"
    );
    assert_eq!(
        route(Method::Get, &format!("/v2/a/blobs/uploads/{id}"), "")
            .unwrap()
            .name(),
        "get-upload"
    );
    assert_eq!(
        route(Method::Delete, &format!("/v2/a/blobs/uploads/{id}"), "")
            .unwrap()
            .name(),
        "cancel-upload"
    );
    assert_eq!(
        route(Method::Get, "/v2/a/manifests/latest", "")
            .unwrap()
            .name(),
        "get-manifest"
    );
    let put = route(
        Method::Put,
        &format!("/v2/a/manifests/{D}"),
        "tag=v1&tag=v2",
    )
    .unwrap();
    assert!(matches!(put, Action::PutManifest { ref tags, .. } if tags.len() == 2));
    assert_eq!(
        route(Method::Delete, "/v2/a/manifests/v1", "")
            .unwrap()
            .name(),
        "delete-manifest"
    );
    assert_eq!(
        route(
            Method::Get,
            &format!("/v2/a/referrers/{D}"),
            "artifactType=x%2By"
        )
        .unwrap()
        .name(),
        "get-referrers"
    );
    assert_eq!(
        route(Method::Get, "/v2/a/tags/list", "n=2&last=b")
            .unwrap()
            .name(),
        "list-tags"
    );
    assert_eq!(
        route(Method::Get, "/v2/_catalog", "n=1").unwrap().name(),
        "list-catalog"
    );
}

#[test]
fn query_tags_are_capped_and_deduplicated() {
    let q = |n: usize| {
        (0..n)
            .map(|i| format!("tag=t{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let ok = route(Method::Put, "/v2/a/manifests/latest", &q(MAX_QUERY_TAGS)).unwrap();
    assert_eq!(
        ok.tags().len(),
        MAX_QUERY_TAGS + 1,
        "the path tag and every query tag"
    );
    let e = route(
        Method::Put,
        "/v2/a/manifests/latest",
        &q(MAX_QUERY_TAGS + 1),
    )
    .unwrap_err();
    assert_eq!((e.kind, e.status()), (ErrorKind::ManifestInvalid, 400));
    let dup = route(
        Method::Put,
        "/v2/a/manifests/latest",
        "tag=x&tag=latest&tag=x",
    )
    .unwrap();
    let names: Vec<&str> = dup.tags().iter().map(|t| t.as_str()).collect();
    assert_eq!(names, ["latest", "x"]);
    let del = route(Method::Delete, "/v2/a/manifests/latest", "").unwrap();
    assert_eq!(del.tags().len(), 1);
    assert!(
        route(Method::Get, "/v2/a/manifests/latest", "")
            .unwrap()
            .tags()
            .is_empty()
    );
}

#[test]
fn repository_names_may_contain_endpoint_words() {
    let a = route(Method::Get, "/v2/blobs/manifests/manifests/v1", "").unwrap();
    assert!(
        matches!(a, Action::GetManifest { ref repository, .. } if repository.as_str() == "blobs/manifests")
    );
}

#[test]
fn rejects_traversal_and_bad_ids() {
    let e = route(Method::Get, "/v2/../etc/manifests/latest", "").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NameInvalid);
    let e = route(Method::Get, "/v2/a%2f..%2fb/manifests/latest", "").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NameInvalid);
    let e = route(Method::Get, "/v2/a/blobs/sha256:..%2f..", "").unwrap_err();
    assert_eq!(e.kind, ErrorKind::DigestInvalid);
    let e = route(Method::Patch, "/v2/a/blobs/uploads/..", "").unwrap_err();
    assert_eq!(e.kind, ErrorKind::BlobUploadUnknown);
    let e = route(
        Method::Put,
        &format!("/v2/a/blobs/uploads/{}", crate::storage::random_id()),
        "",
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DigestInvalid);
    assert_eq!(route(Method::Get, "/v3/", "").unwrap_err().status(), 404);
    assert_eq!(
        route(Method::Post, "/v2/a/manifests/x", "")
            .unwrap_err()
            .status(),
        405
    );
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%3Ab%2fc").as_deref(), Some("a:b/c"));
    assert_eq!(percent_decode("%zz"), None);
    assert_eq!(percent_decode("%"), None);
    assert_eq!(percent_decode("%ff"), None);
}
