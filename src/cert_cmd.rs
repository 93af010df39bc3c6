//! `wharf cert`: a CA, server and client certificates, renewal, revocation, client set-up, and
//! the token signing key, without the openssl ceremony.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum CertCommand {
    /// A new CA: OUT/NAME.crt and OUT/NAME.key (0600). Separate CAs for servers and clients:
    /// `--name server-ca` and `--name client-ca`, then `--ca` on the other commands.
    Ca {
        /// The CA's Common Name.
        #[arg(long, default_value = "wharf CA")]
        cn: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Directory for the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value = "ca")]
        name: String,
    },
    /// A server certificate signed by OUT/CA.crt: OUT/NAME.crt and OUT/NAME.key (serverAuth, SANs).
    Server {
        /// DNS name clients use (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// IP address clients use (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        #[arg(long, default_value_t = 397)]
        days: u32,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value = "server")]
        name: String,
        /// The signing CA's name in OUT (OUT/CA.crt, OUT/CA.key).
        #[arg(long, default_value = "ca")]
        ca: String,
        #[command(flatten)]
        renew: Renew,
    },
    /// A client certificate signed by OUT/CA.crt: OUT/NAME.crt and OUT/NAME.key (clientAuth).
    Client {
        /// Subject Common Name (identity.certificate.common_names). Required unless --renew.
        #[arg(long, required_unless_present = "renew")]
        cn: Option<String>,
        /// Subject Organization (identity.certificate.organizations).
        #[arg(long = "org")]
        orgs: Vec<String>,
        #[arg(long, default_value_t = 397)]
        days: u32,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value = "client")]
        name: String,
        /// The signing CA's name in OUT (OUT/CA.crt, OUT/CA.key).
        #[arg(long, default_value = "ca")]
        ca: String,
        #[command(flatten)]
        renew: Renew,
    },
    /// A token signing key for `auth.token.signing_key`: OUT/NAME.pem (PKCS#8, 0600), Ed25519
    /// unless --ecdsa (P-256). Rotate by writing a new one over the old and reloading: tokens
    /// the old key signed stay valid until they expire.
    TokenKey {
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value = "token-key")]
        name: String,
        /// ECDSA P-256 (ES256) instead of Ed25519 (EdDSA).
        #[arg(long)]
        ecdsa: bool,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate: add it to OUT/CA.crl (PEM, made if absent, signed by OUT/CA.key),
    /// the file `client_crl` names. A running server picks the new CRL up by itself.
    Revoke {
        /// The certificate to revoke (PEM).
        #[arg(long)]
        cert: PathBuf,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The CA that issued it, by name in OUT.
        #[arg(long, default_value = "ca")]
        ca: String,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Copy FROM/CA.crt and FROM/NAME.{crt,key} to DIR/REGISTRY/{ca.crt,client.cert,client.key} and
    /// write DIR/REGISTRY/hosts.toml (DIR = /etc/docker/certs.d, /etc/containers/certs.d or
    /// /etc/containerd/certs.d).
    InstallClient {
        /// The registry as clients name it: host or host:port.
        #[arg(long)]
        registry: String,
        /// The certs.d directory.
        #[arg(long)]
        dir: PathBuf,
        /// Where `wharf cert ca` and `wharf cert client` wrote their files.
        #[arg(long, default_value = ".")]
        from: PathBuf,
        #[arg(long, default_value = "client")]
        name: String,
        /// The CA that signed the *server's* certificate, by name in FROM.
        #[arg(long, default_value = "ca")]
        ca: String,
    },
}

/// `--renew`: re-issue OUT/NAME.crt with its names and usage and a new validity.
#[derive(clap::Args)]
pub(crate) struct Renew {
    /// Re-issue the existing OUT/NAME.crt (same names and usage, new validity and serial), keeping
    /// OUT/NAME.key; the files are replaced atomically.
    #[arg(long)]
    renew: bool,
    /// With --renew: a new key pair as well.
    #[arg(long, requires = "renew")]
    new_key: bool,
}

pub(crate) fn cert(cmd: CertCommand) -> Result<(), wharf::tls::certs::CertError> {
    use wharf::tls::{certs, lifecycle};
    let ca_of = |dir: &Path, name: &str| {
        certs::load(
            &dir.join(format!("{name}.crt")),
            &dir.join(format!("{name}.key")),
        )
    };
    let written = |(crt, key): (PathBuf, PathBuf)| {
        println!("wrote {} and {} (0600)", crt.display(), key.display());
    };
    // Renewal replaces the pair; the key file only when it changed.
    let renewed = |out: &Path, name: &str, ca: &certs::Issued, days: u32, r: &Renew| {
        let (crt, key) = (
            out.join(format!("{name}.crt")),
            out.join(format!("{name}.key")),
        );
        let old_key = std::fs::read_to_string(&key).map_err(|source| certs::CertError::Io {
            path: key.clone(),
            source,
        })?;
        let issued = lifecycle::renew(ca, &crt, &old_key, days, r.new_key)?;
        if r.new_key {
            certs::replace(&key, &issued.key_pem, 0o600)?;
        }
        certs::replace(&crt, &issued.cert_pem, 0o644)?;
        let kept = if r.new_key { "new key" } else { "key kept" };
        println!(
            "renewed {} for {days} days ({kept}: {})",
            crt.display(),
            key.display()
        );
        Ok(())
    };
    match cmd {
        CertCommand::Ca {
            cn,
            days,
            out,
            name,
        } => {
            let ca = certs::new_ca(&cn, days)?;
            certs::write_pair(&out, &name, &ca).map(written)
        }
        CertCommand::Server {
            hosts,
            ips,
            days,
            out,
            name,
            ca,
            renew,
        } => {
            let ca = ca_of(&out, &ca)?;
            if renew.renew {
                return renewed(&out, &name, &ca, days, &renew);
            }
            let issued = certs::server(&ca, &hosts, &ips, days)?;
            certs::write_pair(&out, &name, &issued).map(written)
        }
        CertCommand::Client {
            cn,
            orgs,
            days,
            out,
            name,
            ca,
            renew,
        } => {
            let ca = ca_of(&out, &ca)?;
            if renew.renew {
                return renewed(&out, &name, &ca, days, &renew);
            }
            let cn = cn.expect("clap requires --cn without --renew");
            let issued = certs::client(&ca, &cn, &orgs, days)?;
            certs::write_pair(&out, &name, &issued).map(written)
        }
        CertCommand::TokenKey {
            out,
            name,
            ecdsa,
            force,
        } => {
            let pem = wharf::token::keys::generate(ecdsa).map_err(certs::CertError::Invalid)?;
            let path = out.join(format!("{name}.pem"));
            if force {
                certs::replace(&path, &pem, 0o600)?;
            } else {
                certs::write_new(&path, &pem, 0o600)?;
            }
            println!("wrote {} (0600)", path.display());
            Ok(())
        }
        CertCommand::Revoke {
            cert,
            out,
            ca,
            days,
        } => {
            let issuer = ca_of(&out, &ca)?;
            let crl = lifecycle::revoke(&issuer, &out, &ca, &cert, days)?;
            println!("revoked {} in {}", cert.display(), crl.display());
            Ok(())
        }
        CertCommand::InstallClient {
            registry,
            dir,
            from,
            name,
            ca,
        } => {
            let d = certs::install_client(
                &registry,
                &dir,
                &from.join(format!("{ca}.crt")),
                &from.join(format!("{name}.crt")),
                &from.join(format!("{name}.key")),
            )?;
            println!(
                "wrote {0}/ca.crt, {0}/client.cert, {0}/client.key (0600) and {0}/hosts.toml",
                d.display()
            );
            Ok(())
        }
    }
}
