//! The `wharf` command line: wiring only.
#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wharf::config::Config;

mod cert_cmd;
use cert_cmd::{CertCommand, cert};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// wharf: a fast, trustworthy OCI container registry.
#[derive(Parser)]
#[command(name = "wharf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry (without -c: plain HTTP on 127.0.0.1:5000, storage in ./data).
    Serve {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file, including loading its TLS files (status 0 when valid).
    CheckConfig {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check the [server.tls] files as clients will see them: key match, chain order, expiry, SANs.
    CheckTls {
        #[arg(short, long)]
        config: PathBuf,
        /// A host name or IP clients use to reach wharf (repeatable; default: server.bind_address
        /// unless it is a wildcard address).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Read a password from stdin (one line) and print its argon2id hash for
    /// `[auth.identity.<id>] password`.
    HashPassword,
    /// Make a private CA, server and client certificates, and client certs.d layouts.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Delete unreferenced blobs (and untagged manifests) older than gc.grace; safe while serving.
    ///
    /// Deletes blobs no manifest references and, with gc.delete_untagged, manifests no tag reaches,
    /// once older than gc.grace, plus stale uploads. Safe while the registry is serving.
    Gc {
        /// Configuration file (TOML); without it: storage in ./data, gc defaults.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Override gc.grace (e.g. "30m").
        #[arg(long)]
        grace: Option<String>,
    },
    /// Re-hash every blob and check every tag, manifest and link (exit 1 if anything is broken).
    ///
    /// With --repair, broken files move to <storage.root>/quarantine/<time>/ and are no longer
    /// served; the exit status is 1 while anything unrepairable remains.
    Fsck {
        /// Configuration file (TOML); without it: storage in ./data.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Move what is broken to <storage.root>/quarantine/<time>/ so it is no longer served.
        #[arg(long)]
        repair: bool,
    },
    /// Print the version.
    Version,
}

/// Check every listener's TLS files, each under its table's name.
fn check_tls(path: &Path, hosts: Vec<String>) -> Result<(), String> {
    use wharf::tls::check::{Level, check};
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let binds = std::iter::once(cfg.server.bind_address)
        .chain(cfg.server.listener.iter().map(|l| l.bind_address));
    let mut checked = 0;
    let mut failed = false;
    for ((table, tls), bind) in cfg.tls_tables().zip(binds) {
        let Some(tls) = tls else { continue };
        checked += 1;
        let mut hosts = hosts.clone();
        if hosts.is_empty() && !bind.is_unspecified() {
            hosts.push(bind.to_string());
        }
        println!("[{table}]");
        let report = check(tls, &hosts);
        for (level, msg) in &report.findings {
            let tag = match level {
                Level::Ok => "ok",
                Level::Warning => "warning",
                Level::Error => "error",
            };
            let msg = msg.replace("server.tls", &table);
            println!("{tag}: {msg}");
        }
        failed |= report.has_errors();
    }
    if checked == 0 {
        return Err(format!(
            "{}: no [server.tls] or [server.listener.tls] section",
            path.display()
        ));
    }
    if failed {
        Err("TLS check failed".into())
    } else {
        Ok(())
    }
}

fn hash_password() -> Result<(), String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("password (input is shown; pipe it in to keep it off the screen):");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err("empty password on stdin".into());
    }
    println!("{}", wharf::auth::hash_password(password.as_bytes())?);
    Ok(())
}

fn open_storage(cfg: &Config) -> Result<wharf::storage::Storage, String> {
    let limits = wharf::storage::SessionLimits::default();
    if let (wharf::config::StorageBackend::S3, Some(s3)) = (&cfg.storage.backend, &cfg.storage.s3) {
        let store = wharf::storage::s3::connect(s3)?;
        let opts = wharf::storage::s3::Options {
            limits,
            redirect: None,
            grace: cfg.gc.grace,
        };
        return Ok(wharf::storage::Storage::object_store(store, opts));
    }
    let root = &cfg.storage.root;
    if !root.join("blobs").is_dir() {
        return Err(format!(
            "storage.root {}: no registry storage there",
            root.display()
        ));
    }
    wharf::storage::Storage::filesystem(root, limits, cfg.gc.grace)
        .map_err(|e| format!("storage.root {}: {e}", root.display()))
}

/// Lines to stdout; on a terminal, a progress line on stderr (redrawn at most every 100 ms).
struct Terminal {
    tty: bool,
    drawn: Option<std::time::Instant>,
}

impl Terminal {
    fn new() -> Terminal {
        Terminal {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            drawn: None,
        }
    }

    fn clear(&mut self) {
        if self.drawn.take().is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

impl wharf::storage::Report for Terminal {
    fn line(&mut self, line: String) {
        self.clear();
        println!("{line}");
    }

    fn progress(&mut self, phase: &str, done: u64, total: u64) {
        let due = self
            .drawn
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(100));
        if self.tty && (due || done == total) {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            eprint!("\r\x1b[K{phase}: {done}/{total} ({pct}%)");
            self.drawn = Some(std::time::Instant::now());
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.clear();
    }
}

fn gc(config: Option<&PathBuf>, dry_run: bool, grace: Option<&str>) -> Result<(), String> {
    let cfg = load(config)?;
    let grace = match grace {
        Some(g) => wharf::config::parse_duration(g).map_err(|e| format!("--grace: {e}"))?,
        None => cfg.gc.grace,
    };
    let storage = open_storage(&cfg)?;
    let opts = wharf::storage::GcOptions {
        grace,
        delete_untagged: cfg.gc.delete_untagged,
        dry_run,
        budgets: cfg.cache_budgets(),
    };
    let r = storage
        .collect_garbage(&opts, &mut Terminal::new())
        .map_err(|e| format!("gc: {e}"))?;
    println!(
        "{}{} manifests, {} blobs ({} bytes), {} stale uploads, {} cached images evicted; {} unreferenced blobs younger than {:?} kept{}",
        if dry_run {
            "dry run, would delete: "
        } else {
            "deleted: "
        },
        r.manifests.len(),
        r.blobs.len(),
        r.bytes,
        r.uploads,
        r.evicted.len(),
        r.young,
        grace,
        if r.stopped_early {
            "; stopped early (ran past half the grace period)"
        } else {
            ""
        }
    );
    if r.stopped_early {
        return Err(
            "gc stopped before the sweep finished (it ran past half of the grace period, after which a blob pushed meanwhile could be taken); run it again, or with a longer --grace".into(),
        );
    }
    Ok(())
}

fn fsck(config: Option<&PathBuf>, repair: bool) -> Result<(), String> {
    let cfg = load(config)?;
    let storage = open_storage(&cfg)?;
    let r = {
        let mut term = Terminal::new();
        storage
            .fsck(repair, &mut term)
            .map_err(|e| format!("fsck: {e}"))?
    };
    println!(
        "checked {} blobs ({} bytes), {} manifests, {} tags: {} problems, {} moved to quarantine",
        r.blobs,
        r.bytes,
        r.manifests,
        r.tags,
        r.problems.len(),
        r.problems.len() - r.unresolved()
    );
    match r.unresolved() {
        0 => Ok(()),
        n => Err(format!(
            "{n} problems remain{}",
            if repair {
                ""
            } else {
                " (--repair quarantines what can be)"
            }
        )),
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::embedded_default()),
    }
}

fn main() -> ExitCode {
    wharf::sys::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The server logs through a bounded queue to a writer thread (a worker never waits on
    // stderr); the other commands write directly.
    let log_guard = match &cli.command {
        Command::Serve { .. } => {
            let guard = wharf::logq::start();
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(wharf::logq::Queue)
                .with_ansi(ansi)
                .init();
            match guard {
                Ok(g) => Some(g),
                Err(e) => {
                    eprintln!("wharf: cannot start the log writer thread: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .init();
            None
        }
    };
    let result = match cli.command {
        Command::Serve { config } => load(config.as_ref())
            .and_then(|cfg| wharf::server::run(cfg, config).map_err(|e| e.to_string())),
        Command::CheckConfig { config } => load(Some(&config)).and_then(|cfg| {
            for (table, tls) in cfg.tls_tables() {
                if let Some(tls) = tls {
                    wharf::tls::material::build(tls).map_err(|e| e.located(&table).to_string())?;
                }
            }
            wharf::auth::validate(&cfg.auth).map_err(|e| e.to_string())?;
            // The signing key must load and every OIDC issuer must publish keys, as `serve` needs.
            let tokens = wharf::token::Tokens::from_config(&cfg, None)?;
            for p in tokens.iter().flat_map(|t| &t.providers) {
                let n = p.probe()?;
                println!("auth.oidc.{}: {n} signing keys fetched", p.name);
            }
            let access =
                wharf::policy::AccessControl::from_config(&cfg).map_err(|e| e.to_string())?;
            for w in wharf::server::exposure::warnings(&cfg, &access) {
                println!("warning: {w}");
            }
            if let (wharf::config::StorageBackend::S3, Some(s3)) =
                (&cfg.storage.backend, &cfg.storage.s3)
            {
                // The bucket must answer with these credentials, as `serve` will require.
                wharf::storage::s3::connect(s3)?;
            }
            println!("{}: ok", config.display());
            Ok(())
        }),
        Command::CheckTls { config, hosts } => check_tls(&config, hosts),
        Command::HashPassword => hash_password(),
        Command::Cert(cmd) => cert(cmd).map_err(|e| e.to_string()),
        Command::Gc {
            config,
            dry_run,
            grace,
        } => gc(config.as_ref(), dry_run, grace.as_deref()),
        Command::Fsck { config, repair } => fsck(config.as_ref(), repair),
        Command::Version => {
            println!("wharf {}", env!("CARGO_PKG_VERSION"));
            if wharf::FAULT_HOOKS {
                println!("built with test-only fault hooks");
            }
            Ok(())
        }
    };
    // Queued lines are written before anything else is said.
    drop(log_guard);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf: {e}");
            ExitCode::FAILURE
        }
    }
}
