#!/usr/bin/env python3
"""Side-by-side benchmark of wharf, CNCF distribution and zot on this machine (run by compare.sh).

Each server runs in turn on loopback with filesystem storage in a fresh temporary directory; the same
scenarios (wrk, k6 with loadtest/registry.js, curl, zot's zb) run against each. In the same run the
machine's own limits are measured (one loopback TCP stream with iperf3, single-core SHA-256 with
openssl), then wharf alone over TLS and mutual TLS, and wharf's memory with a 4 GiB blob and with
10,000 idle keep-alive connections. One table is printed (and written to $OUT, default
compare-results.md in the working directory). A benchmark: it never fails on a number.
"""

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import hashlib
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.environ.get("PEERS", os.path.join(ROOT, "loadtest", ".peers", "bin"))
SECS = int(os.environ.get("SECS", "10"))
ONLY = os.environ.get("ONLY", "wharf,wharf-epoll,distribution,zot").split(",")
QUICK = os.environ.get("QUICK") == "1"  # skip the 4 GiB and 10k-connection memory rows
WHARF = os.environ.get("WHARF_BIN", os.path.join(ROOT, "target", "release", "wharf"))
# "wharf-old" in ONLY: another wharf build (an A/B of a change, every row side by side).
OLD_BIN = os.environ.get("OLD_BIN", "")
K6_SCRIPT = os.path.join(ROOT, "loadtest", "registry.js")
MIB = 1 << 20
# zb: concurrency, requests per test, and how long it may run against one server.
ZB_C = int(os.environ.get("ZB_C", "16"))
ZB_N = int(os.environ.get("ZB_N", "32"))
ZB_TIMEOUT = int(os.environ.get("ZB_TIMEOUT", "600"))
ZB = os.environ.get("ZB", "1") != "0"  # ZB=0: skip zb (minutes per server)
# zot and zb as compare.sh built them (from the module proxy's v1.4.3, or from ZOT_SRC).
ZOT_BIN = os.environ.get("ZOT_BIN", os.path.join(PEERS, "zot"))
ZB_BIN = os.environ.get("ZB_BIN", os.path.join(PEERS, "zb"))
ZOT_VERSION = os.environ.get("ZOT_VERSION", "v1.4.3")
# Every server's scenarios ROUNDS times, the servers' order reversed every other round; the table
# gives medians, and each ratio also round by round.
ROUNDS = max(1, int(os.environ.get("ROUNDS", "1")))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30, ctx=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                if r.status in (200, 401):
                    return
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            if getattr(e, "code", None) in (200, 401):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


def status_mib(pid, field):
    """A memory field of /proc/<pid>/status (VmRSS now, VmHWM peak) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def settle():
    """Write back what earlier steps left dirty, so that no server is measured while the kernel
    flushes someone else's data (the first server otherwise pays for the test files' writeback)."""
    os.sync()
    time.sleep(3)


def cpu_seconds(pid):
    """User + system CPU a process has used so far (all its threads, io_uring workers included)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_cpu(pid, fn, *args, **kw):
    """(fn's result, server CPU seconds it cost)."""
    c0 = cpu_seconds(pid)
    out = fn(*args, **kw)
    return out, cpu_seconds(pid) - c0


class Server:
    """One registry process on its own port and storage."""

    def __init__(self, name, work):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"{name}-", dir=work)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        # More `[storage]` keys for wharf (A/B runs, e.g. "direct_writes = false\n").
        self.storage_extra = ""

    def start(self, tls=None):
        d = self.dir
        os.makedirs(f"{d}/data", exist_ok=True)
        if self.name.startswith("wharf"):
            cfg = f'[server]\nport = {self.port}\n[storage]\nroot = "{d}/data"\n{self.storage_extra}'
            if tls:
                cfg += tls
                self.url = f"https://127.0.0.1:{self.port}"
            open(f"{d}/wharf.toml", "w").write(cfg)
            cmd = [self.binary(), "serve", "-c", f"{d}/wharf.toml"]
            # "wharf-epoll": the same build on monoio's epoll driver (what Docker's default seccomp
            # profile leaves, as it blocks io_uring); "wharf" on the default, io_uring here.
            driver = "epoll" if self.name == "wharf-epoll" else "io_uring"
            env = dict(os.environ, RUST_LOG="warn", WHARF_IO_DRIVER=driver)
        elif self.name == "distribution":
            open(f"{d}/config.yml", "w").write(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n"
            )
            cmd = [f"{PEERS}/registry", "serve", f"{d}/config.yml"]
            env = dict(os.environ, OTEL_TRACES_EXPORTER="none")
        else:
            json.dump(
                {
                    "distSpecVersion": "1.0.1",
                    "storage": {"rootDirectory": f"{d}/data", "gc": False, "dedupe": False},
                    "http": {"address": "127.0.0.1", "port": str(self.port)},
                    "log": {"level": "error"},
                },
                open(f"{d}/config.json", "w"),
            )
            cmd = [ZOT_BIN, "serve", f"{d}/config.json"]
            env = dict(os.environ)
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=open(f"{d}/out", "w"), stderr=open(f"{d}/log", "w")
        )
        ctx = None
        if tls:
            import ssl

            ctx = ssl._create_unverified_context()  # noqa: S323 - a benchmark against our own cert
        wait_http(self.url + "/v2/", ctx=ctx)
        if self.name.startswith("wharf"):
            out = open(f"{d}/out").read()
            if f"driver={driver}" not in out:
                raise SystemExit(f"{self.name} did not start on {driver}: {out.strip()}")
        return self

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        # Its storage can be tens of GB after zb: free the disk for the next server.
        shutil.rmtree(f"{self.dir}/data", ignore_errors=True)

    def binary(self):
        if self.name == "wharf-old":
            if not OLD_BIN:
                raise SystemExit("ONLY names wharf-old: set OLD_BIN to that wharf build")
            return OLD_BIN
        return WHARF

    def version(self):
        if self.name.startswith("wharf"):
            return run([self.binary(), "version"]).strip()
        if self.name == "distribution":
            return run([f"{PEERS}/registry", "--version"]).strip()
        return "zot " + ZOT_VERSION


def start_upload(url, repo):
    """POST an upload session; returns its location as a path (peers answer with either a
    path or an absolute URL)."""
    out = run(["curl", "-sS", "-k", "-D", "-", "-o", "/dev/null", "-X", "POST",
               f"{url}/v2/{repo}/blobs/uploads/"])
    loc = re.search(r"(?im)^location:\s*(\S+)", out).group(1)
    if loc.startswith("http"):
        loc = "/" + loc.split("/", 3)[3]
    return loc


def push_blob(url, data, repo="bench/seed"):
    """Monolithic push with curl; returns the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = start_upload(url, repo)
    sep = "&" if "?" in loc else "?"
    p = subprocess.run(
        ["curl", "-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
         "-H", "Content-Type: application/octet-stream", "--data-binary", "@-",
         f"{url}{loc}{sep}digest={digest}"],
        input=data, capture_output=True, check=True,
    )
    assert p.stdout == b"201", (p.stdout, p.stderr)
    return digest


def push_manifest(url, repo, tag, layer_digest, layer_size):
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cfg_digest = push_blob(url, cfg, repo)
    m = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cfg_digest, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }).encode()
    req = urllib.request.Request(f"{url}/v2/{repo}/manifests/{tag}", data=m, method="PUT",
                                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 201


def wrk(url, conns=32, headers=(), secs=SECS):
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = run(cmd + [url])
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))

    def lat(p):
        m = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v if unit == "ms" else v * 1000

    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    return {"rps": rps, "p50": lat(50), "p99": lat(99), "errors": errors}


def k6(url, scenario, size, vus, secs=SECS, extra_env=()):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = ["-e", f"TARGET={url}", "-e", f"SCENARIO={scenario}", "-e", f"SIZE={size}",
               "-e", f"VUS={vus}", "-e", f"DURATION={secs}s", "-e", f"REPO=bench/{scenario}"]
        for e in extra_env:
            env += ["-e", e]
        subprocess.run(["k6", "run", "-q", "--no-color", *env, "--summary-export", out.name,
                        K6_SCRIPT], check=True, capture_output=True)
        s = json.load(open(out.name))["metrics"]
    trend = s.get("push_ms") if scenario in ("push", "chunked") else s.get("pull_ms")
    ops = s.get("ops", {}).get("rate", 0.0)
    failed = s.get("checks", {}).get("fails", 0)
    return {
        "rps": ops,
        "mbps": s.get("op_bytes", {}).get("rate", 0.0) / 1e6,
        "p50": trend["med"] if trend else float("nan"),
        "p99": trend["p(99)"] if trend else float("nan"),
        "errors": failed,
    }


def _conn(url):
    """A socket to the registry of `url` (plain HTTP or TLS without verification)."""
    import ssl
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port))
    if u.scheme == "https":
        sock = ssl._create_unverified_context().wrap_socket(sock)  # noqa: S323
    return sock


def _head(sock):
    """Read a response head; return (status, headers dict, bytes of body already read)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed in head: {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def timed_put(url, target, path, size, ok=(201,)):
    """PUT a file to `target` (a path with query) over one new connection, the body sent with
    sendfile (plain HTTP) so the client costs as little as possible; seconds until the answer."""
    sock = _conn(url)
    host = url.split("://", 1)[1]
    t0 = time.perf_counter()
    sock.sendall((f"PUT {target} HTTP/1.1\r\nHost: {host}\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n").encode())
    with open(path, "rb") as f:
        sock.sendfile(f)
    status, _, _ = _head(sock)
    t = time.perf_counter() - t0
    sock.close()
    assert status in ok, status
    return t


def timed_get(url, target, size, buf):
    """GET `target` over one new connection into the reused buffer `buf`; seconds to the last byte."""
    sock = _conn(url)
    host = url.split("://", 1)[1]
    t0 = time.perf_counter()
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    status, headers, rest = _head(sock)
    if status in (301, 302, 307):
        raise RuntimeError(f"redirected to {headers.get('location')}")
    assert status == 200, status
    left = size - len(rest)
    while left > 0:
        n = sock.recv_into(buf)
        if n == 0:
            raise RuntimeError("closed early")
        left -= n
    t = time.perf_counter() - t0
    sock.close()
    return t


def big_push(url, path, digest, size, best_of=3):
    """Monolithic PUT of a file over one connection; MB/s of the best run, timed to the 201."""
    best = None
    for i in range(best_of):
        loc = start_upload(url, f"bench/big{i}")
        sep = "&" if "?" in loc else "?"
        t = timed_put(url, f"{loc}{sep}digest={digest}", path, size)
        best = t if best is None else min(best, t)
    return size / best / 1e6


def big_pull(url, digest, size, best_of=3, repo="bench/big0"):
    """GET of a blob over one connection into a reused 4 MiB buffer; MB/s of the best run."""
    buf = memoryview(bytearray(4 * MIB))
    best = min(timed_get(url, f"/v2/{repo}/blobs/{digest}", size, buf) for _ in range(best_of))
    return size / best / 1e6


def zb(url):
    """zot's benchmark client: its own mix of pushes and pulls of several sizes."""
    if not ZB or not os.path.exists(ZB_BIN):
        return None
    with tempfile.TemporaryDirectory() as d:
        try:
            p = subprocess.run(
                [ZB_BIN, "-c", str(ZB_C), "-n", str(ZB_N), "-d", d, "-o", "stdout", url],
                capture_output=True, text=True, timeout=ZB_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return f"{out}\n(zb made no progress and was stopped after {ZB_TIMEOUT} s)"
    return p.stdout + p.stderr


def machine_limits(big_path):
    res = {}
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-p", "5399"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = json.loads(run(["iperf3", "-c", "127.0.0.1", "-p", "5399", "-t", "5", "-J"]))
    srv.wait(10)
    res["tcp_mbps"] = out["end"]["sum_received"]["bits_per_second"] / 8 / 1e6
    out = run(["openssl", "speed", "-seconds", "3", "-bytes", str(MIB), "-evp", "sha256"])
    # The last line ends with the throughput in kB/s (1000 bytes) for the one block size.
    res["sha_mbps"] = float(out.strip().splitlines()[-1].split()[-1].rstrip("k")) / 1000
    t0 = time.time()
    with open(big_path, "rb") as f:
        h = hashlib.sha256()
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    res["py_sha_mbps"] = os.path.getsize(big_path) / (time.time() - t0) / 1e6
    # What storing 256 MiB costs without any registry: a new file written from a reused 1 MiB
    # buffer (into fresh page-cache pages, as a new blob gets them), then fdatasync; best of 3, the
    # files kept until the end so that each run needs new pages as a stored blob does.
    block = b"\x5a" * MIB
    size = os.path.getsize(big_path)
    fill = sync = None
    paths = []
    for i in range(3):
        path = f"{big_path}.w{i}"
        paths.append(path)
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for _ in range(size // MIB):
            os.write(fd, block)
        t1 = time.perf_counter()
        os.fdatasync(fd)
        os.close(fd)
        t2 = time.perf_counter()
        fill = t1 - t0 if fill is None else min(fill, t1 - t0)
        sync = t2 - t0 if sync is None else min(sync, t2 - t0)
    for path in paths:
        os.unlink(path)
    res["fill_mbps"] = size / fill / 1e6
    res["write_mbps"] = size / sync / 1e6
    return res


def scenarios(s, big_path, big_digest, big_size):
    """Everything measured against every server."""
    r = {}
    url = s.url
    small = os.urandom(4096)
    d = push_blob(url, small, "bench/get")
    push_manifest(url, "bench/get", "latest", d, len(small))
    log(f"  {s.name}: wrk 4 KiB blob GET")
    r["get_blob_4k"], cpu = with_cpu(s.proc.pid, wrk, f"{url}/v2/bench/get/blobs/{d}")
    r["cpu_us_get_4k"] = cpu / (r["get_blob_4k"]["rps"] * SECS) * 1e6
    log(f"  {s.name}: wrk manifest GET by tag")
    r["get_manifest"] = wrk(f"{url}/v2/bench/get/manifests/latest",
                            headers=("Accept: application/vnd.oci.image.manifest.v1+json",))
    for key, scen, size, vus in [
        ("k6_pull_4k", "pull", 4096, 32),
        ("k6_manifest", "manifest", 4096, 32),
        ("k6_push_4k", "push", 4096, 32),
        ("k6_chunked_1m", "chunked", MIB, 32),
        ("k6_mix_4k", "mix", 4096, 32),
        ("k6_pull_1m", "pull", MIB, 32),
        ("k6_push_64m", "push", 64 * MIB, 1),
    ]:
        log(f"  {s.name}: k6 {scen} {size} B, {vus} VUs")
        extra = ("CHUNK=262144",) if scen == "chunked" else ()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r[key], cpu = with_cpu(s.proc.pid, k6, url, scen, size, vus, extra_env=extra)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        # CPU per operation of the server and of k6 (the client shares the two cores).
        ops = r[key]["rps"] * SECS
        r[key]["server_cpu_ms"] = cpu / ops * 1e3 if ops else 0.0
        r[key]["client_cpu_ms"] = client / ops * 1e3 if ops else 0.0
    log(f"  {s.name}: 256 MiB push and pull, one connection")
    r["push_256m"] = big_push(url, big_path, big_digest, big_size)
    r["pull_256m"], cpu = with_cpu(s.proc.pid, big_pull, url, big_digest, big_size)
    r["cpu_s_per_gb_pull"] = cpu / (3 * big_size / 1e9)
    log(f"  {s.name}: zb")
    r["zb"] = zb(url)
    r["peak_rss"] = status_mib(s.proc.pid, "VmHWM")
    return r


def bench_pki(work):
    """A fresh CA, server and client certificate under `work` (`wharf cert`): (the directory, the
    `[server.tls]` table of a listener that asks for, but does not require, a client certificate)."""
    pki = tempfile.mkdtemp(prefix="pki-", dir=work)
    run([WHARF, "cert", "ca", "--out", pki, "--cn", "bench CA"])
    run([WHARF, "cert", "server", "--out", pki, "--host", "localhost", "--ip", "127.0.0.1"])
    run([WHARF, "cert", "client", "--out", pki, "--cn", "bench"])
    tls = (f'[server.tls]\nserver_certificate_bundle = "{pki}/server.crt"\n'
           f'server_private_key = "{pki}/server.key"\nclient_ca_bundle = "{pki}/ca.crt"\n'
           'client_auth = "optional"\n')
    return pki, tls


def tls_rows(work, big_path, big_digest, big_size):
    """wharf over TLS and mutual TLS against wharf over plain HTTP, same process settings."""
    pki, tls = bench_pki(work)
    s = Server("wharf", work).start(tls=tls)
    try:
        small = os.urandom(4096)
        d = push_blob(s.url, small, "bench/get")
        r = {}
        r["tls_get_4k"], cpu = with_cpu(s.proc.pid, wrk, f"{s.url}/v2/bench/get/blobs/{d}")
        r["cpu_us_get_4k"] = cpu / (r["tls_get_4k"]["rps"] * SECS) * 1e6
        r["tls_k6_pull_4k"] = k6(s.url, "pull", 4096, 32)
        r["mtls_k6_pull_4k"] = k6(s.url, "pull", 4096, 32,
                                  extra_env=(f"CERT={pki}/client.crt", f"KEY={pki}/client.key"))
        big_push(s.url, big_path, big_digest, big_size, best_of=1)
        r["tls_pull_256m"], cpu = with_cpu(s.proc.pid, big_pull, s.url, big_digest, big_size,
                                           best_of=5)
        r["cpu_s_per_gb_pull"] = cpu / (5 * big_size / 1e9)
        r["tls_push_256m"] = big_push(s.url, big_path, big_digest, big_size)
    finally:
        s.stop()
    return r


def memory_rows(work):
    """wharf's RSS with a 4 GiB blob pushed and pulled, and with 10,000 idle connections."""
    r = {}
    s = Server("wharf", work)
    # The idle connections all come from 127.0.0.1: lift the per-address cap (256 by default),
    # else all but 256 of them are answered 503 and closed.
    s.storage_extra = "[limits]\nmax_connections_per_client = 0\n"
    s.start()
    try:
        size = 4 << 30
        path = os.path.join(work, "b4g")
        h = hashlib.sha256()
        block = os.urandom(4 * MIB)
        with open(path, "wb") as f:
            for i in range(size // len(block)):
                b = i.to_bytes(8, "little") + block[8:]
                h.update(b)
                f.write(b)
        digest = "sha256:" + h.hexdigest()
        r["rss_before"] = status_mib(s.proc.pid, "VmRSS")
        r["push_4g_mbps"] = big_push(s.url, path, digest, size, best_of=1)
        r["pull_4g_mbps"] = big_pull(s.url, digest, size, best_of=1)
        r["peak_4g"] = status_mib(s.proc.pid, "VmHWM")
        os.unlink(path)
        # 10,000 idle keep-alive connections, each after one request.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
        conns = []
        for _ in range(10000):
            c = socket.create_connection(("127.0.0.1", s.port))
            c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            conns.append(c)
        for c in conns:
            if not c.recv(4096).startswith(b"HTTP/1.1 200"):
                raise SystemExit("wharf: GET /v2/ did not answer 200 on every idle connection")
        time.sleep(1)
        r["rss_10k_idle"] = status_mib(s.proc.pid, "VmRSS")
        for c in conns:
            c.close()
    finally:
        s.stop()
    return r


def parse_zb(text):
    """zb's stdout: test name → (requests per second, failed requests)."""
    out = {}
    for block in text.split("Test name:")[1:]:
        name = block.split("\n", 1)[0].strip()
        rps = re.search(r"Requests per second:\s*([\d.]+)", block)
        failed = re.search(r"Failed requests:\s*(\d+)", block)
        if rps:
            out[name] = (float(rps.group(1)), int(failed.group(1)) if failed else 0)
    return out


def median_run(runs):
    """One server's rounds as one: per row the median round (by requests/s where the row has
    them, else MB/s, else the number itself); zb's text from the last round that ran it."""
    out = {}
    for key in runs[0]:
        vals = [r[key] for r in runs]
        if isinstance(vals[0], dict):
            metric = "rps" if "rps" in vals[0] else "mbps"
            out[key] = sorted(vals, key=lambda v: v[metric])[len(vals) // 2]
        elif isinstance(vals[0], (int, float)):
            out[key] = sorted(vals)[len(vals) // 2]
        else:
            out[key] = next((v for v in reversed(vals) if v), vals[-1])
    return out


def fmt_req(x):
    if x is None:
        return "—"
    err = f", {x['errors']} failed" if x.get("errors") else ""
    return f"{x['rps']:,.0f}/s (p50 {x['p50']:.2f} ms, p99 {x['p99']:.2f} ms{err})"


def main():
    work = tempfile.mkdtemp(prefix="wharf-compare-")
    try:
        return compare(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(work):
    big_size = 256 * MIB
    big_path = os.path.join(work, "b256m")
    data = os.urandom(big_size)
    open(big_path, "wb").write(data)
    big_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    del data

    log("machine limits: iperf3 loopback stream, openssl SHA-256")
    limits = machine_limits(big_path)
    rounds, versions = {n: [] for n in ONLY}, {}
    for r in range(ROUNDS):
        order = ONLY if r % 2 == 0 else ONLY[::-1]
        for name in order:
            log(f"{name} (round {r + 1} of {ROUNDS}):")
            settle()
            s = Server(name, work).start()
            try:
                versions[name] = s.version()
                rounds[name].append(scenarios(s, big_path, big_digest, big_size))
            finally:
                s.stop()
            # Keep what was measured even if a later server or step fails.
            with open(os.environ.get("OUT", "compare-results.md") + ".json", "w") as f:
                json.dump({"limits": limits, "rounds": rounds}, f, indent=1)
    results = {n: median_run(rounds[n]) for n in ONLY}
    settle()
    tls = tls_rows(work, big_path, big_digest, big_size) if "wharf" in ONLY else {}
    settle()
    mem = memory_rows(work) if "wharf" in ONLY and not QUICK else {}

    # The ratio columns compare wharf (io_uring) with the other registries and with wharf-old;
    # wharf-epoll is a column.
    peers = [n for n in ONLY if n not in ("wharf", "wharf-epoll")]
    lines = []
    p = lines.append
    kernel = os.uname().release
    p(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, "
      f"Linux {kernel}; {SECS} s per load scenario; client and server share the cores.")
    if os.environ.get("FAST_FS") == "1":
        p("Every server's data on a new journaled ext4 on a RAM-backed loop device (FAST_FS=1): "
          "each fsync still commits the journal, but the device's flush costs nothing.")
    if ROUNDS > 1:
        p(f"{ROUNDS} rounds, the servers' order reversed every other round; each cell is the median "
          "round, each ratio the ratio of medians followed by the rounds' own ratios.")
    p("")
    p("Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()))
    p("")
    head = "| scenario | " + " | ".join(ONLY) + "".join(f" | wharf ÷ {x}" for x in peers) + " |"
    p(head)
    p("|" + "---|" * (1 + len(ONLY) + len(peers)))

    def ratio(a, b):
        return f"{a / b:.1f}×" if a and b else "—"

    def ratio_cell(key, metric, x):
        """wharf ÷ x of the medians; with several rounds, each round's ratio after it."""
        def value(run):
            v = run[key]
            return v[metric] if metric else v
        cell = ratio(value(results["wharf"]), value(results[x]))
        if ROUNDS > 1:
            each = [ratio(value(a), value(b)) for a, b in zip(rounds["wharf"], rounds[x])]
            cell += " (" + " / ".join(each) + ")"
        return cell

    rows = [
        ("4 KiB blob GET, 32 conns (wrk)", "get_blob_4k"),
        ("manifest GET by tag, 32 conns (wrk)", "get_manifest"),
        ("4 KiB blob GET, 32 VUs (k6)", "k6_pull_4k"),
        ("manifest HEAD/GET storm, 32 VUs (k6)", "k6_manifest"),
        ("4 KiB blob push POST+PUT, 32 VUs (k6), blobs/s", "k6_push_4k"),
        ("1 MiB chunked push (4 × 256 KiB PATCH), 32 VUs (k6), blobs/s", "k6_chunked_1m"),
        ("75 % pull / 25 % push, 4 KiB, 32 VUs (k6), ops/s", "k6_mix_4k"),
        ("1 MiB blob GET, 32 VUs (k6)", "k6_pull_1m"),
    ]
    for label, key in rows:
        vals = [results[n][key] for n in ONLY]
        p(f"| {label} | " + " | ".join(fmt_req(v) for v in vals)
          + "".join(f" | {ratio_cell(key, 'rps', x)}" for x in peers) + " |")
    for label, key in [("1 MiB blob GET, 32 VUs (k6), MB/s", "k6_pull_1m"),
                       ("1 MiB chunked push, 32 VUs (k6), MB/s", "k6_chunked_1m"),
                       ("64 MiB monolithic push, 1 VU (k6), MB/s", "k6_push_64m")]:
        vals = [results[n][key]["mbps"] for n in ONLY]
        p(f"| {label} | " + " | ".join(f"{v:,.0f}" for v in vals)
          + "".join(f" | {ratio_cell(key, 'mbps', x)}" for x in peers) + " |")
    for label, key in [("256 MiB monolithic PUT, 1 conn (client sends with sendfile; best of 3), MB/s", "push_256m"),
                       ("256 MiB GET, 1 conn (client reads into a 4 MiB buffer; best of 3), MB/s", "pull_256m"),
                       ("peak RSS over all of the above, MiB", "peak_rss")]:
        vals = [results[n][key] for n in ONLY]
        p(f"| {label} | " + " | ".join(f"{v:,.0f}" for v in vals)
          + "".join(f" | {ratio_cell(key, None, x)}" for x in peers) + " |")
    p("")
    sha, fill = limits["sha_mbps"], limits["fill_mbps"]
    p(f"Machine, same run: one loopback TCP stream (iperf3) {limits['tcp_mbps']:,.0f} MB/s; "
      f"single-core SHA-256 (openssl speed, 1 MiB blocks) {sha:,.0f} MB/s "
      f"(Python hashlib {limits['py_sha_mbps']:,.0f} MB/s); writing 256 MiB into a new file "
      f"(Python, 1 MiB writes, best of 3) {fill:,.0f} MB/s into the page cache, "
      f"{limits['write_mbps']:,.0f} MB/s including fdatasync.")
    if "wharf" in results:
        w = results["wharf"]
        p(f"wharf 256 MiB pull = {w['pull_256m'] / limits['tcp_mbps']:.0%} of the TCP stream; "
          f"256 MiB push = {w['push_256m'] / sha:.0%} of single-core SHA-256 and "
          f"{w['push_256m'] / fill:.0%} of the plain new-file write into the page cache.")
        p("")
        p("Server CPU, same run: " + "; ".join(
            f"{n} {results[n]['cpu_us_get_4k']:.1f} µs per 4 KiB GET (wrk), "
            f"{results[n]['cpu_s_per_gb_pull']:.2f} s per GB pulled (256 MiB GETs)" for n in ONLY) + ".")
        p("")
        p("CPU per operation in the k6 rows, server / k6 (ms; both share the two cores): " + "; ".join(
            f"{label}: " + ", ".join(
                f"{n} {results[n][key].get('server_cpu_ms', 0):.2f} / {results[n][key].get('client_cpu_ms', 0):.2f}"
                for n in ONLY)
            for label, key in [("4 KiB push", "k6_push_4k"), ("1 MiB chunked push", "k6_chunked_1m"),
                               ("1 MiB GET", "k6_pull_1m"), ("4 KiB GET", "k6_pull_4k")]) + ".")
    if tls:
        w = results["wharf"]
        p("")
        p("| wharf over TLS (ECDSA P-256 certificate from `wharf cert`, AES-GCM) | result | ÷ plain HTTP |")
        p("|---|---|---|")
        p(f"| 4 KiB blob GET, 32 conns (wrk, TLS) | {fmt_req(tls['tls_get_4k'])} | "
          f"{tls['tls_get_4k']['rps'] / w['get_blob_4k']['rps']:.0%} |")
        p(f"| 4 KiB blob GET, 32 VUs (k6, TLS) | {fmt_req(tls['tls_k6_pull_4k'])} | "
          f"{tls['tls_k6_pull_4k']['rps'] / w['k6_pull_4k']['rps']:.0%} |")
        p(f"| 4 KiB blob GET, 32 VUs (k6, mutual TLS via tlsAuth) | {fmt_req(tls['mtls_k6_pull_4k'])} | "
          f"{tls['mtls_k6_pull_4k']['rps'] / w['k6_pull_4k']['rps']:.0%} |")
        p(f"| 256 MiB GET, 1 conn (best of 5), MB/s | {tls['tls_pull_256m']:,.0f} | "
          f"{tls['tls_pull_256m'] / w['pull_256m']:.0%} |")
        p(f"| server CPU per 4 KiB GET (wrk), µs | {tls['cpu_us_get_4k']:.1f} | "
          f"{tls['cpu_us_get_4k'] / w['cpu_us_get_4k']:.0%} |")
        p(f"| server CPU per GB pulled (256 MiB GETs), s | {tls['cpu_s_per_gb_pull']:.2f} | "
          f"{tls['cpu_s_per_gb_pull'] / w['cpu_s_per_gb_pull']:.0%} |")
        p(f"| 256 MiB PUT, 1 conn (best of 3), MB/s | {tls['tls_push_256m']:,.0f} | "
          f"{tls['tls_push_256m'] / w['push_256m']:.0%} |")
    if mem:
        p("")
        p("| wharf memory | result |")
        p("|---|---|")
        p(f"| RSS idle after start | {mem['rss_before']:.1f} MiB |")
        p(f"| peak RSS while a 4 GiB blob is pushed ({mem['push_4g_mbps']:,.0f} MB/s) and pulled "
          f"({mem['pull_4g_mbps']:,.0f} MB/s) | {mem['peak_4g']:.1f} MiB |")
        p(f"| RSS with 10,000 idle keep-alive connections | {mem['rss_10k_idle']:.1f} MiB |")
    zb_tables = {n: parse_zb(results[n].get("zb") or "") for n in ONLY}
    tests = [t for t in next(iter(zb_tables.values()), {})]
    for n in ONLY:
        tests += [t for t in zb_tables[n] if t not in tests]
    if tests:
        p("")
        p(f"zb (zot's own benchmark client, `zb -c {ZB_C} -n {ZB_N}`), requests/s per test "
          "(failed requests in brackets):")
        p("")
        p("| zb test | " + " | ".join(ONLY) + "".join(f" | wharf ÷ {x}" for x in peers) + " |")
        p("|" + "---|" * (1 + len(ONLY) + len(peers)))
        for t in tests:
            cells = []
            for n in ONLY:
                v = zb_tables[n].get(t)
                cells.append("—" if v is None else f"{v[0]:,.1f}" + (f" [{v[1]} failed]" if v[1] else ""))
            ratios = []
            for x in peers:
                a, b = zb_tables["wharf"].get(t), zb_tables[x].get(t)
                ratios.append(ratio(a[0], b[0]) if a and b else "—")
            p(f"| {t} | " + " | ".join(cells) + "".join(f" | {r}" for r in ratios) + " |")
        for n in ONLY:
            z = results[n].get("zb") or ""
            if "no progress" in z:
                p("")
                p(f"zb against {n} stopped making progress (no CPU, no connections) after the "
                  f"tests listed and was stopped after {ZB_TIMEOUT} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    open(os.environ.get("OUT", "compare-results.md"), "w").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
