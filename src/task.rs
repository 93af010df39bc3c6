//! Spawning on a worker with a guard. monoio does not catch panics in tasks: one would end the
//! worker thread and leave the process serving on one core fewer, silently. Here a panic in a
//! connection's task is caught, logged and counted (that connection closes; a client must not
//! be able to take the registry down); a panic anywhere else makes the process log why and exit
//! with status 70, so that systemd or Docker restarts it.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Exit status after a fatal panic (`EX_SOFTWARE`).
pub const FATAL_EXIT: i32 = 70;

static CONNECTION_PANICS: AtomicU64 = AtomicU64::new(0);

/// Connection tasks that panicked (`wharf_connection_panics_total`).
pub fn connection_panics() -> u64 {
    CONNECTION_PANICS.load(Ordering::Relaxed)
}

/// Spawn a task the worker depends on (accept loops, shared fsyncs, writes in flight): a panic
/// in it ends the process (`fatal`).
pub fn spawn<F>(what: &'static str, fut: F) -> monoio::task::JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    // Boxed before the task captures it: the task then holds a pointer, not a second copy.
    let fut = CatchUnwind(Box::pin(fut));
    monoio::spawn(async move {
        match fut.await {
            Ok(v) => v,
            Err(panic) => fatal(what, &*panic),
        }
    })
}

/// Spawn the task of a connection from `peer`: a panic in it closes the connection, is logged
/// and counted.
pub fn spawn_connection<F>(peer: std::net::SocketAddr, fut: F)
where
    F: Future<Output = ()> + 'static,
{
    // Boxed before the task captures it: a connection's state is allocated once, not twice
    // (1,000 stalled TLS downloads measured +64 MiB when the task held the future too).
    let fut = CatchUnwind(Box::pin(fut));
    monoio::spawn(async move {
        if let Err(panic) = fut.await {
            CONNECTION_PANICS.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "connection from {peer} aborted by an internal error: {}",
                message(&*panic)
            );
        }
    });
}

/// Log why and exit with `FATAL_EXIT`. The line also goes straight to stderr: the log queue's
/// writer thread may not get to it before the process ends.
pub fn fatal(what: &str, panic: &(dyn Any + Send)) -> ! {
    let line = format!(
        "{what} panicked ({}); exiting with status {FATAL_EXIT} so that the service manager restarts wharf",
        message(panic)
    );
    tracing::error!("{line}");
    eprintln!("wharf: fatal: {line}");
    std::process::exit(FATAL_EXIT)
}

/// The text of a panic payload.
pub fn message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// A future whose panics come out as `Err`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Test-only fault hooks (feature `fault-hooks`, and `WHARF_FAULT_HOOKS=1` at run time): a GET of
/// `/_fault/panic-connection` panics in the connection's task, `/_fault/panic-worker` in a
/// task the worker depends on.
#[cfg(feature = "fault-hooks")]
pub fn fault_hook(path: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ON.get_or_init(|| std::env::var_os("WHARF_FAULT_HOOKS").is_some_and(|v| v == "1")) {
        return;
    }
    match path {
        "/_fault/panic-connection" => panic!("fault hook: panic in a connection"),
        "/_fault/panic-worker" => {
            spawn("a fault-hook task", async {
                panic!("fault hook: panic in a worker task")
            });
        }
        _ => {}
    }
}

/// The value of a test-only switch `key` (feature `fault-hooks` and `WHARF_FAULT_HOOKS=1`).
#[cfg(feature = "fault-hooks")]
fn fault_switch(key: &str) -> Option<String> {
    let hooks = std::env::var_os("WHARF_FAULT_HOOKS").is_some_and(|v| v == "1");
    hooks.then(|| std::env::var(key).ok()).flatten()
}

/// Test-only (`WHARF_FAULT_BLOB_STREAM`): the filesystem backend hands out blobs it would send
/// from a file as streams instead (the path an object store takes): `1` whole, `short` one byte
/// short of their length (a broken source); `redirect`: as a redirect to a URL elsewhere.
#[cfg(feature = "fault-hooks")]
pub fn blobs_as_streams() -> Option<&'static str> {
    static ON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ON.get_or_init(|| fault_switch("WHARF_FAULT_BLOB_STREAM"))
        .as_deref()
}

/// Test-only delays (`WHARF_FAULT_DELAY_<WHAT>=<ms>`): an object-store request that an
/// ordering argument depends on is held back this long, so a race the order closes would open
/// (`TOMBSTONE_LOOK`: a request's look for a collector's tombstone; `SWEEP`: the collector
/// between its second look at a hold and its delete; `MARKED`: the collector between its mark
/// phase and its deletions; `EVICT`: either collector between planning evictions and making them).
#[cfg(feature = "fault-hooks")]
pub async fn fault_delay(what: &'static str) {
    if let Some(pause) = fault_pause(what) {
        monoio::time::sleep(pause).await;
    }
}

/// Test-only (`WHARF_FAULT_GC_LOCK_FOR`, seconds): how old the S3 collector's `gc/lock` must be
/// before another collector takes it over (an hour otherwise), so a test need not wait an hour.
#[cfg(feature = "fault-hooks")]
pub fn gc_lock_for() -> Option<u64> {
    fault_switch("WHARF_FAULT_GC_LOCK_FOR")?.parse().ok()
}

/// Test-only (`WHARF_FAULT_NOTE_EVERY_MS`): how often a worker rewrites a manifest's pull record
/// on the S3 backend (a minute otherwise), so a test can pull twice and see the second noted.
#[cfg(feature = "fault-hooks")]
pub fn note_every_ms() -> Option<u64> {
    fault_switch("WHARF_FAULT_NOTE_EVERY_MS")?.parse().ok()
}

/// How long `fault_delay(what)` holds back, for code off the workers (the filesystem collector
/// sleeps its thread).
#[cfg(feature = "fault-hooks")]
pub fn fault_pause(what: &'static str) -> Option<std::time::Duration> {
    static DELAYS: std::sync::OnceLock<std::collections::HashMap<&'static str, u64>> =
        std::sync::OnceLock::new();
    let delays = DELAYS.get_or_init(|| {
        ["TOMBSTONE_LOOK", "SWEEP", "MARKED", "EVICT"]
            .into_iter()
            .filter_map(|k| {
                let ms = fault_switch(&format!("WHARF_FAULT_DELAY_{k}"))?
                    .parse()
                    .ok()?;
                Some((k, ms))
            })
            .collect()
    });
    delays
        .get(what)
        .map(|&ms| std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_in_connection_tasks_are_caught_and_counted() {
        monoio::start::<monoio::LegacyDriver, _>(async {
            let before = connection_panics();
            spawn_connection("127.0.0.1:1".parse().unwrap(), async { panic!("boom") });
            let ok = spawn("a task", async { 7 });
            assert_eq!(ok.await, 7);
            assert_eq!(connection_panics(), before + 1);
        });
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let s: Box<dyn Any + Send> = Box::new("static");
        let o: Box<dyn Any + Send> = Box::new(String::from("owned"));
        let n: Box<dyn Any + Send> = Box::new(3);
        assert_eq!(message(&*s), "static");
        assert_eq!(message(&*o), "owned");
        assert_eq!(message(&*n), "no message");
    }
}
