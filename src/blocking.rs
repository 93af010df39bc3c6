//! The bounded pools of blocking threads: the file operations a worker must not run itself (every
//! metadata call, directory listings, and under epoll also data reads, writes and fsyncs) on the
//! io lane, and the hashing of pushed bodies on the bulk lane, whose threads run at a lower CPU
//! priority so that a core busy hashing still serves its worker's requests first.
//! A full queue makes the caller wait (back-pressure), never grows; counts are in `/metrics`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads when `start` was never called (tools and unit tests).
const DEFAULT_THREADS: usize = 4;
/// Jobs that may wait for a thread, per thread.
const QUEUE_PER_THREAD: usize = 64;
/// Idle this long after running jobs, a thread hands its freed memory back to the kernel.
const IDLE_COLLECT: std::time::Duration = std::time::Duration::from_millis(100);

/// Which pool a job goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Metadata calls, directory listings, and data reads, writes and fsyncs under epoll: short
    /// jobs a request waits for (`storage.blocking_threads`).
    Io,
    /// CPU-heavy work, the hashing of pushed bodies: one thread per worker at `nice` `BULK_NICE`.
    Bulk,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Io, Lane::Bulk];

    pub fn name(self) -> &'static str {
        match self {
            Lane::Io => "io",
            Lane::Bulk => "bulk",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The bulk threads' `nice` value: where hashing and a worker (or an io thread) compete for a
/// core, the worker gets about ten times the CPU time (the kernel's weights for nice 0 and 10).
pub const BULK_NICE: i32 = 10;

struct Pool {
    tx: SyncSender<Job>,
    /// Tasks waiting for room in the queue; all are woken when a job leaves it.
    room: Mutex<Vec<Waker>>,
    threads: usize,
    capacity: usize,
    counters: Counters,
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

static POOLS: [OnceLock<Pool>; 2] = [OnceLock::new(), OnceLock::new()];

/// Start the pools: `io` threads (`storage.blocking_threads`) and `bulk` threads (one per
/// worker). Only the first call (or first use) decides.
pub fn start(io: usize, bulk: usize) -> io::Result<()> {
    for (lane, threads) in [(Lane::Io, io), (Lane::Bulk, bulk)] {
        let mut failed = None;
        POOLS[lane.index()].get_or_init(|| match spawn(lane, threads) {
            Ok(p) => p,
            Err(e) => {
                failed = Some(e);
                spawn(lane, 1).expect("one blocking thread")
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}

fn spawn(lane: Lane, threads: usize) -> io::Result<Pool> {
    let capacity = threads * QUEUE_PER_THREAD;
    let (tx, rx) = sync_channel::<Job>(capacity);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads {
        let rx = Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("wharf-{}-{i}", lane.name()))
            .spawn(move || {
                if lane == Lane::Bulk {
                    // Only a hint: if refused, hashing competes evenly with the workers.
                    crate::sys::set_thread_nice(BULK_NICE);
                }
                serve(lane, &rx)
            })?;
    }
    Ok(Pool {
        tx,
        room: Mutex::new(Vec::new()),
        threads,
        capacity,
        counters: Counters::default(),
    })
}

/// A pool thread: take jobs until the process ends.
fn serve(lane: Lane, rx: &Mutex<Receiver<Job>>) {
    // Jobs ran since this thread last handed its freed pages back.
    let mut dirty = false;
    loop {
        let next = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            if dirty {
                rx.recv_timeout(IDLE_COLLECT)
            } else {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            }
        };
        let job = match next {
            Ok(job) => job,
            // Idle after a burst: mimalloc purges a thread's freed pages only when that thread
            // allocates again, which an idle pool thread never does (the workers do the same).
            Err(RecvTimeoutError::Timeout) => {
                crate::sys::return_freed_pages();
                dirty = false;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        dirty = true;
        let pool = pool(lane);
        pool.counters.queued.fetch_sub(1, Ordering::Relaxed);
        let waiting = std::mem::take(&mut *pool.room.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiting {
            w.wake();
        }
        pool.counters.running.fetch_add(1, Ordering::Relaxed);
        job();
        pool.counters.running.fetch_sub(1, Ordering::Relaxed);
        pool.counters.jobs.fetch_add(1, Ordering::Relaxed);
    }
}

fn pool(lane: Lane) -> &'static Pool {
    POOLS[lane.index()]
        .get_or_init(|| spawn(lane, DEFAULT_THREADS).expect("cannot start the blocking threads"))
}

/// Run `f` on an io thread and wait for its result without blocking this thread. A panic in `f`
/// is caught (and counted) and becomes an error. Dropping the future does not stop `f`.
pub async fn run<F, R>(f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    run_on(Lane::Io, f).await
}

/// `run` on a bulk thread: for CPU-heavy jobs.
pub async fn run_bulk<F, R>(f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    run_on(Lane::Bulk, f).await
}

async fn run_on<F, R>(lane: Lane, f: F) -> io::Result<R>
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
                    pool(lane).counters.panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("a blocking storage job panicked; its request fails");
                }
            },
        );
    Submit {
        lane,
        job: Some(job),
        waited: false,
    }
    .await?;
    rx.await
        .map_err(|_| io::Error::other("a blocking storage job failed (see the log)"))
}

/// Run `f` on an io thread without waiting for it (clean-up from `Drop`). With the queue full it
/// runs here instead, counted in `wharf_blocking_inline_total`: a drop cannot wait.
pub fn detach(f: impl FnOnce() + Send + 'static) {
    if let Err(job) = queue_detached(f) {
        pool(Lane::Io)
            .counters
            .inline
            .fetch_add(1, Ordering::Relaxed);
        job();
    }
}

/// Run `f` on an io thread without waiting for it, unless the queue is full (then `f` is dropped
/// and `false` returned): for hints that may be skipped.
pub fn try_detach(f: impl FnOnce() + Send + 'static) -> bool {
    queue_detached(f).is_ok()
}

/// Queue `f` (its panic caught and counted) on the io lane without waiting; the job back if the
/// queue is full.
fn queue_detached(f: impl FnOnce() + Send + 'static) -> Result<(), Job> {
    let pool = pool(Lane::Io);
    let job: Job = Box::new(move || {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            pool.counters.panics.fetch_add(1, Ordering::Relaxed);
        }
    });
    pool.counters.queued.fetch_add(1, Ordering::Relaxed);
    match pool.tx.try_send(job) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
            pool.counters.queued.fetch_sub(1, Ordering::Relaxed);
            Err(job)
        }
    }
}

/// Puts a job in a lane's queue, waiting while it is full.
struct Submit {
    lane: Lane,
    job: Option<Job>,
    waited: bool,
}

impl Future for Submit {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let pool = pool(self.lane);
        let c = &pool.counters;
        let job = self.job.take().expect("polled after completion");
        // Queued before it is sent: a pool thread may take it (and count it out) at once.
        c.queued.fetch_add(1, Ordering::Relaxed);
        let job = match pool.tx.try_send(job) {
            Ok(()) => return Poll::Ready(Ok(())),
            Err(TrySendError::Full(job)) => job,
            Err(TrySendError::Disconnected(_)) => {
                c.queued.fetch_sub(1, Ordering::Relaxed);
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
                c.queued.fetch_sub(1, Ordering::Relaxed);
                if !self.waited {
                    self.waited = true;
                    c.waits.fetch_add(1, Ordering::Relaxed);
                }
                self.job = Some(job);
                Poll::Pending
            }
        }
    }
}

/// A lane's numbers now, for `/metrics`.
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

pub fn stats(lane: Lane) -> Stats {
    let pool = pool(lane);
    let c = &pool.counters;
    Stats {
        threads: pool.threads,
        capacity: pool.capacity,
        queued: c.queued.load(Ordering::Relaxed),
        running: c.running.load(Ordering::Relaxed),
        jobs: c.jobs.load(Ordering::Relaxed),
        waits: c.waits.load(Ordering::Relaxed),
        panics: c.panics.load(Ordering::Relaxed),
        inline: c.inline.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_and_panics_become_errors() {
        monoio::start::<monoio::LegacyDriver, _>(async {
            assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
            let before = stats(Lane::Io).panics;
            let e = run(|| -> u8 { panic!("boom") }).await.unwrap_err();
            assert!(e.to_string().contains("failed"), "{e}");
            assert_eq!(stats(Lane::Io).panics, before + 1);
        });
    }

    /// More jobs than threads plus queue: callers wait for room, none is lost or refused.
    #[test]
    fn a_full_queue_makes_callers_wait_and_every_job_runs() {
        let n = stats(Lane::Io).capacity + stats(Lane::Io).threads + 50;
        let gate = Arc::new(std::sync::Barrier::new(stats(Lane::Io).threads + 1));
        monoio::start::<monoio::LegacyDriver, _>(async move {
            let waits_before = stats(Lane::Io).waits;
            // Hold every thread until all jobs were submitted or are waiting.
            let mut tasks = Vec::new();
            for _ in 0..stats(Lane::Io).threads {
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
                while stats(Lane::Io).waits == waits_before {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                assert!(stats(Lane::Io).queued <= stats(Lane::Io).capacity);
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
