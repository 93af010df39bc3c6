//! Small filesystem helpers for atomic, durable updates: write a temp file, fsync, rename, fsync the
//! directory. The async helpers run on worker threads and never block them: each sequence of plain
//! file calls is one job on the blocking pool (`crate::blocking`), directory fsyncs are shared
//! between concurrent callers (group commit).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use futures_channel::oneshot;

/// fsync a file or directory by path: over io_uring on io_uring workers (an fsync waits for the
/// disk, and a blocking thread held for each one would cap concurrent commits at the pool's
/// size), else on the blocking pool.
pub(crate) async fn fsync_path(path: &Path) -> io::Result<()> {
    if crate::net::file::ring() {
        let f = monoio::fs::File::open(path).await?;
        let synced = f.sync_all().await;
        let closed = f.close().await;
        return synced.and(closed);
    }
    let path = path.to_owned();
    crate::blocking::run(move || std::fs::File::open(path)?.sync_all()).await?
}

/// Run `f` on the blocking pool.
pub(crate) async fn off<R: Send + 'static>(
    f: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    crate::blocking::run(f).await?
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
        crate::task::spawn("a shared directory fsync", async move {
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

/// Create `dir` and any missing parents (blocking); the directories created, outermost first.
/// Concurrent creators are fine. Their parents must be fsynced (`sync_created`) before the new
/// entries may be relied on.
pub(crate) fn create_missing(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.is_dir() {
        missing.push(cur.to_owned());
        cur = cur
            .parent()
            .ok_or_else(|| io::Error::other("no existing ancestor"))?;
    }
    missing.reverse();
    let mut created = Vec::with_capacity(missing.len());
    for d in missing {
        match std::fs::create_dir(&d) {
            Ok(()) => created.push(d),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// fsync the parent of each directory `create_missing` made, outermost first.
pub(crate) async fn sync_created(created: &[PathBuf]) -> io::Result<()> {
    for d in created {
        if let Some(parent) = d.parent() {
            fsync_dir(parent).await?;
        }
    }
    Ok(())
}

/// Create `dir` durably, for code off the worker threads (the collector, fsck).
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

/// A fsynced temp file beside its destination, ready to be renamed over it.
pub(crate) struct Replacement {
    pub temp: PathBuf,
    /// Directories created on the way; the caller fsyncs them (`sync_created`).
    pub created: Vec<PathBuf>,
}

/// Create `temp` holding `bytes` (blocking), unsynced; removed again on failure.
pub(crate) fn create_written(temp: &Path, bytes: &[u8]) -> io::Result<std::fs::File> {
    let result = (|| {
        let mut f = std::fs::File::create(temp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        Ok(f)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    result
}

/// fsync a file a pool job created (over io_uring where the worker has it: an fsync waits for
/// the disk, and a blocking thread held for each would cap concurrent commits at the pool's
/// size); on failure `temp` is removed.
pub(crate) async fn sync_new(file: std::fs::File, temp: &Path) -> io::Result<()> {
    let synced = match crate::net::file::DataFile::new(file) {
        Ok(f) => f.sync_all().await,
        Err(e) => Err(e),
    };
    if synced.is_err() {
        let _ = remove(temp).await;
    }
    synced
}

/// A fsynced temp file beside `path` holding `bytes` (see `sync_new`).
pub(crate) async fn write_temp(path: &Path, bytes: Vec<u8>) -> io::Result<Replacement> {
    let dir = path
        .parent()
        .expect("storage paths have a parent")
        .to_owned();
    let temp = dir.join(format!(".tmp-{}", super::random_id()));
    let t = temp.clone();
    let (file, created) = off(move || {
        let created = create_missing(&dir)?;
        Ok((create_written(&t, &bytes)?, created))
    })
    .await?;
    sync_new(file, &temp).await?;
    Ok(Replacement { temp, created })
}

/// Atomically replace `path` with `bytes`: temp file in the same directory, fsync, rename, fsync dir.
pub(crate) async fn write_atomic(path: &Path, bytes: Vec<u8>) -> io::Result<()> {
    let r = write_temp(path, bytes).await?;
    let (temp, to) = (r.temp, path.to_owned());
    off(move || {
        let renamed = std::fs::rename(&temp, &to);
        if renamed.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        renamed
    })
    .await?;
    sync_created(&r.created).await?;
    fsync_dir(path.parent().expect("storage paths have a parent")).await
}

/// Remove a file off the worker; `Ok(false)` if it did not exist.
pub(crate) async fn remove(path: &Path) -> io::Result<bool> {
    let p = path.to_owned();
    off(move || remove_if_exists(&p)).await
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
