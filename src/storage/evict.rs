//! Size budgets of pull-through caches (`upstream.max_size`), the part both backends share:
//! grouping a repository's manifest revisions into images and choosing which to evict. Before
//! marking, the collector adds up the distinct blobs of the images cached under each budgeted
//! prefix and, while they exceed the budget, evicts the image pulled least recently (its tags and
//! the manifest revisions no remaining image uses; a blob still used by a remaining image stays
//! counted). The marking that follows no longer reaches the evicted images' blobs, so the sweep
//! removes them as it removes any unreferenced blob. An image pulled within the grace period is
//! never evicted. Evicting cached content is safe: a later pull fetches it from the upstream again.
//!
//! Each backend says where a revision and a tag live (`R`, `G`) and what time is (`T`: a file's
//! mtime, the store's clock), and carries out the plan.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use crate::oci::manifest::Parsed;
use crate::oci::{Digest, RepoName};

/// A manifest revision as the collector found it.
pub(crate) struct Revision<R, T> {
    pub key: R,
    /// `None`: unreadable; the image is evicted by its own bytes alone.
    pub parsed: Option<Parsed>,
    /// Its last pull (or its write, if later).
    pub last_pull: T,
}

/// One cached image: a top-level manifest of a repository, the tags on it, the manifest
/// revisions and the blobs it reaches.
pub(crate) struct Image<R, G, T> {
    pub repo: RepoName,
    pub digest: Digest,
    pub last_pull: T,
    pub tags: Vec<G>,
    pub revisions: Vec<R>,
    pub blobs: Vec<Digest>,
}

/// The images of one repository: every revision no other revision of it reaches as a child
/// (an index's platform manifests go with the index, and its last pull is theirs too).
pub(crate) fn images<R: Clone, G, T: Ord + Copy>(
    repo: &RepoName,
    revs: &HashMap<Digest, Revision<R, T>>,
    mut tags: HashMap<Digest, Vec<G>>,
) -> Vec<Image<R, G, T>> {
    let children: HashSet<&Digest> = revs
        .values()
        .filter_map(|r| r.parsed.as_ref())
        .flat_map(|p| p.children.iter())
        .collect();
    let mut images = Vec::new();
    for (digest, rev) in revs {
        if children.contains(digest) {
            continue;
        }
        let mut img = Image {
            repo: repo.clone(),
            digest: digest.clone(),
            last_pull: rev.last_pull,
            tags: tags.remove(digest).unwrap_or_default(),
            revisions: vec![rev.key.clone()],
            blobs: vec![digest.clone()],
        };
        if let Some(p) = &rev.parsed {
            img.blobs.extend(p.required_blobs.iter().cloned());
            for child in &p.children {
                img.blobs.push(child.clone());
                if let Some(c) = revs.get(child) {
                    img.revisions.push(c.key.clone());
                    img.last_pull = img.last_pull.max(c.last_pull);
                    if let Some(cp) = &c.parsed {
                        img.blobs.extend(cp.required_blobs.iter().cloned());
                    }
                }
            }
        }
        images.push(img);
    }
    images
}

/// One image to evict.
pub(crate) struct Eviction<R, G, T> {
    pub image: Image<R, G, T>,
    /// Its revisions that no image left uses (the others stay).
    pub unused_revisions: Vec<R>,
    /// Bytes of blobs no image left uses.
    pub freed: u64,
    /// The cache's bytes after it.
    pub total: u64,
}

/// What to evict under one budget, least recently pulled first, and the line that ends it early
/// when every image left was pulled within the grace period (pulled after `cutoff`).
pub(crate) fn plan<R: Clone + Hash + Eq, G, T: Ord + Copy>(
    prefix: &str,
    mut images: Vec<Image<R, G, T>>,
    size_of: impl Fn(&Digest) -> u64,
    budget: u64,
    cutoff: T,
) -> (Vec<Eviction<R, G, T>>, Option<String>) {
    let mut sizes: HashMap<Digest, (u64, usize)> = HashMap::new();
    let mut rev_users: HashMap<R, usize> = HashMap::new();
    for img in &images {
        for b in img.blobs.iter().collect::<HashSet<_>>() {
            sizes.entry(b.clone()).or_insert((size_of(b), 0)).1 += 1;
        }
        for r in &img.revisions {
            *rev_users.entry(r.clone()).or_default() += 1;
        }
    }
    let mut total: u64 = sizes.values().map(|(s, _)| s).sum();
    images.sort_by_key(|i| i.last_pull);
    let mut out = Vec::new();
    for image in images {
        if total <= budget {
            return (out, None);
        }
        if image.last_pull > cutoff {
            return (
                out,
                Some(format!(
                    "cache {prefix}: {total} bytes over its budget of {budget}, but every image left was pulled within the grace period"
                )),
            );
        }
        let mut unused_revisions = Vec::new();
        for r in &image.revisions {
            let users = rev_users.get_mut(r).expect("counted above");
            *users -= 1;
            if *users == 0 {
                unused_revisions.push(r.clone());
            }
        }
        let mut freed = 0;
        for b in image.blobs.iter().collect::<HashSet<_>>() {
            if let Some((size, users)) = sizes.get_mut(b) {
                *users -= 1;
                if *users == 0 {
                    freed += *size;
                }
            }
        }
        total -= freed;
        out.push(Eviction {
            image,
            unused_revisions,
            freed,
            total,
        });
    }
    (out, None)
}

impl<R, G, T> Eviction<R, G, T> {
    /// The line a collection prints when the image's manifest was written again while it was
    /// being evicted: its tags went, the manifest and its blobs stay.
    pub(crate) fn kept_line(&self) -> String {
        format!(
            "kept cached image {}@{}: its manifest was written again during the collection (its tags are gone; its blobs stay)",
            self.image.repo, self.image.digest
        )
    }

    /// The line a collection prints for it.
    pub(crate) fn line(&self, prefix: &str, budget: u64, dry_run: bool) -> String {
        format!(
            "{} cached image {}@{} ({} bytes of blobs no other cached image uses; cache {prefix} now {} of {budget} bytes)",
            if dry_run { "would evict" } else { "evicted" },
            self.image.repo,
            self.image.digest,
            self.freed,
            self.total
        )
    }
}

/// Whether `repo` is `prefix` or below it.
pub(crate) fn under(repo: &RepoName, prefix: &str) -> bool {
    let name = repo.as_str();
    name == prefix
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
            .parse()
            .unwrap()
    }

    fn image(n: u8, last_pull: u64, blobs: &[u8]) -> Image<u8, (), u64> {
        Image {
            repo: "hub/app".parse().unwrap(),
            digest: d(n),
            last_pull,
            tags: Vec::new(),
            revisions: vec![n],
            blobs: blobs.iter().map(|b| d(*b)).collect(),
        }
    }

    #[test]
    fn least_recently_pulled_go_first_and_shared_blobs_stay_counted() {
        // Blob 10 is shared by images 1 and 2; every blob is 100 bytes: 400 in all.
        let images = vec![
            image(1, 30, &[10, 11]),
            image(2, 10, &[10, 12]),
            image(3, 20, &[13]),
        ];
        let (out, stop) = plan("hub", images, |_| 100, 250, 100);
        assert!(stop.is_none());
        let evicted: Vec<u8> = out.iter().map(|e| e.image.revisions[0]).collect();
        assert_eq!(evicted, [2, 3], "oldest pulls first, until within budget");
        assert_eq!(out[0].freed, 100, "the shared blob stays with image 1");
        assert_eq!(out[1].total, 200);
    }

    #[test]
    fn nothing_pulled_within_the_grace_period_is_evicted() {
        let images = vec![image(1, 30, &[10]), image(2, 10, &[11])];
        let (out, stop) = plan("hub", images, |_| 100, 0, 20);
        assert_eq!(out.len(), 1);
        assert!(stop.unwrap().contains("within the grace period"));
    }

    #[test]
    fn prefixes_match_whole_path_components() {
        let r = |s: &str| s.parse::<RepoName>().unwrap();
        assert!(under(&r("hub"), "hub"));
        assert!(under(&r("hub/library/alpine"), "hub"));
        assert!(!under(&r("hubris/x"), "hub"));
    }
}
