//! Certificate rotation without restart: the current material in a `reload::Cell` (workers notice a
//! swap with one atomic load), a `reload::watch` thread that polls the three files' contents, and
//! SIGHUP (wired in `server::run`).

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use rustls_pki_types::{CertificateDer, UnixTime};

use super::material::{self, Material, TlsError};
use crate::config::TlsConfig;

/// The live TLS material of one listener.
pub struct Reloader {
    cfg: TlsConfig,
    /// Its config table (`server.tls`, `server.listener[<i>].tls`), for errors and logs.
    table: String,
    current: crate::reload::Cell<Material>,
    /// Fingerprint of the files last tried (loaded or rejected), so a broken file is reported once.
    seen: Mutex<[u8; 32]>,
}

impl Reloader {
    /// Whether clients are asked for a certificate (a client CA is configured).
    pub fn asks_client_certificates(&self) -> bool {
        self.cfg.client_ca_bundle.is_some()
    }

    /// Load the files configured in `table`; any error here is a startup error.
    pub fn new(cfg: TlsConfig, table: &str) -> Result<Arc<Reloader>, TlsError> {
        let seen = fingerprint(&cfg);
        let material = material::build_material(&cfg).map_err(|e| e.located(table))?;
        Ok(Arc::new(Reloader {
            cfg,
            table: table.to_owned(),
            current: crate::reload::Cell::new(material),
            seen: Mutex::new(seen),
        }))
    }

    /// Reload now (SIGHUP). A failure is logged and the old material stays in use.
    pub fn reload(&self, why: &str) -> Result<(), TlsError> {
        let print = fingerprint(&self.cfg);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = print;
        match material::build_material(&self.cfg).map_err(|e| e.located(&self.table)) {
            Ok(material) => {
                self.current.swap(material);
                tracing::info!(target: "wharf::tls", "{}: TLS material reloaded ({why}); new handshakes use it, sessions from before cannot resume, open connections' certificates are checked again", self.table);
                Ok(())
            }
            Err(e) => {
                tracing::error!(target: "wharf::tls", "{}: TLS reload ({why}) failed, keeping the previous certificates: {e}", self.table);
                Err(e)
            }
        }
    }

    /// Reload if any of the files' contents changed since the last attempt.
    pub fn reload_if_changed(&self) {
        let print = fingerprint(&self.cfg);
        let changed = *self.seen.lock().unwrap_or_else(|e| e.into_inner()) != print;
        if changed {
            let _ = self.reload("files changed");
        }
    }

    /// Poll the files in a background thread for the life of the process.
    pub fn watch(self: &Arc<Self>) {
        let me = Arc::clone(self);
        if let Err(e) = crate::reload::watch("wharf-tls-watch", move || me.reload_if_changed()) {
            tracing::warn!(target: "wharf::tls", "cannot watch TLS files (reload with SIGHUP): {e}");
        }
    }

    fn current(&self) -> (u64, Arc<Material>) {
        self.current.load()
    }

    /// notAfter (Unix seconds) of the material in use: the server certificate, then each client CA.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        self.current().1.expiries.clone()
    }
}

/// SHA-256 over the files' contents (symlinks followed, so secret swaps count), or their errors.
fn fingerprint(cfg: &TlsConfig) -> [u8; 32] {
    let mut h = Sha256::new();
    let paths = [&cfg.server_certificate_bundle, &cfg.server_private_key]
        .into_iter()
        .chain(&cfg.client_ca_bundle)
        .chain(&cfg.client_crl);
    for p in paths {
        match std::fs::read(p) {
            Ok(b) => {
                h.update((b.len() as u64).to_le_bytes());
                h.update(&b);
            }
            Err(e) => h.update(format!("error {:?}", e.kind())),
        }
    }
    h.finalize().into()
}

/// One worker's handle: the material it last saw, refreshed when the generation moves.
pub struct Acceptor {
    reloader: Arc<Reloader>,
    cached: RefCell<(u64, Arc<Material>)>,
}

impl Acceptor {
    pub fn new(reloader: Arc<Reloader>) -> Acceptor {
        let cached = RefCell::new(reloader.current());
        Acceptor { reloader, cached }
    }

    fn refreshed(&self) -> std::cell::Ref<'_, (u64, Arc<Material>)> {
        let g = self.reloader.current.generation();
        if self.cached.borrow().0 != g {
            *self.cached.borrow_mut() = self.reloader.current();
        }
        self.cached.borrow()
    }

    /// The server config for a new handshake (one atomic load when nothing changed).
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.refreshed().1.config)
    }

    /// Hot path: the generation of the material (it moves with every reload).
    pub fn generation(&self) -> u64 {
        self.reloader.current.generation()
    }

    /// Whether a client chain accepted earlier still verifies under the current material (a
    /// reload may have changed the client CAs). `chain` is the leaf, then its intermediates.
    pub fn still_verifies(&self, chain: &[CertificateDer<'static>]) -> bool {
        let current = self.refreshed();
        let (Some(verifier), Some((leaf, intermediates))) =
            (current.1.verifier.as_ref(), chain.split_first())
        else {
            return false;
        };
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }
}
