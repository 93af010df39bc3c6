//! Small filesystem helpers for atomic, durable updates: write a temp file, fsync, rename, fsync the
//! directory. fsyncs go through monoio so that io_uring runs them without blocking the thread.

use std::io;
use std::path::Path;

/// fsync a file or directory by path.
pub async fn fsync_path(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    fsync(f).await
}

/// fsync an open file (data and metadata).
pub async fn fsync(f: std::fs::File) -> io::Result<()> {
    let f = monoio::fs::File::from_std(f)?;
    f.sync_all().await
}

/// Create `dir` and any missing parents, fsyncing the parent of each directory created so the
/// new entries survive a crash. Concurrent creators are fine.
pub async fn ensure_dir(dir: &Path) -> io::Result<()> {
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
            fsync_path(parent).await?;
        }
    }
    Ok(())
}

/// `ensure_dir` for code off the worker threads (the collector, fsck): plain blocking fsyncs.
pub fn ensure_dir_sync(dir: &Path) -> io::Result<()> {
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
pub async fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("storage paths have a parent");
    ensure_dir(dir).await?;
    let tmp = dir.join(format!(".tmp-{}", super::random_id()));
    let result = async {
        std::fs::write(&tmp, bytes)?;
        fsync_path(&tmp).await?;
        std::fs::rename(&tmp, path)?;
        fsync_path(dir).await
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Create an empty marker file (a link) durably; succeeds if it already exists.
pub async fn touch(path: &Path) -> io::Result<()> {
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
    fsync_path(dir).await
}

/// Remove a file; `Ok(false)` if it did not exist.
pub fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
