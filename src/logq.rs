//! The log's way off the workers: each formatted line goes into a bounded queue that one writer
//! thread drains to stderr. A worker never waits on a slow or stuck sink: with the queue full the
//! line is dropped and counted (`wharf_log_lines_dropped_total`).

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};

/// Lines that may wait for the writer thread.
pub const QUEUE_LINES: usize = 8192;

static SENDER: OnceLock<SyncSender<Vec<u8>>> = OnceLock::new();
/// The guard was dropped: the writer thread is gone, lines go to stderr directly.
static CLOSED: AtomicBool = AtomicBool::new(false);
static QUEUED: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines waiting for the writer thread now.
pub fn queued() -> usize {
    QUEUED.load(Ordering::Relaxed)
}

/// Lines dropped because the queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Start the writer thread; lines written before `start` or after the guard is dropped go to
/// stderr directly. Dropping the guard writes out what is queued (call it before exiting).
pub fn start() -> std::io::Result<Guard> {
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
    let writer = std::thread::Builder::new()
        .name("wharf-log".into())
        .spawn(move || {
            let stderr = std::io::stderr();
            for line in rx {
                QUEUED.fetch_sub(1, Ordering::Relaxed);
                // An empty line is the guard's "stop": everything before it is written.
                if line.is_empty() {
                    return;
                }
                let _ = stderr.lock().write_all(&line);
            }
        })?;
    SENDER
        .set(tx)
        .map_err(|_| std::io::Error::other("the log queue is already running"))?;
    Ok(Guard {
        writer: Some(writer),
    })
}

/// Keeps the writer thread; dropping it flushes the queue.
pub struct Guard {
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        CLOSED.store(true, Ordering::Relaxed);
        if let (Some(tx), Some(w)) = (SENDER.get(), self.writer.take()) {
            QUEUED.fetch_add(1, Ordering::Relaxed);
            // Waits for room: at exit, everything queued is written before the process ends.
            if tx.send(Vec::new()).is_ok() {
                let _ = w.join();
            }
        }
    }
}

/// `tracing_subscriber`'s writer: one `Line` per event.
#[derive(Clone, Copy, Default)]
pub struct Queue;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Queue {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(160))
    }
}

/// One formatted event, queued when dropped.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.0);
        let tx = match SENDER.get() {
            Some(tx) if !CLOSED.load(Ordering::Relaxed) => tx,
            _ => {
                let _ = std::io::stderr().lock().write_all(&line);
                return;
            }
        };
        QUEUED.fetch_add(1, Ordering::Relaxed);
        if tx.try_send(line).is_err() {
            QUEUED.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}
