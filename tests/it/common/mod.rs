//! Test harness: start the real `wharf` binary on an ephemeral port with fresh storage, and a small
//! raw HTTP/1.1 client so tests can send exactly the bytes they mean (smuggling, limits, pipelining).
#![allow(dead_code)]

pub mod docker;
pub mod gate;
pub mod layout;
pub mod oidc;
pub mod pki;
pub mod seaweed;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The two I/O drivers every server-level test runs under.
pub const DRIVERS: [&str; 2] = ["io_uring", "epoll"];

/// Generate one test per I/O driver from `fn name(driver: &str)`.
#[macro_export]
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {
        mod io_uring { $( #[test] fn $name() { super::$name("io_uring") } )* }
        mod epoll { $( #[test] fn $name() { super::$name("epoll") } )* }
    };
}

/// A running wharf process with its own storage directory; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub driver: String,
    extra: String,
    /// `RUST_LOG` of the server process.
    log_filter: String,
    /// The scheme the server printed (`http` or `https`).
    pub scheme: String,
    /// The other listeners the server printed (` <name>=<url>`): name → URL.
    pub listeners: std::collections::BTreeMap<String, String>,
    /// Extra environment of the server process (fault hooks).
    env: Vec<(String, String)>,
}

pub fn wharf_bin() -> &'static str {
    env!("CARGO_BIN_EXE_wharf")
}

impl Server {
    pub fn start(driver: &str) -> Server {
        Server::start_with(driver, "")
    }

    /// Start with extra TOML appended to the base config (which sets `[server]` port and threads).
    pub fn start_with(driver: &str, extra: &str) -> Server {
        Server::start_logged(driver, extra, "warn")
    }

    /// Start with extra TOML and a `RUST_LOG` filter (for tests that read the server's log).
    pub fn start_logged(driver: &str, extra: &str, log_filter: &str) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        Server::start_in(dir, driver, extra, log_filter)
    }

    /// Start in a prepared directory (e.g. one holding certificates the config names).
    pub fn start_in(dir: tempfile::TempDir, driver: &str, extra: &str, log_filter: &str) -> Server {
        let mut s = Server {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            driver: driver.into(),
            extra: extra.into(),
            log_filter: log_filter.into(),
            scheme: String::new(),
            listeners: Default::default(),
            env: Vec::new(),
        };
        s.launch(0);
        s
    }

    /// `start_with`, with extra environment variables for the server (test-only fault hooks).
    pub fn start_with_env(driver: &str, extra: &str, env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir: tempfile::tempdir().unwrap(),
            driver: driver.into(),
            extra: extra.into(),
            log_filter: "warn".into(),
            scheme: String::new(),
            listeners: Default::default(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.launch(0);
        s
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("wharf.toml")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn launch(&mut self, port: u16) {
        let base = format!("[server]\nport = {port}\nthreads = 2\nshutdown_grace = \"10s\"\n");
        // `<driver>+s3`: the same server on the shared SeaweedFS, under a prefix of its own.
        if let Some(driver) = self.driver.strip_suffix("+s3") {
            self.driver = driver.to_owned();
            let prefix = format!(
                "t-{}/",
                self.dir.path().file_name().unwrap().to_string_lossy()
            );
            let storage = seaweed::Seaweed::shared().wharf_storage(&prefix);
            let extra = if self.extra.contains("[storage]\n") {
                self.extra
                    .replacen("[storage]\n", "[storage]\nbackend = \"s3\"\n", 1)
            } else {
                format!("{}\n[storage]\nbackend = \"s3\"\n", self.extra)
            };
            self.extra = format!("{extra}\n{storage}");
        }
        // The storage root is always ./data; extra TOML may add keys to its own [storage] table.
        let cfg = if self.extra.contains("[storage]\n") {
            format!(
                "{base}{}\n",
                self.extra
                    .replacen("[storage]\n", "[storage]\nroot = \"data\"\n", 1)
            )
        } else {
            format!("{base}{}\n[storage]\nroot = \"data\"\n", self.extra)
        };
        std::fs::write(self.config_path(), cfg).unwrap();
        // Appended across restarts, so a panic before a kill is still seen by `Drop`.
        let mut stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("wharf.log"))
            .unwrap();
        writeln!(stderr, "--- launch on port {port} ---").unwrap();
        let mut child = Command::new(wharf_bin())
            .args(["serve", "-c"])
            .arg(self.config_path())
            .env("WHARF_IO_DRIVER", &self.driver)
            .env("RUST_LOG", &self.log_filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn wharf");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let (scheme, rest) = line
            .strip_prefix("wharf listening on ")
            .and_then(|r| r.split_once("://"))
            .unwrap_or_else(|| panic!("wharf did not start: {line:?}\n{}", self.log()));
        self.scheme = scheme.to_owned();
        let addr = rest.split_whitespace().next().unwrap();
        self.addr = addr.parse().unwrap();
        self.listeners = rest
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter(|(_, url)| url.contains("://"))
            .map(|(name, url)| (name.to_owned(), url.to_owned()))
            .collect();
        assert!(
            line.contains(&format!("driver={}", self.driver)),
            "wrong driver: {line}"
        );
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("wharf.log")).unwrap_or_default()
    }

    /// The address of the listener the server printed as `name=<url>`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let url = self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name:?}: {:?}", self.listeners));
        url.split_once("://").unwrap().1.parse().unwrap()
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn config_file(&self) -> PathBuf {
        self.config_path()
    }

    /// Wait until the log contains `needle` (the server logs asynchronously to a file).
    pub fn wait_for_log(&self, needle: &str) -> String {
        for _ in 0..200 {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("server log never showed {needle:?}:\n{}", self.log());
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Send a signal and wait for exit; returns the exit status.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().unwrap()
    }

    /// `wharf <args> -c <this server's config>`, to run.
    pub fn wharf_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(wharf_bin());
        cmd.args(args).arg("-c").arg(self.config_path());
        cmd
    }

    /// Run `wharf <args> -c <this server's config>` (e.g. `gc`, `fsck`): success and stdout + stderr.
    pub fn run_wharf(&self, args: &[&str]) -> (bool, String) {
        self.run_wharf_with_env(args, &[])
    }

    /// `run_wharf` with more environment variables (test hooks).
    pub fn run_wharf_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let mut cmd = self.wharf_command(args);
        cmd.envs(env.iter().copied());
        let out = cmd.output().expect("run wharf");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// SIGKILL the process and start it again on the same port and storage.
    pub fn restart_hard(&mut self) {
        let port = self.addr.port();
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        // After SIGKILL the kernel tears down an io_uring instance asynchronously; until then the
        // dead process's SO_REUSEPORT listeners can still receive (and then reset) connections.
        // A plain bind (no SO_REUSEPORT) succeeds only once every one of them is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind(self.addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the killed server's listeners still hold {} after 10 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.launch(port);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Every test doubles as a check that nothing in the server panicked.
        let log = self.log();
        if std::thread::panicking() {
            eprintln!("--- wharf log ({}) ---\n{log}", self.driver);
        } else if log.contains("panicked") {
            panic!("wharf panicked during the test:\n{log}");
        }
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The OCI error code of an error body.
    pub fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not an OCI error body: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
    }
}

/// A byte stream a client can speak HTTP over (TCP or TLS).
pub trait Wire: Read + Write + Send {
    /// The TCP socket under the stream (for read deadlines).
    fn socket(&self) -> &TcpStream;
}

impl Wire for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Wire for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

/// How long a read waits by default before the test calls the server stuck.
pub const READ_WAIT: Duration = Duration::from_secs(30);
/// How long a server that promised to close (an error that closes, `Connection: close`) gets to
/// do so before the connection counts as left open.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A raw HTTP/1.1 client over one connection. Made by `connect`, it opens a new connection for
/// the next `request` after a response that said `Connection: close` (as HTTP clients do: the
/// server closes after 401 and 429); `send_raw` and the readers never reconnect.
pub struct Client {
    reader: BufReader<Box<dyn Wire>>,
    /// Where to reconnect (plain TCP clients only).
    addr: Option<SocketAddr>,
    /// The last response announced `Connection: close`.
    server_closes: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_WAIT)).unwrap();
        let mut c = Client::over(Box::new(stream));
        c.addr = Some(addr);
        c
    }

    /// A client over an established stream (e.g. a TLS session).
    pub fn over(wire: Box<dyn Wire>) -> Client {
        Client {
            reader: BufReader::new(wire),
            addr: None,
            server_closes: false,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let w = self.reader.get_mut();
        w.write_all(bytes).unwrap();
        w.flush().unwrap();
    }

    /// `send_raw`, or the error that stopped it (the server closed the connection early).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let w = self.reader.get_mut();
        w.write_all(bytes)?;
        w.flush()
    }

    /// Read one response; `head_request` means no body follows regardless of Content-Length.
    pub fn read_response(&mut self, head_request: bool) -> Resp {
        self.try_read_response(head_request)
            .expect("a complete HTTP/1.1 response")
    }

    /// `read_response`, or `None` if the connection broke or sent something else.
    pub fn try_read_response(&mut self, head_request: bool) -> Option<Resp> {
        let mut line = String::new();
        self.reader.read_line(&mut line).ok()?;
        if !line.starts_with("HTTP/1.1 ") || line.len() < 12 {
            return None;
        }
        let status: u16 = line[9..12].parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h).ok()? == 0 {
                return None;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 100 {
            return Some(resp);
        }
        let len: usize = match resp.header("content-length") {
            Some(v) => v.parse().ok()?,
            None => 0,
        };
        if !head_request && status != 204 {
            resp.body = vec![0; len];
            self.reader.read_exact(&mut resp.body).ok()?;
        }
        self.server_closes = resp.closes();
        Some(resp)
    }

    /// Send `GET path` and wait up to `wait` for the answer: the response, or the error that ended
    /// the connection (a TLS alert, EOF, a reset). A deadline passing is an error of kind
    /// `WouldBlock`/`TimedOut`, which no caller may count as a refusal.
    pub fn get_within(&mut self, path: &str, wait: Duration) -> std::io::Result<Resp> {
        let w = self.reader.get_mut();
        w.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
        w.flush()?;
        self.reader
            .get_ref()
            .socket()
            .set_read_timeout(Some(wait))
            .unwrap();
        let first = self.reader.fill_buf().map(|b| b.len());
        self.reader
            .get_ref()
            .socket()
            .set_read_timeout(Some(READ_WAIT))
            .unwrap();
        match first? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(self.read_response(false)),
        }
    }

    /// Whether the server closes the connection (EOF or reset) within `CLOSE_WAIT`.
    pub fn is_closed(&mut self) -> bool {
        self.closes_within(CLOSE_WAIT)
    }

    /// Whether the server ends the connection — EOF, or a reset — within `wait`. A connection
    /// still open at the deadline is not closed (a timeout never counts as a close), and neither
    /// is one that sends more bytes.
    pub fn closes_within(&mut self, wait: Duration) -> bool {
        self.reader
            .get_ref()
            .socket()
            .set_read_timeout(Some(wait))
            .unwrap();
        let mut b = [0u8; 1];
        let read = self.reader.read(&mut b);
        self.reader
            .get_ref()
            .socket()
            .set_read_timeout(Some(READ_WAIT))
            .unwrap();
        match read {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            ),
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        if let (true, Some(addr)) = (self.server_closes, self.addr) {
            *self = Client::connect(addr);
        }
        self.send_raw(&bytes);
        self.read_response(method == "HEAD")
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }
}

/// The value of one Prometheus sample line (`name` or `name{labels}`), if the text has it.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A new connection that has sent the head of a one-request push of `body` to `repo` and its
/// first `sent` bytes, the rest still to send.
pub fn started_push(addr: std::net::SocketAddr, repo: &str, body: &[u8], sent: usize) -> Client {
    let mut c = Client::connect(addr);
    c.send_raw(
        format!(
            "POST /v2/{repo}/blobs/uploads/?digest={} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            sha256(body),
            body.len()
        )
        .as_bytes(),
    );
    c.send_raw(&body[..sent]);
    c
}

/// Racing requests' statuses: exactly one is `won` and every other `lost`. The winner's index.
pub fn one_winner(statuses: &[u16], won: u16, lost: u16) -> usize {
    let winners = statuses.iter().filter(|&&s| s == won).count();
    assert_eq!(winners, 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == won || s == lost),
        "{statuses:?}"
    );
    statuses.iter().position(|&s| s == won).unwrap()
}

/// One series of `s`'s `/metrics` (`name{labels}` exactly as exposed).
pub fn metric(s: &Server, series: &str) -> f64 {
    let text = s.client().get("/metrics").body_text();
    sample(&text, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Raise this test process's open-file limit to the hard limit; fails the test below `need`.
pub fn raise_nofile(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_cur >= need,
        "open-file limit {} is too low for this test (needs {need})",
        lim.rlim_cur
    );
}

/// `sha256:<hex>` of bytes.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// POST an upload session for `repo`; its location.
pub fn start_upload(c: &mut Client, repo: &str) -> String {
    let r = c.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.header("location").unwrap().to_owned()
}

/// Push a blob monolithically; asserts 201.
pub fn push_blob(c: &mut Client, repo: &str, data: &[u8]) -> String {
    let d = sha256(data);
    let r = c.request(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        &[],
        data,
    );
    assert_eq!(
        r.status,
        201,
        "push blob: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    d
}

/// An OCI image manifest over a config and layers that were pushed.
pub fn image_manifest(config: &str, config_len: usize, layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(d, n)| serde_json::json!({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":d,"size":n}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType":"application/vnd.oci.image.config.v1+json","digest":config,"size":config_len},
        "layers": layers,
    }))
    .unwrap()
}

/// An image manifest over `cfg` and a 5-byte `layer` with a distinct digest per `n` (an
/// annotation), padded by `pad` bytes of annotation.
pub fn numbered_manifest(cfg: &str, cfg_len: usize, layer: &str, n: usize, pad: usize) -> Vec<u8> {
    let mut m: serde_json::Value =
        serde_json::from_slice(&image_manifest(cfg, cfg_len, &[(layer, 5)])).unwrap();
    m["annotations"] = serde_json::json!({ "n": n.to_string(), "pad": "p".repeat(pad) });
    serde_json::to_vec(&m).unwrap()
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Push a small image (config + one layer) and tag it; returns the manifest digest.
pub fn push_image(c: &mut Client, repo: &str, tag: &str, layer: &[u8]) -> String {
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = push_blob(c, repo, cfg);
    let ld = push_blob(c, repo, layer);
    let m = image_manifest(&cd, cfg.len(), &[(&ld, layer.len())]);
    let r = c.request(
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", OCI_MANIFEST)],
        &m,
    );
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    sha256(&m)
}

/// `wharf hash-password` with `password` on stdin: the argon2id PHC string for a config.
pub fn hash_password(password: &str) -> String {
    let mut child = Command::new(wharf_bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn wharf hash-password");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "wharf hash-password failed");
    let h = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(h.starts_with("$argon2id$"), "{h}");
    h
}

/// Every file and directory below `dir` (recursively; empty if it does not exist).
pub fn paths_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(paths_under(&p));
        }
        out.push(p);
    }
    out
}

/// An `Authorization: Basic` header value.
pub fn basic(user: &str, pw: &str) -> String {
    use base64ct::{Base64, Encoding};
    format!(
        "Basic {}",
        Base64::encode_string(format!("{user}:{pw}").as_bytes())
    )
}

/// Where `tests/setup.sh` puts the Go-built tools.
pub fn tool(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/tools/bin")
        .join(name);
    if local.exists() {
        return local;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: run tests/setup.sh (it installs every tool the tests use)")
    })
}

/// `crane pull` of `image` (over plain HTTP) into a scratch directory, then `crane digest` of
/// it: the manifest digest, for comparing with the one pushed.
pub fn crane_pull_digest(image: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    run_ok(Command::new(tool("crane")).args([
        "pull",
        "--insecure",
        "--format=oci",
        image,
        &work.path().join("img").display().to_string(),
    ]));
    let digest = run_ok(Command::new(tool("crane")).args(["digest", "--insecure", image]));
    digest.trim().to_owned()
}

/// Wait until `ok` holds (polled every 20 ms), failing the test if it never does within 10 s: for
/// state the server reaches on its own time (a close noticed, a reload applied), never a sleep.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never happened within 10 s: {what}");
}

/// A TCP connection to `addr` from the loopback address `src` (127.0.0.0/8 is all ours).
pub fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{src}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(READ_WAIT)).unwrap();
    s
}

/// The named tests (each `fn name(driver: &str)`) again with the S3 backend on the shared
/// SeaweedFS (`io_uring+s3`: `Server::start` puts the node on the bucket).
#[macro_export]
macro_rules! on_s3 {
    ($($name:ident),* $(,)?) => {
        mod s3_backend { $( #[test] fn $name() { super::$name("io_uring+s3") } )* }
    };
}

/// Deterministic pseudo-random bytes (incompressible, distinct per seed).
pub fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Run a command that must succeed; its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (tests/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A loopback port free when checked, below the kernel's ephemeral range (32768–60999 by
/// default), for a server the test starts on a port it names (`weed`, distribution) or for an
/// endpoint nothing listens on: an ephemeral one can be taken by any test's outgoing connection
/// between the check and its use (`weed` then exited with "port … is not available").
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static SEED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        std::process::id().wrapping_mul(2_654_435_761) ^ t.subsec_nanos()
    });
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
