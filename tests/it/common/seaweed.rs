//! A real SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process) for the
//! object-store tests: installed by tests/setup.sh, started per test on free loopback ports with
//! one access key and one bucket, killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "wharf-test";
pub const SECRET_KEY: &str = "wharf-test-secret";
pub const BUCKET: &str = "wharf";

pub struct Seaweed {
    child: Child,
    args: Vec<String>,
    dir: tempfile::TempDir,
    /// The S3 gateway's port on 127.0.0.1.
    pub s3_port: u16,
    log: PathBuf,
    /// With TLS on the S3 port: the CA its certificate chains to.
    tls_ca: Option<PathBuf>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

    fn start_inner(extra: &[&str], tls_ca: Option<PathBuf>) -> Seaweed {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"wharf","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let log = dir.path().join("weed.log");
        let s3_port = free_port();
        let mut args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.port={s3_port}"),
            format!("-s3.config={}", config.display()),
            format!("-bucket={BUCKET}"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            // Virtual-hosted buckets: `<bucket>.s3.wharf.test` (tests/setup.sh maps the name).
            "-s3.domainName=s3.wharf.test".into(),
        ];
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
        std::fs::write(dir.path().join("secret"), SECRET_KEY).unwrap();
        let child = Seaweed::spawn(&args, &log);
        let s = Seaweed {
            child,
            args,
            dir,
            s3_port,
            log,
            tls_ca,
        };
        s.wait_ready();
        s
    }

    fn spawn(args: &[String], log: &std::path::Path) -> Child {
        let mut cmd = Command::new(super::tool("weed"));
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
        self.child = Seaweed::spawn(&self.args, &self.log);
        self.wait_ready();
    }

    /// The bucket answers a signed request (the gateway starts after master, volume and filer).
    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/{BUCKET}", self.endpoint());
        while Instant::now() < until {
            let mut curl = Command::new("curl");
            if let Some(ca) = &self.tls_ca {
                curl.arg("--cacert").arg(ca);
            }
            let out = curl
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I"])
                .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
                .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"))
                .arg(&url)
                .output()
                .unwrap();
            if out.stdout == b"200" {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "SeaweedFS did not serve bucket {BUCKET} within 60 s:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.s3_port)
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
