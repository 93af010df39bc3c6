//! Prometheus metrics. Each worker counts into its own `Worker` (relaxed atomics only it writes,
//! so no contention); a scrape sums the workers. Storage size comes from a background walk every
//! minute, never from the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::action::ACTIONS;
use crate::histogram::BOUNDS as BUCKETS;

/// Status codes counted individually; anything else is counted as "other".
const STATUSES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 307, 400, 401, 403, 404, 405, 408, 411, 413, 414, 416, 429, 431,
    500, 501, 503, 505, 507,
];
const N_STATUS: usize = STATUSES.len() + 1;
/// Requests that never became an action (unroutable, refused heads) count as this one.
const N_ACTION: usize = ACTIONS.len() + 1;

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len())
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// One worker thread's counters.
pub struct Worker {
    requests: Box<[[AtomicU64; N_STATUS]; N_ACTION]>,
    /// Per action: counts per bucket (non-cumulative; the last is +Inf), and the sum in µs.
    durations: Box<[[AtomicU64; BUCKETS.len() + 1]; N_ACTION]>,
    duration_us: [AtomicU64; N_ACTION],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    in_flight: AtomicI64,
    /// Open connections, by listener (`Metrics::listeners`).
    connections: Box<[AtomicI64]>,
    /// Handshakes by listener, then `Handshake`.
    tls: Box<[[AtomicU64; HANDSHAKES.len()]]>,
    decisions: [AtomicU64; 2],
    defences: [AtomicU64; DEFENCES.len()],
}

/// What the denial-of-service defences did (`wharf_defence_events_total{event=…}`).
#[derive(Clone, Copy)]
pub enum Defence {
    /// A connection refused: its client address held `limits.max_connections_per_client`.
    ClientConnectionCap = 0,
    /// A connection refused at `limits.max_connections` with no idle connection to close.
    GlobalConnectionCap = 1,
    /// An idle keep-alive connection closed to admit a new one at `limits.max_connections`.
    IdleEvicted = 2,
    /// A password check refused: its client had `auth.max_checks_per_client` in flight.
    ClientChecksCap = 3,
    /// An open TLS connection closed after a reload: its client certificate no longer verifies.
    CertificateRevoked = 4,
    /// A password check refused: the verifier queue (256 checks) was full.
    ChecksQueueFull = 5,
}

const DEFENCES: [&str; 6] = [
    "client_connection_cap",
    "global_connection_cap",
    "idle_evicted",
    "client_checks_cap",
    "certificate_no_longer_valid",
    "checks_queue_full",
];

/// TLS handshake outcomes: two successes, then failures by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    Full = 0,
    Resumed,
    /// `client_auth = "required"` and the client sent none.
    NoCertificate,
    /// The client certificate chains to no configured client CA.
    UnknownIssuer,
    /// The client certificate is expired or not yet valid.
    Expired,
    /// The client certificate is revoked by a `client_crl`, or its issuer has no CRL there.
    Revoked,
    /// Any other certificate problem (bad signature, wrong key usage, unparsable).
    BadCertificate,
    /// Plain HTTP on the TLS port (answered 400).
    PlainHttp,
    /// Protocol errors, timeouts, closed connections.
    Other,
}

/// `(result, reason)` labels of each `Handshake`, in order.
const HANDSHAKES: [(&str, &str); 9] = [
    ("full", "none"),
    ("resumed", "none"),
    ("failed", "no_certificate"),
    ("failed", "unknown_issuer"),
    ("failed", "expired"),
    ("failed", "revoked"),
    ("failed", "bad_certificate"),
    ("failed", "plain_http"),
    ("failed", "other"),
];

impl Handshake {
    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        HANDSHAKES[self as usize].1
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl Worker {
    fn new(listeners: usize) -> Worker {
        Worker {
            requests: Box::new(std::array::from_fn(|_| zeros())),
            durations: Box::new(std::array::from_fn(|_| zeros())),
            duration_us: zeros(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            connections: (0..listeners).map(|_| AtomicI64::new(0)).collect(),
            tls: (0..listeners).map(|_| zeros()).collect(),
            decisions: zeros(),
            defences: zeros(),
        }
    }

    /// Hot path: one finished request; `action` is `Action::index`, `None` if it did not route.
    pub fn request(&self, action: Option<usize>, status: u16, took: Duration, sent: u64) {
        let a = action.unwrap_or(ACTIONS.len());
        add(&self.requests[a][status_index(status)], 1);
        add(&self.durations[a][crate::histogram::bucket(took)], 1);
        add(&self.duration_us[a], took.as_micros() as u64);
        add(&self.bytes_out, sent);
    }

    /// Request body bytes received.
    pub fn received(&self, n: u64) {
        add(&self.bytes_in, n);
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection opened on listener `listener` (its index).
    pub fn connection_opened(&self, listener: usize) {
        self.connections[listener].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, listener: usize) {
        self.connections[listener].fetch_sub(1, Ordering::Relaxed);
    }

    /// A handshake on listener `listener` (its index) ended as `h`.
    pub fn handshake(&self, listener: usize, h: Handshake) {
        add(&self.tls[listener][h as usize], 1);
    }

    pub fn decision(&self, allowed: bool) {
        add(&self.decisions[usize::from(!allowed)], 1);
    }

    pub fn defence(&self, d: Defence) {
        add(&self.defences[d as usize], 1);
    }
}

/// Storage totals from the last walk.
#[derive(Default)]
struct StorageStats {
    bytes: AtomicU64,
    blobs: AtomicU64,
}

/// All workers' counters and the storage totals.
pub struct Metrics {
    workers: Mutex<Vec<Arc<Worker>>>,
    storage: Arc<StorageStats>,
    /// Listener names, in index order (`"main"` first).
    listeners: Vec<String>,
}

impl Default for Metrics {
    /// Metrics of a server with only the main listener.
    fn default() -> Metrics {
        Metrics::new(vec!["main".to_owned()])
    }
}

impl Metrics {
    /// Metrics for a server with these listeners, in index order.
    pub fn new(listeners: Vec<String>) -> Metrics {
        Metrics {
            workers: Mutex::default(),
            storage: Arc::default(),
            listeners,
        }
    }

    /// Counters for a new worker thread.
    pub fn worker(&self) -> Arc<Worker> {
        let w = Arc::new(Worker::new(self.listeners.len()));
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&w));
        w
    }

    /// Total the stored blobs now and then every `every` on a background thread.
    pub fn watch_storage(&self, storage: Arc<crate::storage::Storage>, every: Duration) {
        let stats = Arc::clone(&self.storage);
        let walk = move || {
            let (bytes, blobs) = storage.usage();
            stats.bytes.store(bytes, Ordering::Relaxed);
            stats.blobs.store(blobs, Ordering::Relaxed);
        };
        let _ = std::thread::Builder::new()
            .name("wharf-metrics".into())
            .spawn(move || {
                loop {
                    walk();
                    std::thread::sleep(every);
                }
            });
    }

    /// The Prometheus text exposition. `uploads` = open upload sessions.
    pub fn render(&self, uploads: usize) -> String {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sum = |f: &dyn Fn(&Worker) -> u64| -> u64 { workers.iter().map(|w| f(w)).sum() };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(16 * 1024);
        let action_name = |a: usize| ACTIONS.get(a).copied().unwrap_or("none");

        out.push_str("# HELP wharf_requests_total Requests answered, by action and status.\n# TYPE wharf_requests_total counter\n");
        for a in 0..N_ACTION {
            for s in 0..N_STATUS {
                let n = sum(&|w| load(&w.requests[a][s]));
                if n > 0 {
                    let status = STATUSES
                        .get(s)
                        .map_or("other".to_owned(), |s| s.to_string());
                    let _ = writeln!(
                        out,
                        "wharf_requests_total{{action=\"{}\",status=\"{status}\"}} {n}",
                        action_name(a)
                    );
                }
            }
        }
        out.push_str("# HELP wharf_request_duration_seconds Time from request head to response sent, by action.\n# TYPE wharf_request_duration_seconds histogram\n");
        for a in 0..N_ACTION {
            let total = sum(&|w| w.durations[a].iter().map(load).sum());
            if total == 0 {
                continue;
            }
            let name = action_name(a);
            let mut cumulative = 0;
            for (b, le) in BUCKETS.iter().enumerate() {
                cumulative += sum(&|w| load(&w.durations[a][b]));
                let _ = writeln!(
                    out,
                    "wharf_request_duration_seconds_bucket{{action=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "wharf_request_duration_seconds_bucket{{action=\"{name}\",le=\"+Inf\"}} {total}"
            );
            let secs = sum(&|w| load(&w.duration_us[a])) as f64 / 1e6;
            let _ = writeln!(
                out,
                "wharf_request_duration_seconds_sum{{action=\"{name}\"}} {secs}\nwharf_request_duration_seconds_count{{action=\"{name}\"}} {total}"
            );
        }
        let gauge_i = |f: &dyn Fn(&Worker) -> i64| -> i64 { workers.iter().map(|w| f(w)).sum() };
        let _ = write!(
            out,
            "# HELP wharf_received_bytes_total Bytes received from clients (request heads and bodies).\n# TYPE wharf_received_bytes_total counter\nwharf_received_bytes_total {}\n\
             # HELP wharf_sent_bytes_total Response body bytes sent.\n# TYPE wharf_sent_bytes_total counter\nwharf_sent_bytes_total {}\n\
             # HELP wharf_requests_in_flight Requests being handled now.\n# TYPE wharf_requests_in_flight gauge\nwharf_requests_in_flight {}\n\
             # HELP wharf_policy_decisions_total Access-policy decisions, by outcome.\n# TYPE wharf_policy_decisions_total counter\n\
             wharf_policy_decisions_total{{decision=\"allow\"}} {}\nwharf_policy_decisions_total{{decision=\"deny\"}} {}\n\
             # HELP wharf_upload_sessions_open Upload sessions known to this process.\n# TYPE wharf_upload_sessions_open gauge\nwharf_upload_sessions_open {uploads}\n\
             # HELP wharf_storage_bytes Bytes of all stored blobs (refreshed every minute).\n# TYPE wharf_storage_bytes gauge\nwharf_storage_bytes {}\n\
             # HELP wharf_storage_blobs Stored blobs (refreshed every minute).\n# TYPE wharf_storage_blobs gauge\nwharf_storage_blobs {}\n",
            sum(&|w| load(&w.bytes_in)),
            sum(&|w| load(&w.bytes_out)),
            gauge_i(&|w| w.in_flight.load(Ordering::Relaxed)),
            sum(&|w| load(&w.decisions[0])),
            sum(&|w| load(&w.decisions[1])),
            self.storage.bytes.load(Ordering::Relaxed),
            self.storage.blobs.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP wharf_build_info The running wharf's version.\n# TYPE wharf_build_info gauge\nwharf_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out.push_str("# HELP wharf_tls_handshakes_total TLS handshakes, by listener, result and the reason a handshake failed.\n# TYPE wharf_tls_handshakes_total counter\n");
        for (l, listener) in self.listeners.iter().enumerate() {
            for (h, (result, reason)) in HANDSHAKES.iter().enumerate() {
                let n = sum(&|w| load(&w.tls[l][h]));
                let _ = writeln!(
                    out,
                    "wharf_tls_handshakes_total{{listener=\"{listener}\",result=\"{result}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP wharf_defence_events_total What the denial-of-service defences did, by event.\n# TYPE wharf_defence_events_total counter\n");
        for (i, event) in DEFENCES.iter().enumerate() {
            let n = sum(&|w| load(&w.defences[i]));
            let _ = writeln!(out, "wharf_defence_events_total{{event=\"{event}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP wharf_response_buffer_bytes Bytes of response buffers in use against limits.response_buffer_budget.\n# TYPE wharf_response_buffer_bytes gauge\nwharf_response_buffer_bytes {}\n\
             # HELP wharf_response_buffer_fallbacks_total Sends that found the budget spent and used small buffers.\n# TYPE wharf_response_buffer_fallbacks_total counter\nwharf_response_buffer_fallbacks_total {}",
            crate::net::budget::in_use(),
            crate::net::budget::fallbacks()
        );
        let lanes = crate::blocking::Lane::ALL.map(|l| (l.name(), crate::blocking::stats(l)));
        type Family = (
            &'static str,
            &'static str,
            &'static str,
            fn(&crate::blocking::Stats) -> u64,
        );
        let families: [Family; 8] = [
            (
                "threads",
                "gauge",
                "Threads running work off the workers, by lane (io: storage.blocking_threads; bulk: hashing, one per worker).",
                |b| b.threads as u64,
            ),
            (
                "queue_capacity",
                "gauge",
                "Jobs that may wait for a thread of the lane.",
                |b| b.capacity as u64,
            ),
            (
                "queued",
                "gauge",
                "Jobs waiting for a thread of the lane.",
                |b| b.queued as u64,
            ),
            (
                "running",
                "gauge",
                "Jobs running on the lane's threads.",
                |b| b.running as u64,
            ),
            (
                "jobs_total",
                "counter",
                "Jobs the lane's threads finished.",
                |b| b.jobs,
            ),
            (
                "full_waits_total",
                "counter",
                "Requests that waited because the lane's queue was full.",
                |b| b.waits,
            ),
            (
                "inline_total",
                "counter",
                "Clean-ups run on a worker because the io queue was full.",
                |b| b.inline,
            ),
            (
                "panics_total",
                "counter",
                "Jobs that panicked (their request failed).",
                |b| b.panics,
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(
                out,
                "# HELP wharf_blocking_{name} {help}\n# TYPE wharf_blocking_{name} {kind}"
            );
            for (lane, b) in &lanes {
                let _ = writeln!(out, "wharf_blocking_{name}{{lane=\"{lane}\"}} {}", value(b));
            }
        }
        let _ = write!(
            out,
            "# HELP wharf_log_queue_lines Log lines waiting for the writer thread (at most {}).\n# TYPE wharf_log_queue_lines gauge\nwharf_log_queue_lines {}\n\
             # HELP wharf_log_lines_dropped_total Log lines dropped because the log sink was stuck and the queue full.\n# TYPE wharf_log_lines_dropped_total counter\nwharf_log_lines_dropped_total {}\n",
            crate::logq::QUEUE_LINES,
            crate::logq::queued(),
            crate::logq::dropped()
        );
        let _ = writeln!(
            out,
            "# HELP wharf_connections_parked Client connections idle past 250 ms (or not yet read from) holding no buffers.\n# TYPE wharf_connections_parked gauge\nwharf_connections_parked {}",
            crate::http::conn::parked()
        );
        out.push_str("# HELP wharf_file_sends_total Blob bodies not held in memory, by how they were sent: from a file to plain-HTTP peers (sendfile, a copy of what is not cached), from a file through TLS, a stream from the storage backend.\n# TYPE wharf_file_sends_total counter\n");
        for (path, n) in crate::net::file::SEND_PATHS
            .iter()
            .zip(crate::net::file::sends())
        {
            let _ = writeln!(out, "wharf_file_sends_total{{path=\"{path}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP wharf_direct_write_bytes_total Pushed bytes written to the filesystem store around the page cache (O_DIRECT).\n# TYPE wharf_direct_write_bytes_total counter\nwharf_direct_write_bytes_total {}",
            crate::storage::direct_write_bytes()
        );
        let _ = writeln!(
            out,
            "# HELP wharf_client_idle_connections Idle keep-alive connections to object stores and upstreams, all workers (at most 32 per endpoint and worker).\n# TYPE wharf_client_idle_connections gauge\nwharf_client_idle_connections {}",
            crate::client::idle_connections_total()
        );
        out.push_str("# HELP wharf_objectstore_requests_total Requests to the object store by operation; failed: no answer, or one other than success, not found or a failed precondition.\n# TYPE wharf_objectstore_requests_total counter\n");
        let ops = crate::storage::s3::api::op_counts();
        for (op, c) in crate::storage::s3::api::OPS.iter().zip(&ops) {
            let _ = writeln!(
                out,
                "wharf_objectstore_requests_total{{op=\"{op}\",outcome=\"ok\"}} {}\nwharf_objectstore_requests_total{{op=\"{op}\",outcome=\"failed\"}} {}",
                c.requests - c.failed,
                c.failed
            );
        }
        out.push_str("# HELP wharf_objectstore_request_duration_seconds Time from sending a request to the object store to its response head (or its failure), by operation.\n# TYPE wharf_objectstore_request_duration_seconds histogram\n");
        for (op, c) in crate::storage::s3::api::OPS.iter().zip(&ops) {
            let mut cumulative = 0;
            for (n, le) in c.buckets.iter().zip(BUCKETS) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "wharf_objectstore_request_duration_seconds_bucket{{op=\"{op}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let total: u64 = c.buckets.iter().sum();
            let _ = writeln!(
                out,
                "wharf_objectstore_request_duration_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {total}\nwharf_objectstore_request_duration_seconds_sum{{op=\"{op}\"}} {}\nwharf_objectstore_request_duration_seconds_count{{op=\"{op}\"}} {total}",
                c.seconds
            );
        }
        let _ = writeln!(
            out,
            "# HELP wharf_objectstore_retries_total Requests to the object store sent again after a throttling answer (503, 429; for reads also 500, 502, 504), at most three times each.\n# TYPE wharf_objectstore_retries_total counter\nwharf_objectstore_retries_total {}",
            crate::storage::s3::api::retries()
        );
        let (renewed, failed, expires) = crate::storage::s3::credentials::renewals();
        let _ = writeln!(
            out,
            "# HELP wharf_objectstore_credential_renewals_total Times the object store's credentials were replaced (renewed from the STS, or read again from changed files) or failed to be.\n# TYPE wharf_objectstore_credential_renewals_total counter\nwharf_objectstore_credential_renewals_total{{outcome=\"ok\"}} {renewed}\nwharf_objectstore_credential_renewals_total{{outcome=\"failed\"}} {failed}\n# HELP wharf_objectstore_credentials_expiry_timestamp_seconds When the object store's temporary credentials expire (0: keys that do not).\n# TYPE wharf_objectstore_credentials_expiry_timestamp_seconds gauge\nwharf_objectstore_credentials_expiry_timestamp_seconds {expires}"
        );
        let _ = writeln!(
            out,
            "# HELP wharf_s3_part_bytes_in_flight Bytes of multipart parts being uploaded to the object store, all pushes (each push up to 3 parts at once while the total stays under {} bytes; a push always has one).\n# TYPE wharf_s3_part_bytes_in_flight gauge\nwharf_s3_part_bytes_in_flight {}",
            crate::storage::s3::writer::PART_BUDGET,
            crate::storage::s3::writer::part_bytes_in_flight()
        );
        crate::mirror::write_metrics(&mut out);
        let (skipped, written) = crate::storage::s3::listed::counts();
        let _ = writeln!(
            out,
            "# HELP wharf_s3_catalog_writes_total Catalog entries a push on the S3 backend wrote (written) or knew to be there already (skipped: the worker wrote or saw it before; at most 4,096 repositories remembered per worker).\n# TYPE wharf_s3_catalog_writes_total counter\nwharf_s3_catalog_writes_total{{outcome=\"skipped\"}} {skipped}\nwharf_s3_catalog_writes_total{{outcome=\"written\"}} {written}"
        );
        crate::hits::render(
            &mut out,
            "wharf_s3_revision_cache_total",
            "Manifest GETs by tag on the S3 backend whose revision came from the per-worker cache (hit) or the object store (miss); at most 1,024 revisions and 8 MiB per worker.",
            crate::storage::s3::revisions::counts(),
        );
        crate::hits::render(
            &mut out,
            "wharf_s3_blob_cache_total",
            "Blob GETs on the S3 backend whose bytes came from the per-worker cache of small blobs (hit; the repository's link is still asked for) or from the object store (miss); at most 4,096 blobs and 8 MiB per worker.",
            crate::storage::s3::kept::blob_counts(),
        );
        let (written, skipped, failed) = crate::storage::s3::note_counts();
        let _ = writeln!(
            out,
            "# HELP wharf_s3_pull_records_total Pulls through a mirror on the S3 backend whose pull record (the last pull, which eviction under upstream.max_size goes by) was rewritten (written), already rewritten by the worker within the minute (skipped; at most 4,096 manifests remembered per worker), or not written for a store error (failed).\n# TYPE wharf_s3_pull_records_total counter\nwharf_s3_pull_records_total{{outcome=\"failed\"}} {failed}\nwharf_s3_pull_records_total{{outcome=\"skipped\"}} {skipped}\nwharf_s3_pull_records_total{{outcome=\"written\"}} {written}"
        );
        let _ = writeln!(
            out,
            "# HELP wharf_sendfile_cold_windows_total File windows (8 MiB) a plain-HTTP send found not all in the page cache: copied through a pooled block, or read on the blocking pool before sendfile.\n# TYPE wharf_sendfile_cold_windows_total counter\nwharf_sendfile_cold_windows_total {}",
            crate::net::file::cold_windows()
        );
        let _ = writeln!(
            out,
            "# HELP wharf_cold_windows_copied_total Of wharf_sendfile_cold_windows_total, the windows copied through a pooled 1 MiB block (the rest: limits.response_buffer_budget was spent).\n# TYPE wharf_cold_windows_copied_total counter\nwharf_cold_windows_copied_total {}",
            crate::net::file::copied_windows()
        );
        let _ = writeln!(
            out,
            "# HELP wharf_password_checks_total Password-hash (argon2) checks run: known users', and the decoy hash's for unknown usernames.\n# TYPE wharf_password_checks_total counter\nwharf_password_checks_total {}",
            crate::auth::password_checks()
        );
        let [hit, joined, miss] = crate::auth::cache::lookups();
        let _ = writeln!(
            out,
            "# HELP wharf_credential_cache_total Authorization headers with Basic credentials answered from the worker's cache of verified and refused headers (hit; at most auth.credential_cache_size of each per worker, for auth.credential_cache_ttl), by waiting for the check of the same header already running (joined), or by a check of their own (miss).\n# TYPE wharf_credential_cache_total counter\nwharf_credential_cache_total{{outcome=\"hit\"}} {hit}\nwharf_credential_cache_total{{outcome=\"joined\"}} {joined}\nwharf_credential_cache_total{{outcome=\"miss\"}} {miss}"
        );
        crate::hits::render(
            &mut out,
            "wharf_client_certificate_cache_total",
            &format!(
                "Verified client certificates whose identity came from the worker's cache (hit; at most {} certificates per worker) or was parsed (miss).",
                crate::tls::identity::CACHE_MAX
            ),
            crate::tls::identity::cache_counts(),
        );
        crate::hits::render(
            &mut out,
            "wharf_policy_regex_cache_total",
            &format!(
                "Policy matches() calls whose regex came from the worker's cache (hit; at most {} patterns per worker, further ones compiled for each use) or was compiled (miss).",
                crate::policy::compile::REGEX_CACHE_MAX
            ),
            crate::policy::compile::regex_cache_counts(),
        );
        let _ = writeln!(
            out,
            "# HELP wharf_connection_panics_total Connection tasks that panicked (each closed its connection).\n# TYPE wharf_connection_panics_total counter\nwharf_connection_panics_total {}",
            crate::task::connection_panics()
        );
        out.push_str("# HELP wharf_connections_open Open client connections, by listener.\n# TYPE wharf_connections_open gauge\n");
        for (i, name) in self.listeners.iter().enumerate() {
            let open = gauge_i(&|w| w.connections[i].load(Ordering::Relaxed));
            let _ = writeln!(out, "wharf_connections_open{{listener=\"{name}\"}} {open}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_BLOB: usize = 1;

    #[test]
    fn counts_sum_over_workers_and_histograms_are_cumulative() {
        let m = Metrics::default();
        let (a, b) = (m.worker(), m.worker());
        a.request(Some(GET_BLOB), 200, Duration::from_micros(300), 10);
        b.request(Some(GET_BLOB), 200, Duration::from_millis(3), 5);
        b.request(None, 404, Duration::from_secs(20), 0);
        a.decision(true);
        b.decision(false);
        b.handshake(0, Handshake::Resumed);
        assert_eq!(ACTIONS[GET_BLOB], "get-blob");
        let text = m.render(2);
        assert!(
            text.contains("wharf_requests_total{action=\"get-blob\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("wharf_requests_total{action=\"none\",status=\"404\"} 1\n"));
        assert!(text.contains(
            "wharf_request_duration_seconds_bucket{action=\"get-blob\",le=\"0.0005\"} 1\n"
        ));
        assert!(text.contains(
            "wharf_request_duration_seconds_bucket{action=\"get-blob\",le=\"0.005\"} 2\n"
        ));
        assert!(
            text.contains("wharf_request_duration_seconds_bucket{action=\"none\",le=\"10\"} 0\n")
        );
        assert!(
            text.contains("wharf_request_duration_seconds_bucket{action=\"none\",le=\"+Inf\"} 1\n")
        );
        assert!(text.contains("wharf_sent_bytes_total 15\n"));
        assert!(text.contains("wharf_policy_decisions_total{decision=\"deny\"} 1\n"));
        assert!(text.contains(
            "wharf_tls_handshakes_total{listener=\"main\",result=\"resumed\",reason=\"none\"} 1\n"
        ));
        assert!(text.contains("wharf_upload_sessions_open 2\n"));
    }
}
