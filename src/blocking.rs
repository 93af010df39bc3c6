//! The bounded pool of blocking threads: the file operations a worker must not run itself (every
//! metadata call, directory listings, and under epoll also data reads, writes and fsyncs).
//! A full queue makes the caller wait (back-pressure), never grows; counts are in `/metrics`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads when `start` was never called (tools and unit tests).
const DEFAULT_THREADS: usize = 4;
/// Jobs that may wait for a thread, per thread.
const QUEUE_PER_THREAD: usize = 64;

struct Pool {
    tx: SyncSender<Job>,
    /// Tasks waiting for room in the queue; all are woken when a job leaves it.
    room: Mutex<Vec<Waker>>,
    threads: usize,
    capacity: usize,
}

/// Counters behind the `wharf_blocking_*` metrics.
#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    running: AtomicUsize,
    jobs: AtomicU64,
    waits: AtomicU64,
    panics: AtomicU64,
    inline: AtomicU64,
}

static POOL: OnceLock<Pool> = OnceLock::new();
static COUNTERS: Counters = Counters {
    queued: AtomicUsize::new(0),
    running: AtomicUsize::new(0),
    jobs: AtomicU64::new(0),
    waits: AtomicU64::new(0),
    panics: AtomicU64::new(0),
    inline: AtomicU64::new(0),
};

/// Start the pool with `threads` threads (`storage.blocking_threads`). Only the first call (or
/// first use) decides; later calls return whether the pool runs with that many threads.
pub fn start(threads: usize) -> io::Result<bool> {
    let mut failed = None;
    let pool = POOL.get_or_init(|| match spawn(threads) {
        Ok(p) => p,
        Err(e) => {
            failed = Some(e);
            spawn(1).expect("one blocking thread")
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(pool.threads == threads),
    }
}

fn spawn(threads: usize) -> io::Result<Pool> {
    let capacity = threads * QUEUE_PER_THREAD;
    let (tx, rx) = sync_channel::<Job>(capacity);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("wharf-blocking-{i}"))
            .spawn(move || serve(&rx))?;
    }
    Ok(Pool {
        tx,
        room: Mutex::new(Vec::new()),
        threads,
        capacity,
    })
}

/// A pool thread: take jobs until the process ends.
fn serve(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        COUNTERS.queued.fetch_sub(1, Ordering::Relaxed);
        let waiting = std::mem::take(&mut *pool().room.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiting {
            w.wake();
        }
        COUNTERS.running.fetch_add(1, Ordering::Relaxed);
        job();
        COUNTERS.running.fetch_sub(1, Ordering::Relaxed);
        COUNTERS.jobs.fetch_add(1, Ordering::Relaxed);
    }
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| spawn(DEFAULT_THREADS).expect("cannot start the blocking threads"))
}

/// Run `f` on a pool thread and wait for its result without blocking this thread. A panic in `f`
/// is caught (and counted) and becomes an error. Dropping the future does not stop `f`.
pub async fn run<F, R>(f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = futures_channel::oneshot::channel();
    let job: Job =
        Box::new(
            move || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(r) => {
                    let _ = tx.send(r);
                }
                Err(_) => {
                    COUNTERS.panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("a blocking storage job panicked; its request fails");
                }
            },
        );
    Submit {
        job: Some(job),
        waited: false,
    }
    .await?;
    rx.await
        .map_err(|_| io::Error::other("a blocking storage job failed (see the log)"))
}

/// Run `f` on a pool thread without waiting for it (clean-up from `Drop`). With the queue full it
/// runs here instead, counted in `wharf_blocking_inline_total`: a drop cannot wait.
pub fn detach(f: impl FnOnce() + Send + 'static) {
    let job: Job = Box::new(move || {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            COUNTERS.panics.fetch_add(1, Ordering::Relaxed);
        }
    });
    COUNTERS.queued.fetch_add(1, Ordering::Relaxed);
    if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = pool().tx.try_send(job)
    {
        COUNTERS.queued.fetch_sub(1, Ordering::Relaxed);
        COUNTERS.inline.fetch_add(1, Ordering::Relaxed);
        job();
    }
}

/// Puts a job in the queue, waiting while it is full.
struct Submit {
    job: Option<Job>,
    waited: bool,
}

impl Future for Submit {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let pool = pool();
        let job = self.job.take().expect("polled after completion");
        // Queued before it is sent: a pool thread may take it (and count it out) at once.
        COUNTERS.queued.fetch_add(1, Ordering::Relaxed);
        let job = match pool.tx.try_send(job) {
            Ok(()) => return Poll::Ready(Ok(())),
            Err(TrySendError::Full(job)) => job,
            Err(TrySendError::Disconnected(_)) => {
                COUNTERS.queued.fetch_sub(1, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::other("the blocking threads are gone")));
            }
        };
        // Full: wait for a thread to take a job. Registered before retrying, so a job taken in
        // between still wakes us.
        pool.room
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cx.waker().clone());
        match pool.tx.try_send(job) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                COUNTERS.queued.fetch_sub(1, Ordering::Relaxed);
                if !self.waited {
                    self.waited = true;
                    COUNTERS.waits.fetch_add(1, Ordering::Relaxed);
                }
                self.job = Some(job);
                Poll::Pending
            }
        }
    }
}

/// The pool's numbers now, for `/metrics`.
pub struct Stats {
    pub threads: usize,
    pub capacity: usize,
    pub queued: usize,
    pub running: usize,
    pub jobs: u64,
    pub waits: u64,
    pub panics: u64,
    pub inline: u64,
}

pub fn stats() -> Stats {
    let pool = pool();
    Stats {
        threads: pool.threads,
        capacity: pool.capacity,
        queued: COUNTERS.queued.load(Ordering::Relaxed),
        running: COUNTERS.running.load(Ordering::Relaxed),
        jobs: COUNTERS.jobs.load(Ordering::Relaxed),
        waits: COUNTERS.waits.load(Ordering::Relaxed),
        panics: COUNTERS.panics.load(Ordering::Relaxed),
        inline: COUNTERS.inline.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_and_panics_become_errors() {
        monoio::start::<monoio::LegacyDriver, _>(async {
            assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
            let before = stats().panics;
            let e = run(|| -> u8 { panic!("boom") }).await.unwrap_err();
            assert!(e.to_string().contains("failed"), "{e}");
            assert_eq!(stats().panics, before + 1);
        });
    }

    /// More jobs than threads plus queue: callers wait for room, none is lost or refused.
    #[test]
    fn a_full_queue_makes_callers_wait_and_every_job_runs() {
        let n = stats().capacity + stats().threads + 50;
        let gate = Arc::new(std::sync::Barrier::new(stats().threads + 1));
        monoio::start::<monoio::LegacyDriver, _>(async move {
            let waits_before = stats().waits;
            // Hold every thread until all jobs were submitted or are waiting.
            let mut tasks = Vec::new();
            for _ in 0..stats().threads {
                let g = Arc::clone(&gate);
                tasks.push(monoio::spawn(run(move || {
                    g.wait();
                    0usize
                })));
            }
            for i in 1..n {
                tasks.push(monoio::spawn(run(move || i)));
            }
            // Released from another thread once some caller found the queue full.
            let g = Arc::clone(&gate);
            let opener = std::thread::spawn(move || {
                while stats().waits == waits_before {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                assert!(stats().queued <= stats().capacity);
                g.wait();
            });
            let mut sum = 0;
            for t in tasks {
                sum += t.await.unwrap();
            }
            assert_eq!(sum, (1..n).sum::<usize>());
            opener.join().unwrap();
        });
    }
}
