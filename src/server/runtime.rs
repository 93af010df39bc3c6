//! The runtime: the I/O driver, one monoio runtime per worker thread binding every listener with
//! SO_REUSEPORT, the accept loops, signals (reload, shutdown) and the scheduled collector.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use monoio::net::{ListenerOpts, TcpListener};

use crate::config::{Config, IoDriver};
use crate::metrics::Defence;
use crate::registry::{Registry, Settings};
use crate::storage::Storage;
use crate::tls::Acceptor;

use super::app::{App, Listener, ListenerSpec, Local, StartError};
use super::shutdown::Shutdown;
use super::{connection, idle, limits, live, notify};

/// The driver to run, after `WHARF_IO_DRIVER` and detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Pick the I/O driver: `WHARF_IO_DRIVER` (auto|io_uring|epoll) overrides `server.io_driver`.
pub fn choose_driver(configured: IoDriver) -> Result<Driver, StartError> {
    let wanted = match std::env::var("WHARF_IO_DRIVER").ok().as_deref() {
        Some("epoll") => IoDriver::Epoll,
        Some("io_uring") => IoDriver::IoUring,
        Some("auto") => IoDriver::Auto,
        Some(other) => {
            return Err(StartError::Other(format!(
                "WHARF_IO_DRIVER={other:?}: use auto, io_uring or epoll"
            )));
        }
        None => configured,
    };
    let uring = monoio::utils::detect_uring();
    match wanted {
        IoDriver::Epoll => Ok(Driver::Epoll),
        IoDriver::IoUring if uring => Ok(Driver::IoUring),
        IoDriver::IoUring => Err(StartError::NoUring),
        IoDriver::Auto if uring => Ok(Driver::IoUring),
        IoDriver::Auto => Ok(Driver::Epoll),
    }
}

/// Run the server until SIGTERM/SIGINT; returns after in-flight requests finished (or the grace ran
/// out). With the config file's `path`, SIGHUP and changes to the file reload it.
pub fn run(cfg: Config, path: Option<std::path::PathBuf>) -> Result<(), StartError> {
    let driver = choose_driver(cfg.server.io_driver)?;
    // TLS first: a broken certificate must stop startup before anything listens.
    let listeners = ListenerSpec::all(&cfg)?;
    let shared = Arc::new(live::Shared::new(live::Live::from_config(&cfg, None)?));
    if let Ok(access) = crate::policy::AccessControl::from_config(&cfg) {
        for w in super::exposure::warnings(&cfg, &access) {
            tracing::warn!("{w}");
        }
    }
    let root = cfg.storage.root.clone();
    let limits = crate::storage::SessionLimits {
        max: cfg.limits.max_upload_sessions,
        per_client: cfg.limits.max_upload_sessions_per_client,
        idle: cfg.limits.upload_idle_timeout,
    };
    let storage = match (&cfg.storage.backend, &cfg.storage.s3) {
        (crate::config::StorageBackend::S3, Some(s3)) => {
            let store = crate::storage::s3::connect(s3).map_err(StartError::Other)?;
            let opts = crate::storage::s3::Options {
                limits,
                redirect: s3.redirect.then_some(s3.redirect_ttl),
                grace: cfg.gc.grace,
            };
            Storage::object_store(store, opts)
        }
        _ => Storage::filesystem(&root, limits, cfg.gc.grace).map_err(|source| {
            StartError::Storage {
                path: root.display().to_string(),
                source,
            }
        })?,
    };
    // Held for the process's life: a second `wharf serve` on this root must not start.
    let _serving = match cfg.storage.backend {
        crate::config::StorageBackend::Filesystem => Some(serve_lock(&root)?),
        _ => None,
    };
    let storage = Arc::new(storage);
    expire_idle_sessions(Arc::clone(&storage))?;
    if !cfg.gc.interval.is_zero() {
        schedule_gc(Arc::clone(&storage), &cfg.gc, cfg.cache_budgets())?;
    }
    // Blobs on their way from an upstream are spooled beside the store (or in the temp dir).
    let spool_dir = match cfg.storage.backend {
        crate::config::StorageBackend::Filesystem => root.clone(),
        _ => std::env::temp_dir(),
    };
    let mirror = crate::mirror::Mirror::new(&cfg.upstream, spool_dir).map_err(StartError::Other)?;
    let settings = Settings {
        max_manifest_size: cfg.global.max_manifest_size,
        max_blob_size: cfg.global.max_blob_size,
    };
    crate::storage::set_direct_writes(cfg.storage.direct_writes);
    crate::blocking::start(cfg.blocking_threads(), cfg.threads())
        .map_err(|e| StartError::Other(format!("cannot start the blocking threads: {e}")))?;
    crate::sys::raise_nofile_limit();
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(cfg.server.backlog);
    let mut listeners = listeners;
    for l in &mut listeners {
        l.addr = probe_port(l)?;
    }
    let mut addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.addr).collect();
    let names: Vec<String> = listeners.iter().map(|l| l.name.to_string()).collect();
    let app = Arc::new(App {
        registry: Registry::new(storage, settings, mirror),
        live: Arc::clone(&shared),
        listeners,
        limits: crate::http::Limits::from(&cfg.server.http),
        connections: Arc::new(limits::ConnectionCap::new(
            cfg.limits.max_connections,
            cfg.limits.max_connections_per_client,
        )),
        metrics: crate::metrics::Metrics::new(names),
        shutdown_grace: cfg.server.shutdown_grace,
    });

    app.metrics
        .watch_storage(Arc::clone(app.registry.storage()), Duration::from_secs(60));
    let threads = cfg.threads();
    let mut stops = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for idx in 0..threads {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let worker_app = Arc::clone(&app);
        let bind = addrs.clone();
        let handle = std::thread::Builder::new()
            .name(format!("wharf-worker-{idx}"))
            .spawn(move || worker(driver, opts, bind, worker_app, ready_tx, stop_rx))
            .map_err(|e| StartError::Other(format!("cannot start worker thread: {e}")))?;
        // The first worker resolves port 0; the others join the same ports.
        match ready_rx.recv() {
            Ok(Ok(bound)) => addrs = bound,
            Ok(Err((i, source))) => {
                return Err(StartError::Bind {
                    key: app.listeners[i].key.clone(),
                    addr: addrs[i],
                    source,
                });
            }
            Err(_) => {
                return Err(StartError::Other(
                    "worker thread exited during start".into(),
                ));
            }
        }
        stops.push(stop_tx);
        handles.push(handle);
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        threads,
        driver = driver.name(),
        storage = %root.display(),
        "wharf started"
    );
    if crate::FAULT_HOOKS && std::env::var_os("WHARF_FAULT_HOOKS").is_some_and(|v| v == "1") {
        tracing::warn!("test-only fault hooks are on: GET /_fault/... makes tasks panic");
    }
    for l in &app.listeners {
        if let Some(tls) = &l.tls {
            tls.watch();
        }
    }
    let config_reloader = path.map(|p| Arc::new(live::Reloader::new(p, cfg.clone())));
    if let Some(r) = &config_reloader {
        r.watch(Arc::clone(&shared));
    }
    // Before announcing readiness: a SIGHUP right after READY=1 must reload, not kill.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| StartError::Other(format!("cannot install signal handlers: {e}")))?;
    // One fixed line on stdout so scripts and tests learn the bound addresses: the main
    // listener's URL first, then ` <name>=<url>` for every other listener.
    let mut line = format!(
        "wharf listening on {} (threads={threads}, driver={})",
        app.listeners[0].url(addrs[0]),
        driver.name()
    );
    for (l, addr) in app.listeners.iter().zip(&addrs).skip(1) {
        line.push_str(&format!(" {}={}", l.name, l.url(*addr)));
    }
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|_| out.flush());
    }
    notify::notify(&format!(
        "READY=1\nSTATUS=listening on {}\nMAINPID={}",
        addrs[0],
        std::process::id()
    ));

    for sig in signals.forever() {
        if sig == SIGHUP {
            notify::notify("RELOADING=1");
            for l in &app.listeners {
                if let Some(tls) = &l.tls {
                    let _ = tls.reload("SIGHUP");
                }
            }
            match &config_reloader {
                Some(r) => {
                    r.reload(&shared, "SIGHUP");
                }
                None => tracing::info!("SIGHUP: no config file to reload (embedded default)"),
            }
            notify::notify("READY=1");
            continue;
        }
        notify::notify("STOPPING=1");
        tracing::info!(
            signal = sig,
            "shutting down: no new connections, finishing in-flight requests"
        );
        break;
    }
    for s in stops {
        let _ = s.send(());
    }
    for h in handles {
        let _ = h.join();
    }
    tracing::info!("wharf stopped");
    Ok(())
}

/// Drop idle upload sessions from memory on their own thread, a few times per timeout.
fn expire_idle_sessions(storage: Arc<Storage>) -> Result<(), StartError> {
    let every = (storage.session_limits().idle / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    std::thread::Builder::new()
        .name("wharf-uploads".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let gone = storage.expire_idle_sessions();
                if gone > 0 {
                    tracing::debug!("{gone} idle upload sessions left memory");
                }
            }
        })
        .map_err(|e| StartError::Other(format!("cannot start the upload-session thread: {e}")))?;
    Ok(())
}

/// Run garbage collection every `gc.interval` on its own thread (it blocks on the filesystem).
fn schedule_gc(
    storage: Arc<Storage>,
    gc: &crate::config::GcConfig,
    budgets: Vec<(String, u64)>,
) -> Result<(), StartError> {
    let opts = crate::storage::GcOptions {
        grace: gc.grace,
        delete_untagged: gc.delete_untagged,
        dry_run: false,
        budgets,
    };
    let interval = gc.interval;
    std::thread::Builder::new()
        .name("wharf-gc".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let started = Instant::now();
                let mut log = |l: String| tracing::debug!(target: "wharf::gc", "{l}");
                match storage.collect_garbage(&opts, &mut log) {
                    Ok(r) => tracing::info!(
                        target: "wharf::gc",
                        manifests = r.manifests.len(),
                        blobs = r.blobs.len(),
                        bytes = r.bytes,
                        uploads = r.uploads,
                        young = r.young,
                        stopped_early = r.stopped_early,
                        "garbage collection done in {:?}",
                        started.elapsed()
                    ),
                    Err(e) => tracing::warn!(target: "wharf::gc", "garbage collection failed: {e}"),
                }
            }
        })
        .map_err(|e| StartError::Other(format!("cannot start the gc thread: {e}")))?;
    Ok(())
}

/// Bind `l`'s address once without `SO_REUSEPORT`: that fails while any other process listens
/// there (with or without the option), so wharf's workers share a port only with each other. Port 0
/// is resolved here. The probe closes before the workers bind.
fn probe_port(l: &ListenerSpec) -> Result<SocketAddr, StartError> {
    let bind_error = |source: std::io::Error| {
        let source = if source.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                source.kind(),
                "address already in use: another process (perhaps another wharf serve) listens there; stop it or choose another port",
            )
        } else {
            source
        };
        StartError::Bind {
            key: l.key.clone(),
            addr: l.addr,
            source,
        }
    };
    let probe = std::net::TcpListener::bind(l.addr).map_err(bind_error)?;
    probe.local_addr().map_err(bind_error)
}

/// `<root>/serve.lock`, flocked for as long as this server runs (`wharf gc` and `fsck` take no
/// part in it and keep working beside the server). It holds the server's pid for the error.
fn serve_lock(root: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::fd::AsRawFd as _;
    let storage_error = |source: std::io::Error| StartError::Storage {
        path: root.display().to_string(),
        source,
    };
    let path = root.join("serve.lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(storage_error)?;
    if crate::sys::try_lock_exclusive(f.as_raw_fd()).is_err() {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(storage_error(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "another wharf serve (pid {}) already serves this storage root ({} is locked); stop it, or give this one another storage.root",
                pid.trim(),
                path.display()
            ),
        )));
    }
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| writeln!(f, "{}", std::process::id()))
        .map_err(storage_error)?;
    Ok(f)
}

/// A worker's start: the bound addresses, or `Err((listener index, error))`.
type Ready = mpsc::Sender<Result<Vec<SocketAddr>, (usize, std::io::Error)>>;

fn worker(
    driver: Driver,
    opts: ListenerOpts,
    addrs: Vec<SocketAddr>,
    app: Arc<App>,
    ready: Ready,
    stop: oneshot::Receiver<()>,
) {
    crate::net::file::use_ring(driver == Driver::IoUring);
    let fut = worker_main(opts, addrs, app, ready.clone(), stop);
    // A panic that reaches the runtime ends this worker: the process must not go on without it.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match driver {
        Driver::IoUring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(1024)
            .build()
            .map(|mut rt| rt.block_on(fut)),
        Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(fut)),
    }));
    match ran {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = ready.send(Err((0, e)));
        }
        Err(panic) => crate::task::fatal("a worker thread", &*panic),
    }
}

async fn worker_main(
    opts: ListenerOpts,
    addrs: Vec<SocketAddr>,
    app: Arc<App>,
    ready: Ready,
    mut stop: oneshot::Receiver<()>,
) {
    let mut sockets = Vec::with_capacity(addrs.len());
    let mut bound = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.into_iter().enumerate() {
        match TcpListener::bind_with_config(addr, &opts).and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((a, l)) => {
                bound.push(a);
                sockets.push(l);
            }
            Err(e) => {
                let _ = ready.send(Err((i, e)));
                return;
            }
        }
    }
    let _ = ready.send(Ok(bound));
    let local = Rc::new(Local {
        limits: Rc::new(app.limits.clone()),
        shutdown: Shutdown::default(),
        live: live::PerWorker::new(&app.live),
        refused: std::cell::Cell::new(0),
        metrics: app.metrics.worker(),
        idle: idle::Idle::default(),
    });
    // One accept loop per listener; each ends when the stop signal fires.
    let stopped = Rc::new(Shutdown::default());
    let mut loops = Vec::with_capacity(sockets.len());
    let certificate_ports = ListenerSpec::certificate_ports(&app.listeners);
    for (index, (socket, spec)) in sockets.into_iter().zip(&app.listeners).enumerate() {
        let listener = Rc::new(Listener {
            index,
            name: Arc::clone(&spec.name),
            tls: spec.tls.clone().map(Acceptor::new),
            admin: spec.admin,
            asks_certificates: spec.asks_certificates(),
            elsewhere: certificate_ports.clone(),
        });
        loops.push(crate::task::spawn(
            "an accept loop",
            accept_loop(
                socket,
                listener,
                Arc::clone(&app),
                Rc::clone(&local),
                Rc::clone(&stopped),
            ),
        ));
    }
    let _ = (&mut stop).await;
    stopped.trigger();
    for l in loops {
        l.await;
    }
    let shutdown = &local.shutdown;
    shutdown.trigger();
    let deadline = Instant::now() + app.shutdown_grace;
    while shutdown.active() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if shutdown.active() > 0 {
        tracing::warn!(
            open = shutdown.active(),
            "shutdown grace elapsed; closing remaining connections"
        );
    }
}

/// Accept connections on one listener until `stopped` fires.
async fn accept_loop(
    socket: TcpListener,
    listener: Rc<Listener>,
    app: Arc<App>,
    local: Rc<Local>,
    stopped: Rc<Shutdown>,
) {
    loop {
        monoio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    let make_room = || {
                        let evicted = local.idle.evict_oldest();
                        if evicted {
                            local.metrics.defence(Defence::IdleEvicted);
                        }
                        evicted
                    };
                    match app.connections.admit(peer.ip(), make_room) {
                        Ok(slot) => {
                            crate::task::spawn_connection(peer, connection::serve(
                                stream,
                                peer,
                                Arc::clone(&app),
                                Rc::clone(&local),
                                Rc::clone(&listener),
                                slot,
                            ));
                        }
                        Err(refusal) => {
                            local.metrics.defence(match refusal {
                                limits::Refusal::Global => Defence::GlobalConnectionCap,
                                limits::Refusal::Client => Defence::ClientConnectionCap,
                            });
                            crate::task::spawn_connection(peer, connection::over_capacity(
                                stream,
                                peer,
                                refusal,
                                Rc::clone(&local),
                                Rc::clone(&listener),
                            ));
                        }
                    }
                }
                Err(e) => {
                    // Out of descriptors or similar: back off briefly instead of spinning.
                    tracing::warn!("accept failed on listener {}: {e}", listener.name);
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = stopped.wait() => break,
        }
    }
}
