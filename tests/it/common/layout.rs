//! Builds real OCI image layouts on disk (tar layers made by `tar`) for the client end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::sha256;

/// A blob written into a layout.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub size: usize,
    pub media_type: String,
    /// Digest of the uncompressed content (layers), for the config's `rootfs.diff_ids`.
    pub diff_id: String,
}

impl Blob {
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An OCI image layout directory.
pub struct Layout {
    pub dir: PathBuf,
    index: Vec<serde_json::Value>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            index: Vec::new(),
        }
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(&digest[7..])
    }

    pub fn add_blob(&self, data: &[u8], media_type: &str) -> Blob {
        let digest = sha256(data);
        std::fs::write(self.blob_path(&digest), data).unwrap();
        Blob {
            diff_id: digest.clone(),
            digest,
            size: data.len(),
            media_type: media_type.into(),
        }
    }

    /// A real gzip-compressed tar layer holding one file of `size` pseudo-random bytes.
    pub fn add_tar_layer(&self, name: &str, size: usize, seed: u32) -> Blob {
        let work = tempfile::tempdir().unwrap();
        let mut x = seed.wrapping_mul(2654435761).max(1);
        let content: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        std::fs::write(work.path().join(name), content).unwrap();
        let tar = work.path().join("layer.tar");
        let ok = Command::new("tar")
            .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(work.path())
            .arg(name)
            .status()
            .unwrap()
            .success();
        assert!(ok, "tar failed");
        let diff_id = sha256(&std::fs::read(&tar).unwrap());
        assert!(
            Command::new("gzip")
                .arg("-n")
                .arg(&tar)
                .status()
                .unwrap()
                .success(),
            "gzip failed"
        );
        let gz = std::fs::read(work.path().join("layer.tar.gz")).unwrap();
        Blob {
            diff_id,
            ..self.add_blob(&gz, "application/vnd.oci.image.layer.v1.tar+gzip")
        }
    }

    /// An image manifest over `layers` for one platform; returns the manifest blob.
    pub fn add_image(&self, layers: &[Blob], arch: &str) -> Blob {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.add_blob(
            &serde_json::to_vec(&config).unwrap(),
            "application/vnd.oci.image.config.v1+json",
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        self.add_blob(
            &serde_json::to_vec(&manifest).unwrap(),
            "application/vnd.oci.image.manifest.v1+json",
        )
    }

    /// An image index over `(manifest, arch)` pairs.
    pub fn add_index(&self, images: &[(Blob, &str)]) -> Blob {
        let manifests: Vec<serde_json::Value> = images
            .iter()
            .map(|(m, arch)| {
                let mut d = m.descriptor();
                d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
                d
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        self.add_blob(
            &serde_json::to_vec(&index).unwrap(),
            "application/vnd.oci.image.index.v1+json",
        )
    }

    /// Reference `blob` from `index.json` under `tag`.
    pub fn tag(&mut self, blob: &Blob, tag: &str) {
        let mut d = blob.descriptor();
        d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.index.push(d);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.index});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}
