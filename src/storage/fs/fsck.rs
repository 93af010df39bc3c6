//! `wharf fsck`: re-hash every blob and check every link (revisions, tags, layer links, referrers,
//! what manifests reference), reporting what is broken and, with `repair`, moving it to
//! `<root>/quarantine/<time>/` (same relative path) so nothing is destroyed and nothing broken is
//! served. Safe to run next to a serving registry.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Filesystem, FsckReport, Problem};
use crate::oci::manifest;
use crate::oci::{Digest, RepoName};

/// Temp files younger than this may belong to a write in progress.
const TEMP_AGE: Duration = Duration::from_secs(3600);

struct Checker<'a> {
    storage: &'a Filesystem,
    repair: bool,
    quarantine: PathBuf,
    report: FsckReport,
    out: &'a mut dyn super::Report,
}

impl Checker<'_> {
    /// Record a problem with the file at `path`, quarantining it when repairing.
    fn broken(&mut self, what: String, path: Option<&Path>) -> io::Result<()> {
        let mut quarantined = None;
        if self.repair
            && let Some(p) = path
        {
            let rel = p.strip_prefix(&self.storage.root).unwrap_or(p);
            let dest = self.quarantine.join(rel);
            super::fsio::ensure_dir_sync(dest.parent().expect("quarantine paths have a parent"))?;
            match fs::rename(p, &dest) {
                Ok(()) => quarantined = Some(dest.display().to_string()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.out.line(match &quarantined {
            Some(q) => format!("{what} (moved to {q})"),
            None => what.clone(),
        });
        self.report.problems.push(Problem { what, quarantined });
        Ok(())
    }

    fn stray(&mut self, path: &Path) -> io::Result<()> {
        let old = fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > TEMP_AGE);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // In-flight temp files and the collector's parked files are normal while serving.
        if (name.starts_with(".tmp-") || name.starts_with(".gc-")) && !old {
            return Ok(());
        }
        self.broken(format!("stray file {}", path.display()), Some(path))
    }
}

fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(super::dir_entries(dir)?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The digest a `<dir>/<alg>/<hex>` path names.
fn digest_at(p: &Path) -> Option<Digest> {
    let alg = name_of(p.parent()?);
    format!("{alg}:{}", name_of(p)).parse().ok()
}

/// Hash a file's content with the digest's algorithm.
fn hash_file(path: &Path, d: &Digest) -> io::Result<(Digest, u64)> {
    let mut f = fs::File::open(path)?;
    let mut h = d.algorithm().hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finish(), n))
}

impl Filesystem {
    /// Check the whole store; `out` receives one line per problem, and progress.
    pub(crate) fn fsck(&self, repair: bool, out: &mut dyn super::Report) -> io::Result<FsckReport> {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut c = Checker {
            storage: self,
            repair,
            quarantine: self.root.join("quarantine").join(stamp.to_string()),
            report: FsckReport::default(),
            out,
        };
        self.check_blobs(&mut c)?;
        let repos = self.repositories()?;
        let total = repos.len() as u64;
        for (i, repo) in repos.iter().enumerate() {
            c.out.progress("checking repositories", i as u64 + 1, total);
            self.check_repository(&mut c, repo)?;
        }
        Ok(c.report)
    }

    fn check_blobs(&self, c: &mut Checker) -> io::Result<()> {
        let total = super::count_blob_files(&self.root);
        let mut seen = 0;
        for alg_dir in files(&self.root.join("blobs"))? {
            let alg = name_of(&alg_dir);
            for prefix_dir in files(&alg_dir)? {
                for path in files(&prefix_dir)? {
                    seen += 1;
                    c.out.progress("hashing blobs", seen, total);
                    let named = format!("{alg}:{}", name_of(&path)).parse::<Digest>();
                    let Some(d) = named.ok().filter(|d| d.hex()[..2] == name_of(&prefix_dir))
                    else {
                        c.stray(&path)?;
                        continue;
                    };
                    let (actual, len) = match hash_file(&path, &d) {
                        Ok(x) => x,
                        // Collected while we looked.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    c.report.blobs += 1;
                    c.report.bytes += len;
                    if actual != d {
                        c.broken(
                            format!("blob {d} is corrupt: its {len} bytes hash to {actual}"),
                            Some(&path),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_repository(&self, c: &mut Checker, repo: &RepoName) -> io::Result<()> {
        // Broken manifests are named by their tags too: that is what users pull.
        let mut tagged: std::collections::HashMap<Digest, Vec<String>> = Default::default();
        for path in files(&self.tags_dir(repo))? {
            if let Some(d) = fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<Digest>().ok())
            {
                tagged.entry(d).or_default().push(name_of(&path));
            }
        }
        let revisions = self.repo_dir(repo).join("_manifests").join("revisions");
        for alg_dir in files(&revisions)? {
            for path in files(&alg_dir)? {
                let Some(d) = digest_at(&path) else {
                    c.stray(&path)?;
                    continue;
                };
                c.report.manifests += 1;
                let name = match tagged.get(&d) {
                    Some(tags) => format!("{repo}@{d} (tagged {})", tags.join(", ")),
                    None => format!("{repo}@{d}"),
                };
                self.check_revision(c, repo, &d, &name, &path)?;
            }
        }
        for path in files(&self.tags_dir(repo))? {
            c.report.tags += 1;
            let tag = name_of(&path);
            if tag.starts_with('.') {
                c.stray(&path)?;
                continue;
            }
            let target = fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<Digest>().ok());
            match target {
                Some(d) if self.revision_link(repo, &d).exists() => {}
                Some(d) => c.broken(
                    format!("tag {repo}:{tag} points at manifest {d}, which is missing"),
                    Some(&path),
                )?,
                None => c.broken(
                    format!("tag {repo}:{tag} does not hold a digest"),
                    Some(&path),
                )?,
            }
        }
        for alg_dir in files(&self.repo_dir(repo).join("_layers"))? {
            for path in files(&alg_dir)? {
                match digest_at(&path) {
                    Some(d) if self.blob_path(&d).exists() => {}
                    Some(d) => c.broken(
                        format!("repository {repo} links blob {d}, which is missing"),
                        Some(&path),
                    )?,
                    None => c.stray(&path)?,
                }
            }
        }
        for alg_dir in files(&self.repo_dir(repo).join("_referrers"))? {
            for subject_dir in files(&alg_dir)? {
                for path in files(&subject_dir)? {
                    let name = name_of(&path);
                    let referrer = name
                        .split_once('-')
                        .and_then(|(a, h)| format!("{a}:{h}").parse::<Digest>().ok());
                    match referrer {
                        Some(r) if self.revision_link(repo, &r).exists() => {}
                        Some(r) => c.broken(
                            format!("referrer entry for manifest {repo}@{r}, which is missing"),
                            Some(&path),
                        )?,
                        None => c.stray(&path)?,
                    }
                }
            }
        }
        Ok(())
    }

    fn check_revision(
        &self,
        c: &mut Checker,
        repo: &RepoName,
        d: &Digest,
        name: &str,
        path: &Path,
    ) -> io::Result<()> {
        let media_type = fs::read_to_string(path).unwrap_or_default();
        let bytes = match fs::read(self.blob_path(d)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return c.broken(
                    format!("manifest {name}: its content is missing"),
                    Some(path),
                );
            }
            Err(e) => return Err(e),
        };
        if Digest::of(d.algorithm(), &bytes) != *d {
            // Reported (and quarantined) with the blobs; the revision goes too.
            return c.broken(
                format!("manifest {name}: its content is corrupt"),
                Some(path),
            );
        }
        let parsed = match manifest::parse(&bytes, Some(&media_type)) {
            Ok(p) => p,
            Err(e) => {
                return c.broken(format!("manifest {name} is not valid: {}", e.message), None);
            }
        };
        for b in &parsed.required_blobs {
            if !self.blob_path(b).exists() {
                c.broken(
                    format!("manifest {name} references blob {b}, which is missing (push the image again)"),
                    None,
                )?;
            } else if !self.layer_link(repo, b).exists() {
                c.broken(
                    format!("manifest {name} references blob {b}, which {repo} does not link"),
                    None,
                )?;
            }
        }
        for m in &parsed.children {
            if !self.revision_link(repo, m).exists() {
                c.broken(
                    format!("index {name} references manifest {m}, which is missing"),
                    None,
                )?;
            }
        }
        Ok(())
    }
}
