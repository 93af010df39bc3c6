//! Password-hash verification off the worker threads: argon2 takes tens of milliseconds by
//! design, and a worker that ran it would stall every connection on its core meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use futures_channel::oneshot;

/// Checks waiting for a verifier thread; more answer 429 rather than queue without bound.
const QUEUE: usize = 256;

struct Job {
    phc: Arc<str>,
    password: String,
    reply: oneshot::Sender<bool>,
}

/// Hash checks run by every verifier (`wharf_password_checks_total`).
static CHECKS_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Password-hash checks run in this process: known users' and the decoy's for unknown names.
pub fn checks_total() -> u64 {
    CHECKS_TOTAL.load(Ordering::Relaxed)
}

/// A few threads verifying argon2id hashes.
pub(crate) struct Verifier {
    jobs: SyncSender<Job>,
    checks: Arc<AtomicU64>,
}

impl Verifier {
    pub(crate) fn start(threads: usize) -> std::io::Result<Verifier> {
        let (jobs, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let checks = Arc::new(AtomicU64::new(0));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let checks = Arc::clone(&checks);
            std::thread::Builder::new()
                .name(format!("wharf-argon2-{i}"))
                .spawn(move || run(&rx, &checks))?;
        }
        Ok(Verifier { jobs, checks })
    }

    /// Queue a check; `None` when the queue is full.
    pub(crate) fn submit(
        &self,
        phc: Arc<str>,
        password: String,
    ) -> Option<oneshot::Receiver<bool>> {
        let (reply, rx) = oneshot::channel();
        match self.jobs.try_send(Job {
            phc,
            password,
            reply,
        }) {
            Ok(()) => Some(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => None,
        }
    }

    /// Hash checks run so far.
    pub(crate) fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }
}

fn run(rx: &Mutex<Receiver<Job>>, checks: &AtomicU64) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let ok = verify(&job.phc, &job.password);
        checks.fetch_add(1, Ordering::Relaxed);
        CHECKS_TOTAL.fetch_add(1, Ordering::Relaxed);
        let _ = job.reply.send(ok);
    }
}

/// Whether `password` matches the PHC string (parameters are taken from the string).
pub(crate) fn verify(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}
