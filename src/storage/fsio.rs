//! Small filesystem helpers for atomic, durable updates: write a temp file, fsync, rename, fsync the
//! directory. fsyncs go through monoio so that io_uring runs them without blocking the thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use futures_channel::oneshot;

/// fsync a file or directory by path.
pub(crate) async fn fsync_path(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    fsync(f).await
}

type Waiters = Vec<oneshot::Sender<io::Result<()>>>;

thread_local! {
    /// Directories with a sync task on this thread (alive while its `Weak` upgrades), and who
    /// waits for its next round. A task dropped with its runtime leaves a dead entry, replaced
    /// by the next caller.
    static DIR_SYNCS: RefCell<HashMap<PathBuf, (std::rc::Weak<()>, Waiters)>> =
        RefCell::new(HashMap::new());
    /// Directory fsyncs this thread has run through `fsync_dir` (for tests).
    static DIR_SYNC_ROUNDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// fsync a directory after changing its entries, sharing the fsync with concurrent callers on this
/// thread (group commit): a caller joins the next round, which starts after the running one, so
/// the fsync it waits for always began after its change. Thirty-two clients pushing to one
/// repository make one link-directory fsync per round instead of one each. The rounds run in
/// their own task: a caller that goes away never cancels an fsync others wait for.
pub(crate) async fn fsync_dir(dir: &Path) -> io::Result<()> {
    let (tx, rx) = oneshot::channel();
    let alive = std::rc::Rc::new(());
    let lead = DIR_SYNCS.with(|m| {
        let mut m = m.borrow_mut();
        match m.get_mut(dir) {
            Some((task, waiters)) if task.upgrade().is_some() => {
                waiters.push(tx);
                None
            }
            _ => {
                m.insert(dir.to_owned(), (std::rc::Rc::downgrade(&alive), Vec::new()));
                Some(tx)
            }
        }
    });
    if let Some(tx) = lead {
        let dir = dir.to_owned();
        monoio::spawn(async move {
            let _alive = alive;
            let mut round = vec![tx];
            loop {
                let r = fsync_path(&dir).await;
                DIR_SYNC_ROUNDS.with(|c| c.set(c.get() + 1));
                for w in round {
                    let _ = w.send(match &r {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
                round = DIR_SYNCS.with(|m| {
                    let mut m = m.borrow_mut();
                    let next = m
                        .get_mut(&dir)
                        .map(|(_, w)| std::mem::take(w))
                        .unwrap_or_default();
                    if next.is_empty() {
                        m.remove(&dir);
                    }
                    next
                });
                if round.is_empty() {
                    return;
                }
            }
        });
    }
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("directory sync abandoned")))
}

/// fsync an open file (data and metadata).
pub(crate) async fn fsync(f: std::fs::File) -> io::Result<()> {
    let f = monoio::fs::File::from_std(f)?;
    f.sync_all().await
}

/// Create `dir` and any missing parents, fsyncing the parent of each directory created so the
/// new entries survive a crash. Concurrent creators are fine.
pub(crate) async fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.is_dir() {
        missing.push(cur);
        cur = cur
            .parent()
            .ok_or_else(|| io::Error::other("no existing ancestor"))?;
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if let Some(parent) = d.parent() {
            fsync_dir(parent).await?;
        }
    }
    Ok(())
}

/// `ensure_dir` for code off the worker threads (the collector, fsck): plain blocking fsyncs.
pub(crate) fn ensure_dir_sync(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => std::fs::File::open(p)?.sync_all(),
        _ => Ok(()),
    }
}

/// Atomically replace `path` with `bytes`: temp file in the same directory, fsync, rename, fsync dir.
pub(crate) async fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("storage paths have a parent");
    ensure_dir(dir).await?;
    let tmp = dir.join(format!(".tmp-{}", super::random_id()));
    let result = async {
        std::fs::write(&tmp, bytes)?;
        fsync_path(&tmp).await?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir).await
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Create an empty marker file (a link) durably; succeeds if it already exists.
pub(crate) async fn touch(path: &Path) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().expect("storage paths have a parent");
    ensure_dir(dir).await?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    fsync_dir(dir).await
}

/// Remove a file; `Ok(false)` if it did not exist.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` tasks that fsync `dir` at the same time.
    fn concurrent_syncs(dir: &Path, n: usize) -> Vec<monoio::task::JoinHandle<io::Result<()>>> {
        (0..n)
            .map(|_| {
                let p = dir.to_owned();
                monoio::spawn(async move { fsync_dir(&p).await })
            })
            .collect()
    }

    /// Callers that arrive while a directory fsync runs share the next one; it starts after the
    /// running one, and a failure reaches every caller of its round.
    #[test]
    fn concurrent_directory_syncs_share_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        monoio::start::<monoio::LegacyDriver, _>(async move {
            let before = DIR_SYNC_ROUNDS.with(|c| c.get());
            for t in concurrent_syncs(&path, 50) {
                t.await.unwrap();
            }
            // The first caller's round, then one round for the 49 that queued behind it.
            assert_eq!(DIR_SYNC_ROUNDS.with(|c| c.get()) - before, 2);
            assert!(DIR_SYNCS.with(|m| m.borrow().is_empty()));

            for t in concurrent_syncs(&path.join("missing"), 3) {
                let e = t.await.unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::NotFound);
            }
            assert!(DIR_SYNCS.with(|m| m.borrow().is_empty()));
        });
    }
}
