//! A loopback HTTP/1.1 relay in front of the object store that holds back multipart part uploads
//! (`PUT …?partNumber=…`) until the test opens it (or 30 s pass): how a test sees how many parts
//! one push keeps in flight. It can also lose an answer: the request goes to the store, the
//! store's answer is read, and the connection is closed without it (a store that applied a write
//! and died before answering), or go silent: each request is taken and nothing is answered until
//! the test lets the store speak again, when the connection closes (a partition that dropped the
//! packets, a hung server), or throttle: answer `503 SlowDown` itself to the next requests whose
//! request line names a key, as S3 does under a burst. It understands just enough HTTP for S3 traffic: bodies by
//! `Content-Length`, none for HEAD, 204 and 304 (a chunked message fails the test loudly).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Parts {
    waiting: usize,
    most: usize,
    open: bool,
    released: u64,
    /// Lose the answer to the next `PUT` or `DELETE` whose request line contains this.
    lose: Option<String>,
    /// The status lines of the answers lost.
    lost: Vec<String>,
    /// Take requests and answer none (`silence` / `speak`).
    silent: bool,
    /// Requests taken and dropped while silent.
    unanswered: u64,
    /// Answer `503 SlowDown` to this many more requests whose request line contains the text.
    throttle: Option<(String, usize)>,
    /// Requests answered `503 SlowDown`.
    throttled: u64,
}

pub struct PartGate {
    pub addr: SocketAddr,
    parts: Arc<(Mutex<Parts>, Condvar)>,
}

impl PartGate {
    /// Relay to `upstream` (plain HTTP), holding part uploads until `open`.
    pub fn start(upstream: SocketAddr) -> PartGate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let parts = Arc::new((Mutex::new(Parts::default()), Condvar::new()));
        let shared = Arc::clone(&parts);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let parts = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = relay(client, upstream, &parts);
                });
            }
        });
        PartGate { addr, parts }
    }

    /// Part uploads held now.
    pub fn waiting(&self) -> usize {
        self.parts.0.lock().unwrap().waiting
    }

    /// The most part uploads held at once.
    pub fn most_at_once(&self) -> usize {
        self.parts.0.lock().unwrap().most
    }

    /// Let every part through, now and from now on.
    pub fn open(&self) {
        self.parts.0.lock().unwrap().open = true;
        self.parts.1.notify_all();
    }

    /// Lose the answer to the next `PUT` or `DELETE` whose request line contains `part` (a key).
    pub fn lose_answer_to(&self, part: &str) {
        self.parts.0.lock().unwrap().lose = Some(part.to_owned());
    }

    /// The status lines of the answers lost so far.
    pub fn lost(&self) -> Vec<String> {
        self.parts.0.lock().unwrap().lost.clone()
    }

    /// From now on take every request and answer none, until `speak`; each such request's
    /// connection then closes without it reaching the store.
    pub fn silence(&self) {
        self.parts.0.lock().unwrap().silent = true;
    }

    /// Pass requests on again.
    pub fn speak(&self) {
        self.parts.0.lock().unwrap().silent = false;
        self.parts.1.notify_all();
    }

    /// Requests taken and left unanswered while silent.
    pub fn unanswered(&self) -> u64 {
        self.parts.0.lock().unwrap().unanswered
    }

    /// Answer `503 SlowDown` to the next `n` requests whose request line contains `part`
    /// (`"GET /bucket/prefix/data/"`), without passing them on.
    pub fn throttle(&self, part: &str, n: usize) {
        self.parts.0.lock().unwrap().throttle = Some((part.to_owned(), n));
    }

    /// Requests answered `503 SlowDown` so far.
    pub fn throttled(&self) -> u64 {
        self.parts.0.lock().unwrap().throttled
    }

    /// Part uploads passed on.
    pub fn parts(&self) -> u64 {
        self.parts.0.lock().unwrap().released
    }
}

/// One HTTP message head (request or response) and its body length.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<(String, usize)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("transfer-encoding: chunked"),
        "the part gate does not relay chunked messages:\n{head}"
    );
    let len = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    Ok(Some((head, len)))
}

fn copy_body(r: &mut impl Read, w: &mut impl Write, len: usize) -> std::io::Result<()> {
    let n = std::io::copy(&mut r.take(len as u64), w)?;
    if n != len as u64 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    parts: &(Mutex<Parts>, Condvar),
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    let (mut to_client, mut to_server) = (client.try_clone()?, server.try_clone()?);
    let (mut from_client, mut from_server) = (BufReader::new(client), BufReader::new(server));
    while let Some((head, len)) = read_head(&mut from_client)? {
        let first = head.lines().next().unwrap_or_default().to_owned();
        if parts.0.lock().unwrap().silent {
            std::io::copy(
                &mut (&mut from_client).take(len as u64),
                &mut std::io::sink(),
            )?;
            let (lock, cv) = parts;
            let mut p = lock.lock().unwrap();
            p.unanswered += 1;
            let _ = cv
                .wait_timeout_while(p, Duration::from_secs(120), |p| p.silent)
                .unwrap();
            // Lost with the network: the connection closes as this thread returns.
            return Ok(());
        }
        let throttle = {
            let mut p = parts.0.lock().unwrap();
            let hit = match &mut p.throttle {
                Some((part, n)) if *n > 0 && first.contains(part.as_str()) => {
                    *n -= 1;
                    true
                }
                _ => false,
            };
            p.throttled += u64::from(hit);
            hit
        };
        if throttle {
            copy_body(&mut from_client, &mut std::io::sink(), len)?;
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let head = if first.starts_with("HEAD ") {
                0
            } else {
                body.len()
            };
            write!(
                to_client,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{}",
                body.len(),
                &body[..head]
            )?;
            continue;
        }
        if first.starts_with("PUT ") && first.contains("partNumber=") {
            let (lock, cv) = parts;
            let mut p = lock.lock().unwrap();
            p.waiting += 1;
            p.most = p.most.max(p.waiting);
            let (mut p, _) = cv
                .wait_timeout_while(p, Duration::from_secs(30), |p| !p.open)
                .unwrap();
            p.waiting -= 1;
            p.released += 1;
        }
        to_server.write_all(head.as_bytes())?;
        copy_body(&mut from_client, &mut to_server, len)?;
        let Some((answer, answer_len)) = read_head(&mut from_server)? else {
            return Ok(());
        };
        let status = answer.split(' ').nth(1).unwrap_or_default();
        {
            let mut p = parts.0.lock().unwrap();
            let lose = p.lose.as_ref().is_some_and(|k| {
                (first.starts_with("PUT ") || first.starts_with("DELETE "))
                    && first.contains(k.as_str())
            });
            if lose {
                p.lose = None;
                p.lost
                    .push(answer.lines().next().unwrap_or_default().to_owned());
                // Both connections close as this thread returns, the answer unsent.
                return Ok(());
            }
        }
        let body = if first.starts_with("HEAD ") || status == "204" || status == "304" {
            0
        } else {
            answer_len
        };
        to_client.write_all(answer.as_bytes())?;
        copy_body(&mut from_server, &mut to_client, body)?;
    }
    Ok(())
}
