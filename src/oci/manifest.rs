//! Manifest and index validation. The bytes are stored exactly as pushed; this only decides whether
//! they are acceptable and extracts what storage needs (referenced blobs, subject, referrer descriptor).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Digest;
use super::error::{ErrorKind, OciError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Whether a manifest lists blobs (image) or other manifests (index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Image,
    Index,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What a valid manifest tells storage.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub media_type: String,
    pub kind: Kind,
    /// Blobs that must already be in the repository (config and distributable layers).
    pub required_blobs: Vec<Digest>,
    /// Manifests an index points at.
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    /// `artifactType` for the referrers API (explicit, else the config media type).
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

fn invalid(msg: impl Into<String>) -> OciError {
    OciError::new(ErrorKind::ManifestInvalid, msg)
}

fn descriptor_digest(d: &RawDescriptor, what: &str) -> Result<Digest, OciError> {
    if d.size < 0 {
        return Err(invalid(format!("{what}: negative size")));
    }
    d.digest
        .parse()
        .map_err(|e| invalid(format!("{what}: invalid digest {:?}: {e}", d.digest)))
}

/// Layers a registry need not hold: non-distributable media types and layers fetched from `urls`.
fn is_external(d: &RawDescriptor) -> bool {
    let mt = d.media_type.as_deref().unwrap_or("");
    !d.urls.is_empty()
        || mt.contains(".nondistributable.")
        || mt == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
}

/// Strip parameters from a Content-Type value.
fn bare_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// Descriptors (layers, or an index's manifests) one manifest may list; more is refused with
/// `MANIFEST_INVALID`. Images have at most a few hundred layers; this bounds the work a push asks
/// of the registry.
pub const MAX_DESCRIPTORS: usize = 4096;

/// Validate `bytes` pushed with `content_type`.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, OciError> {
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    if raw.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let header = content_type.map(bare_type).filter(|t| !t.is_empty());
    let media_type = match (raw.media_type.as_deref(), header) {
        (Some(body), Some(h)) if body != h && kind_of(h).is_some() => {
            return Err(invalid(format!(
                "mediaType {body:?} does not match Content-Type {h:?}"
            )));
        }
        (Some(body), _) => body.to_owned(),
        (None, Some(h)) if kind_of(h).is_some() => h.to_owned(),
        (None, _) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, _) => OCI_MANIFEST.to_owned(),
    };
    let kind = kind_of(&media_type)
        .ok_or_else(|| invalid(format!("unsupported manifest media type {media_type:?}")))?;

    let listed =
        raw.layers.as_ref().map_or(0, Vec::len) + raw.manifests.as_ref().map_or(0, Vec::len);
    if listed > MAX_DESCRIPTORS {
        return Err(invalid(format!(
            "manifest lists {listed} descriptors; at most {MAX_DESCRIPTORS} are accepted"
        )));
    }
    let mut required_blobs: Vec<Digest> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut children = Vec::new();
    let mut artifact_type = raw.artifact_type.clone();
    match kind {
        Kind::Image => {
            let config = raw
                .config
                .as_ref()
                .ok_or_else(|| invalid("image manifest has no config"))?;
            let config_digest = descriptor_digest(config, "config")?;
            seen.insert(config_digest.clone());
            required_blobs.push(config_digest);
            if artifact_type.is_none() {
                artifact_type = config.media_type.clone();
            }
            let layers = raw
                .layers
                .as_ref()
                .ok_or_else(|| invalid("image manifest has no layers"))?;
            for (i, layer) in layers.iter().enumerate() {
                let d = descriptor_digest(layer, &format!("layers[{i}]"))?;
                // Each distinct blob once: a layer listed 4,000 times is one existence check.
                if !is_external(layer) && seen.insert(d.clone()) {
                    required_blobs.push(d);
                }
            }
            if raw.manifests.is_some() {
                return Err(invalid("image manifest must not have manifests"));
            }
        }
        Kind::Index => {
            let manifests = raw
                .manifests
                .as_ref()
                .ok_or_else(|| invalid("index has no manifests"))?;
            for (i, m) in manifests.iter().enumerate() {
                children.push(descriptor_digest(m, &format!("manifests[{i}]"))?);
            }
        }
    }
    let subject = raw
        .subject
        .as_ref()
        .map(|s| descriptor_digest(s, "subject"))
        .transpose()?;
    Ok(Parsed {
        media_type,
        kind,
        required_blobs,
        children,
        subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

/// The descriptor a referrer contributes to its subject's referrers index.
pub fn referrer_descriptor(parsed: &Parsed, digest: &Digest, size: u64) -> Vec<u8> {
    let mut v = serde_json::json!({
        "mediaType": parsed.media_type,
        "digest": digest.to_string(),
        "size": size,
    });
    if let Some(at) = &parsed.artifact_type {
        v["artifactType"] = serde_json::Value::String(at.clone());
    }
    if let Some(a) = &parsed.annotations {
        v["annotations"] = serde_json::to_value(a).expect("string map serializes");
    }
    serde_json::to_vec(&v).expect("json value serializes")
}

#[cfg(test)]
mod tests;
