use super::*;

fn d(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn image_with_layers(layers: &[String]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":3}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"a","digest":"{}","size":2}},"layers":[{}]}}"#,
        d(1),
        layers.join(",")
    )
}

#[test]
fn a_layer_listed_many_times_is_one_required_blob() {
    let m = image_with_layers(&vec![d(2); 4000]);
    let p = parse(m.as_bytes(), Some(OCI_MANIFEST)).unwrap();
    assert_eq!(
        p.required_blobs,
        vec![d(1).parse().unwrap(), d(2).parse().unwrap()]
    );
}

#[test]
fn too_many_descriptors_are_refused() {
    let m = image_with_layers(&vec![d(2); MAX_DESCRIPTORS + 1]);
    let e = parse(m.as_bytes(), Some(OCI_MANIFEST)).unwrap_err();
    assert_eq!(e.kind, crate::oci::ErrorKind::ManifestInvalid);
    assert!(e.message.contains("at most 4096"), "{}", e.message);
    assert!(
        parse(
            image_with_layers(&vec![d(2); MAX_DESCRIPTORS]).as_bytes(),
            Some(OCI_MANIFEST)
        )
        .is_ok()
    );
}

#[test]
fn image_manifest_lists_required_blobs() {
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
        "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":3}},
                  {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"{}","size":3}},
                  {{"mediaType":"x","digest":"{}","size":3,"urls":["https://x"]}}]}}"#,
        d(1),
        d(2),
        d(3),
        d(4)
    );
    let p = parse(m.as_bytes(), Some(OCI_MANIFEST)).unwrap();
    assert_eq!(p.kind, Kind::Image);
    assert_eq!(p.required_blobs.len(), 2);
    assert_eq!(
        p.artifact_type.as_deref(),
        Some("application/vnd.oci.image.config.v1+json")
    );
}

#[test]
fn mismatched_media_type_is_invalid() {
    let m = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
    let e = parse(m.as_bytes(), Some(OCI_MANIFEST)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ManifestInvalid);
    assert!(parse(m.as_bytes(), Some(OCI_INDEX)).is_ok());
}

#[test]
fn rejects_garbage_and_bad_descriptors() {
    assert!(parse(b"not json", None).is_err());
    assert!(parse(br#"{"schemaVersion":1}"#, None).is_err());
    let bad = r#"{"schemaVersion":2,"config":{"digest":"sha256:xyz","size":1},"layers":[]}"#;
    assert!(parse(bad.as_bytes(), None).is_err());
    let neg = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":-1}},"layers":[]}}"#,
        d(1)
    );
    assert!(parse(neg.as_bytes(), None).is_err());
}

#[test]
fn subject_is_extracted() {
    let m = format!(
        r#"{{"schemaVersion":2,"artifactType":"application/x-sig","config":{{"mediaType":"a","digest":"{}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}}}"#,
        d(1),
        d(9)
    );
    let p = parse(m.as_bytes(), None).unwrap();
    assert_eq!(p.subject.unwrap().to_string(), d(9));
    assert_eq!(p.artifact_type.as_deref(), Some("application/x-sig"));
}
