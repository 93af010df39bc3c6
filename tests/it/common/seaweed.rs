//! A real SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process) for the
//! object-store tests: installed by tests/setup.sh, started per test on free loopback ports with
//! one access key and one bucket, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub const ACCESS_KEY: &str = "wharf-test";
pub const SECRET_KEY: &str = "wharf-test-secret";
pub const BUCKET: &str = "wharf";
/// A second key, with the same secret, that may only read and list the bucket.
pub const READ_ONLY_KEY: &str = "wharf-test-reader";
/// With `start_sts`: the role a web identity token may assume, the audience the token must
/// name, and how long the temporary keys the STS issues for it last.
pub const ROLE_ARN: &str = "arn:aws:iam::role/wharf";
pub const AUDIENCE: &str = "wharf";
pub const STS_LIFETIME: Duration = Duration::from_secs(15);

pub struct Seaweed {
    child: Child,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    /// The S3 gateway's port on 127.0.0.1.
    pub s3_port: u16,
    log: PathBuf,
    /// With TLS on the S3 port: the CA its certificate chains to.
    tls_ca: Option<PathBuf>,
    /// Directories its flags name, removed with it.
    kept: Vec<tempfile::TempDir>,
}

/// The bucket answers a signed request (the gateway starts after master, volume and filer);
/// else what `weed` logged, once it has exited or 60 s have passed.
fn wait_ready(
    child: &mut Child,
    endpoint: &str,
    tls_ca: Option<&std::path::Path>,
    log_file: &std::path::Path,
) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(60);
    let url = format!("{endpoint}/{BUCKET}");
    let log = || std::fs::read_to_string(log_file).unwrap_or_default();
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("weed exited ({status}):\n{}", log()));
        }
        // It may go on running without the server whose port it could not bind.
        if log().contains("Port allocation failed") {
            return Err(format!("weed could not bind a port:\n{}", log()));
        }
        let out = signed_curl(tls_ca, &url)
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I"])
            .output()
            .unwrap();
        if out.stdout == b"200" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "weed did not serve bucket {BUCKET} within 60 s:\n{}",
        log()
    ))
}

/// `curl` for `url`, signed with the test key (and trusting `tls_ca`); options may follow.
fn signed_curl(tls_ca: Option<&std::path::Path>, url: &str) -> Command {
    let mut curl = Command::new("curl");
    if let Some(ca) = tls_ca {
        curl.arg("--cacert").arg(ca);
    }
    curl.args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
        .arg(url);
    curl
}

/// The S3 gateway's URL on `port`.
fn endpoint(port: u16, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}")
}

impl Seaweed {
    pub fn start() -> Seaweed {
        Seaweed::start_with(&[])
    }

    /// The S3 gateway over TLS only, with `pki`'s server certificate (127.0.0.1, localhost).
    pub fn start_tls(pki: &super::pki::Pki) -> Seaweed {
        let cert = format!("-s3.cert.file={}", pki.path("server.crt").display());
        let key = format!("-s3.key.file={}", pki.path("server.key").display());
        Seaweed::start_inner(&[&cert, &key], Some(pki.path("ca.crt")))
    }

    /// With extra `weed mini` flags.
    pub fn start_with(extra: &[&str]) -> Seaweed {
        Seaweed::start_inner(extra, None)
    }

    /// With its STS on the S3 port: `AssumeRoleWithWebIdentity` gives keys for `ROLE_ARN`
    /// (everything on the bucket, for `STS_LIFETIME`) to a token for `AUDIENCE` signed by the
    /// OIDC issuer at `issuer` (its certificate chains to `ca`).
    pub fn start_sts(issuer: &str, ca: &std::path::Path) -> Seaweed {
        let dir = tempfile::tempdir().unwrap();
        let iam = dir.path().join("iam.json");
        let config = serde_json::json!({
            "sts": {
                "tokenDuration": format!("{}s", STS_LIFETIME.as_secs()),
                "maxSessionLength": "1h",
                "issuer": "seaweedfs-sts",
                "signingKey": "d2hhcmYtdGVzdHMtc3RzLXNpZ25pbmcta2V5LTMyYg==",
            },
            "providers": [{"name": "tests", "type": "oidc", "enabled": true, "config": {
                "issuer": issuer, "clientId": AUDIENCE, "jwksUri": format!("{issuer}/jwks"),
            }}],
            "policy": {"defaultEffect": "Deny", "storeType": "memory"},
            "roles": [{"roleName": "wharf", "roleArn": ROLE_ARN, "attachedPolicies": ["bucket"],
                "trustPolicy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                    "Principal": {"Federated": "tests"},
                    "Action": ["sts:AssumeRoleWithWebIdentity"]}]}}],
            "policies": [{"name": "bucket", "document": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["s3:*"], "Resource": [
                    format!("arn:aws:s3:::{BUCKET}"), format!("arn:aws:s3:::{BUCKET}/*")]},
                {"Effect": "Allow", "Action": ["sts:ValidateSession"], "Resource": ["*"]}]}}],
        });
        std::fs::write(&iam, config.to_string()).unwrap();
        let flag = format!("-s3.iam.config={}", iam.display());
        // Go reads the issuer's CA from here to fetch its keys.
        let env = [("SSL_CERT_FILE".to_owned(), ca.display().to_string())];
        let mut weed = Seaweed::start_inner_env(&[&flag], None, &env, "");
        weed.keep(dir);
        weed
    }

    /// With SeaweedFS's local KMS: SSE-KMS writes name any key id, made on first use.
    pub fn start_kms() -> Seaweed {
        let kms = r#","kms":{"default_provider":"local","providers":{"local":{"type":"local","enableOnDemandCreate":true}}}"#;
        Seaweed::start_inner_env(&[], None, &[], kms)
    }

    fn start_inner(extra: &[&str], tls_ca: Option<PathBuf>) -> Seaweed {
        Seaweed::start_inner_env(extra, tls_ca, &[], "")
    }

    /// `s3_json` is appended to the gateway's configuration object (after its identities).
    fn start_inner_env(
        extra: &[&str],
        tls_ca: Option<PathBuf>,
        env: &[(String, String)],
        s3_json: &str,
    ) -> Seaweed {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"wharf","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}},{{"name":"reader","credentials":[{{"accessKey":"{READ_ONLY_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Read","List"]}}]{s3_json}}}"#
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let log = dir.path().join("weed.log");
        std::fs::write(dir.path().join("secret"), SECRET_KEY).unwrap();
        let base: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.config={}", config.display()),
            format!("-bucket={BUCKET}"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            // Virtual-hosted buckets: `<bucket>.s3.wharf.test` (tests/setup.sh maps the name).
            "-s3.domainName=s3.wharf.test".into(),
        ];
        // A port another test bound between our check and `weed`'s makes it exit at once: then
        // again on fresh ports.
        let mut failures = String::new();
        for _ in 0..5 {
            let s3_port = free_port();
            let mut args = base.clone();
            args.push(format!("-s3.port={s3_port}"));
            args.extend(extra.iter().map(|a| a.to_string()));
            for p in [
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
                "admin.port",
                "admin.port.grpc",
            ] {
                args.push(format!("-{p}={}", free_port()));
            }
            let _ = std::fs::remove_file(&log);
            let mut child = Seaweed::spawn(&args, env, &log);
            let endpoint = endpoint(s3_port, tls_ca.is_some());
            match wait_ready(&mut child, &endpoint, tls_ca.as_deref(), &log) {
                Ok(()) => {
                    return Seaweed {
                        child,
                        args,
                        env: env.to_vec(),
                        dir,
                        kept: Vec::new(),
                        s3_port,
                        log,
                        tls_ca,
                    };
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push_str(&e);
                }
            }
        }
        panic!("SeaweedFS did not start in five tries:\n{failures}");
    }

    fn spawn(args: &[String], env: &[(String, String)], log: &std::path::Path) -> Child {
        let mut cmd = Command::new(super::tool("weed"));
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        // The shared instance outlives every test: it dies with the test process.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.args(args)
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(log).unwrap(),
            ))
            .spawn()
            .expect("weed starts")
    }

    /// Start the store again after `kill`, on the same ports and data.
    pub fn restart(&mut self) {
        self.child = Seaweed::spawn(&self.args, &self.env, &self.log);
        let endpoint = self.endpoint();
        if let Err(e) = wait_ready(
            &mut self.child,
            &endpoint,
            self.tls_ca.as_deref(),
            &self.log,
        ) {
            panic!("SeaweedFS did not start again: {e}");
        }
    }

    pub fn endpoint(&self) -> String {
        endpoint(self.s3_port, self.tls_ca.is_some())
    }

    fn keep(&mut self, dir: tempfile::TempDir) {
        self.kept.push(dir);
    }

    /// `AssumeRoleWithWebIdentity` for `ROLE_ARN` with `token`, as a workload would call it:
    /// the HTTP status and the answer's body.
    pub fn assume_role(&self, token: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
            .args(["--data-urlencode", "Action=AssumeRoleWithWebIdentity"])
            .args(["--data-urlencode", "Version=2011-06-15"])
            .args(["--data-urlencode", &format!("RoleArn={ROLE_ARN}")])
            .args(["--data-urlencode", "RoleSessionName=test"])
            .args(["--data-urlencode", &format!("WebIdentityToken={token}")])
            .arg(format!("{}/", self.endpoint()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// `curl` for the object under `key` in the bucket, signed; options may follow.
    pub fn curl(&self, key: &str) -> Command {
        signed_curl(
            self.tls_ca.as_deref(),
            &format!("{}/{BUCKET}/{key}", self.endpoint()),
        )
    }

    /// The object under `key` as a HEAD finds it now: the status, `Last-Modified` and `ETag`
    /// (for failure messages).
    pub fn describe(&self, key: &str) -> String {
        let out = self.curl(key).args(["-s", "-I"]).output().unwrap();
        let head = String::from_utf8_lossy(&out.stdout);
        let wanted = |l: &&str| {
            let l = l.to_ascii_lowercase();
            l.starts_with("http/") || l.starts_with("last-modified") || l.starts_with("etag")
        };
        let lines: Vec<&str> = head.lines().map(str::trim).filter(wanted).collect();
        format!("{key}: {}", lines.join(", "))
    }

    /// The `[storage.s3]` table of a wharf node keeping everything in this store's bucket
    /// under `prefix` (with `backend = "s3"` in `[storage]`).
    pub fn wharf_storage(&self, prefix: &str) -> String {
        format!(
            "[storage.s3]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key_file = \"{}\"\n",
            self.endpoint(),
            self.dir.path().join("secret").display()
        )
    }

    /// Stop the store at once (SIGKILL); `restart` brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One store for every test that only needs a bucket (each uses its own prefix); started
    /// on first use, killed with the test process.
    pub fn shared() -> &'static Seaweed {
        static SHARED: std::sync::OnceLock<&'static Seaweed> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            // Started from a thread that never ends: the kernel's parent-death signal follows the
            // thread that spawned the process, and test threads end with their test.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let weed: &'static Seaweed = Box::leak(Box::new(Seaweed::start()));
                tx.send(weed).unwrap();
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the shared SeaweedFS starts")
        })
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
