#!/usr/bin/env python3
"""The S3 mode of compare.sh (S3=1): wharf and CNCF distribution (its `s3` storage driver) on one
SeaweedFS, and SeaweedFS itself answering the same client as the physical limit.

One `weed mini` on loopback ports serves a bucket; each registry runs in turn on it under its own
prefix, bytes streamed through the registry (no redirects). Rows: 4 KiB blob GET and manifest GET
(wrk, 32 connections), 4 KiB pushes (k6, 32 VUs), 256 MiB push and pull over one connection (the
same raw-socket client for SeaweedFS, with presigned URLs) with the CPU seconds SeaweedFS, the
server and the client spend per 256 MiB transfer (from /proc: on shared cores their sum bounds
the large rows), each server's peak RSS, and unless
QUICK=1 wharf's peak RSS through a 4 GiB push and pull. Then the three-node run: small-blob GETs
against one wharf node and against three nodes on the same bucket, the client spreading its
connections over them; and a wharf node with `redirect = true`, its 256 MiB pull timed from the
request to wharf through the 307 to the last byte from SeaweedFS. A benchmark: it never fails on a
number.
"""

import datetime
import hashlib
import hmac
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402 - the helpers of the filesystem comparison

WEED = os.environ.get("WEED_BIN", os.path.join(c.ROOT, "target", "tools", "bin", "weed"))
ONLY = os.environ.get("ONLY", "wharf,distribution,seaweedfs").split(",")
KEY, SECRET, BUCKET, REGION = "bench", "bench-secret", "bench", "us-east-1"
GIB = 1 << 30


def presign(endpoint, method, key, ttl=3600):
    """A SigV4 presigned path-style URL (payload unsigned), as an S3 SDK would make it."""
    u = urllib.parse.urlsplit(endpoint)
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{day}/{REGION}/s3/aws4_request"
    path = f"/{BUCKET}/" + urllib.parse.quote(key)
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{KEY}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": str(ttl),
        "X-Amz-SignedHeaders": "host",
    }
    q = "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}"
                 for k, v in sorted(query.items()))
    canonical = f"{method}\n{path}\n{q}\nhost:{u.netloc}\n\nhost\nUNSIGNED-PAYLOAD"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + SECRET).encode()
    for part in (day, REGION, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{endpoint}{path}?{q}&X-Amz-Signature={sig}"


class Weed:
    """One SeaweedFS (`weed mini`) on free loopback ports with one bucket and one access key."""

    @staticmethod
    def start(work):
        """Retried: a port picked free can be taken again before weed binds it."""
        for attempt in range(3):
            try:
                return Weed(work)
            except RuntimeError as e:
                c.log(f"  SeaweedFS did not start (attempt {attempt + 1}): {e}")
        raise SystemExit("SeaweedFS did not start")

    def __init__(self, work):
        self.dir = tempfile.mkdtemp(prefix="weed-", dir=work)
        os.makedirs(f"{self.dir}/data")
        open(f"{self.dir}/s3.json", "w").write(
            '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
            '"actions":["Admin","Read","Write","List","Tagging"]}]}' % (KEY, SECRET))
        open(f"{self.dir}/secret", "w").write(SECRET)
        self.port = c.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        args = [WEED, "mini", f"-dir={self.dir}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={self.port}", f"-s3.config={self.dir}/s3.json", f"-bucket={BUCKET}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"]
        for p in ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                  "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port",
                  "admin.port.grpc"]:
            args.append(f"-{p}={c.free_port()}")
        self.proc = subprocess.Popen(args, stdout=open(f"{self.dir}/log", "w"),
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-I",
                                  "--aws-sigv4", f"aws:amz:{REGION}:s3", "--user",
                                  f"{KEY}:{SECRET}", f"{self.endpoint}/{BUCKET}"],
                                 capture_output=True, text=True).stdout
            if out == "200":
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(open(f"{self.dir}/log").read()[-2000:])

    def version(self):
        return c.run([WEED, "version"]).strip().splitlines()[0]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)


class Registry(c.Server):
    """wharf or distribution on the shared bucket under its own prefix (stopped and named as in
    the filesystem comparison)."""

    def __init__(self, name, work, weed, prefix, redirect=False):
        super().__init__(name, work)
        self.weed, self.prefix, self.redirect = weed, prefix, redirect

    def start(self):
        d, w = self.dir, self.weed
        if self.name == "wharf":
            open(f"{d}/wharf.toml", "w").write(
                f'[server]\nport = {self.port}\n[storage]\nbackend = "s3"\n[storage.s3]\n'
                f'endpoint = "{w.endpoint}"\nbucket = "{BUCKET}"\nprefix = "{self.prefix}"\n'
                f'access_key_id = "{KEY}"\nsecret_access_key_file = "{w.dir}/secret"\n'
                f'redirect = {str(self.redirect).lower()}\n')
            cmd = [c.WHARF, "serve", "-c", f"{d}/wharf.toml"]
            env = dict(os.environ, RUST_LOG="warn")
        else:
            open(f"{d}/config.yml", "w").write(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                "storage:\n  s3:\n"
                f"    accesskey: {KEY}\n    secretkey: {SECRET}\n    region: {REGION}\n"
                f"    regionendpoint: {w.endpoint}\n    bucket: {BUCKET}\n"
                f"    rootdirectory: /{self.prefix.rstrip('/')}\n    forcepathstyle: true\n"
                "    secure: false\n    v4auth: true\n"
                "  delete:\n    enabled: true\n  redirect:\n    disable: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n")
            cmd = [f"{c.PEERS}/registry", "serve", f"{d}/config.yml"]
            env = dict(os.environ, OTEL_TRACES_EXPORTER="none")
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(f"{d}/out", "w"),
                                     stderr=open(f"{d}/log", "w"))
        c.wait_http(self.url + "/v2/")
        return self


def costed(run, pids, n):
    """`run()` and the CPU seconds each of `pids`, then this client, used per one of its `n`
    transfers."""
    pids = (*pids, os.getpid())
    before = [c.cpu_seconds(p) for p in pids]
    value = run()
    return value, [(c.cpu_seconds(p) - b) / n for p, b in zip(pids, before)]


def cpu_cell(v):
    """SeaweedFS's, the server's and the client's CPU seconds per transfer (no server: direct)."""
    store, server, client = v
    parts = [store] + ([server] if server is not None else []) + [client]
    return " + ".join(f"{x:.2f}" for x in parts) + f" = {sum(parts):.2f}"


def registry_rows(s, big_path, big_digest, big_size):
    r = {}
    small = os.urandom(4096)
    d = c.push_blob(s.url, small, "bench/get")
    c.push_manifest(s.url, "bench/get", "latest", d, len(small))
    c.log(f"  {s.name}: wrk 4 KiB blob GET")
    r["get_4k"] = c.wrk(f"{s.url}/v2/bench/get/blobs/{d}")["rps"]
    c.log(f"  {s.name}: wrk manifest GET by tag")
    r["manifest"] = c.wrk(f"{s.url}/v2/bench/get/manifests/latest",
                          headers=("Accept: application/vnd.oci.image.manifest.v1+json",))["rps"]
    c.log(f"  {s.name}: k6 4 KiB pushes, 32 VUs")
    r["push_4k"] = c.k6(s.url, "push", 4096, 32)["rps"]
    c.log(f"  {s.name}: 256 MiB push and pull, one connection")
    pids = (s.weed.proc.pid, s.proc.pid)
    r["push_256m"], r["push_cpu"] = costed(
        lambda: c.big_push(s.url, big_path, big_digest, big_size, best_of=2), pids, 2)
    r["pull_256m"], r["pull_cpu"] = costed(
        lambda: c.big_pull(s.url, big_digest, big_size, best_of=2), pids, 2)
    r["rss"] = c.status_mib(s.proc.pid, "VmHWM")
    return r


def direct_rows(weed, big_path, big_size):
    """SeaweedFS answering the same clients: presigned GETs of a 4 KiB object (wrk), and a raw
    PUT and GET of the 256 MiB file (the sockets of compare.big_push / big_pull)."""
    r = {}
    small = os.urandom(4096)
    put = presign(weed.endpoint, "PUT", "direct/small")
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", "-X", "PUT", "--data-binary", "@-", put],
                   input=small, check=True)
    c.log("  seaweedfs: wrk 4 KiB GET (presigned)")
    r["get_4k"] = c.wrk(presign(weed.endpoint, "GET", "direct/small"))["rps"]
    buf = memoryview(bytearray(4 * c.MIB))
    best_put = best_get = None
    put_cpu, get_cpu = [], []
    for _ in range(2):
        url = urllib.parse.urlsplit(presign(weed.endpoint, "PUT", "direct/big"))
        t, cpu = costed(lambda: c.timed_put(weed.endpoint, f"{url.path}?{url.query}", big_path,
                                            big_size, ok=(200,)), (weed.proc.pid,), 1)
        best_put, put_cpu = (t, cpu) if best_put is None or t < best_put else (best_put, put_cpu)
        url = urllib.parse.urlsplit(presign(weed.endpoint, "GET", "direct/big"))
        t, cpu = costed(lambda: c.timed_get(weed.endpoint, f"{url.path}?{url.query}", big_size,
                                            buf), (weed.proc.pid,), 1)
        best_get, get_cpu = (t, cpu) if best_get is None or t < best_get else (best_get, get_cpu)
    r["push_256m"] = big_size / best_put / 1e6
    r["pull_256m"] = big_size / best_get / 1e6
    r["push_cpu"], r["pull_cpu"] = ([c[0], None, c[1]] for c in (put_cpu, get_cpu))
    r["rss"] = c.status_mib(weed.proc.pid, "VmHWM")
    return r


def redirected_get(url, target, size, buf):
    """GET `target`, which must answer a redirect, and the URL it names, each over a new
    connection; seconds from the first request to the last byte of the second answer."""
    sock = c._conn(url)
    host = url.split("://", 1)[1]
    t0 = time.perf_counter()
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    status, headers, _ = c._head(sock)
    sock.close()
    assert status == 307, f"expected a redirect, got {status}"
    u = urllib.parse.urlsplit(headers["location"])
    return time.perf_counter() - t0 + c.timed_get(f"{u.scheme}://{u.netloc}",
                                                  f"{u.path}?{u.query}", size, buf)


def redirect_rows(work, weed, big_path, big_digest, big_size):
    """A wharf node with `redirect = true`: the 256 MiB pull answered by a 307 to a presigned URL
    and then by SeaweedFS itself, timed from the request to wharf to the last byte."""
    c.log("  wharf with redirect = true: 256 MiB pull through a 307")
    s = Registry("wharf", work, weed, "redirect/", redirect=True).start()
    try:
        c.big_push(s.url, big_path, big_digest, big_size, best_of=1)
        buf = memoryview(bytearray(4 * c.MIB))
        target = f"/v2/bench/big0/blobs/{big_digest}"
        t, cpu = costed(lambda: min(redirected_get(s.url, target, big_size, buf)
                                    for _ in range(2)), (weed.proc.pid, s.proc.pid), 2)
        return {"pull_256m": big_size / t / 1e6, "pull_cpu": cpu}
    finally:
        s.stop()


def big_rss(work, weed):
    """wharf's peak RSS through a 4 GiB monolithic push and pull (streamed from /dev/urandom
    through a hashing pipe, so the client keeps no copy)."""
    s = Registry("wharf", work, weed, "rss/").start()
    try:
        path = os.path.join(work, "b4g")
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for _ in range(GIB * 4 // (16 * c.MIB)):
                chunk = os.urandom(16 * c.MIB)
                h.update(chunk)
                f.write(chunk)
        digest = "sha256:" + h.hexdigest()
        c.big_push(s.url, path, digest, 4 * GIB, best_of=1)
        os.unlink(path)
        c.big_pull(s.url, digest, 4 * GIB, best_of=1)
        return c.status_mib(s.proc.pid, "VmHWM")
    finally:
        s.stop()


def spread_get(urls, conns=32):
    """wrk against each URL at once, the connections split between them; summed requests/s."""
    per = max(1, conns // len(urls))
    procs = [subprocess.Popen(["wrk", "-t1", f"-c{per}", f"-d{c.SECS}s", u],
                              stdout=subprocess.PIPE, text=True) for u in urls]
    total = 0.0
    for p in procs:
        out, _ = p.communicate()
        total += float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    return total


def nodes_rows(work, weed):
    """Small-blob GETs through one node, then through three nodes on the same bucket."""
    nodes = [Registry("wharf", work, weed, "nodes/").start() for _ in range(3)]
    try:
        small = os.urandom(4096)
        d = c.push_blob(nodes[0].url, small, "bench/nodes")
        urls = [f"{n.url}/v2/bench/nodes/blobs/{d}" for n in nodes]
        c.log("  wharf: 4 KiB GETs through one node, then three")
        return {"one": spread_get(urls[:1]), "three": spread_get(urls)}
    finally:
        for n in nodes:
            n.stop()


def main():
    work = tempfile.mkdtemp(prefix="wharf-s3bench-")
    try:
        return bench(work)
    finally:
        c.shutil.rmtree(work, ignore_errors=True)


def bench(work):
    big_size = 256 * c.MIB
    big_path = os.path.join(work, "b256m")
    data = os.urandom(big_size)
    open(big_path, "wb").write(data)
    big_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    del data
    weed = Weed.start(work)
    results, versions = {}, {"seaweedfs": weed.version()}
    try:
        for name in ONLY:
            c.log(f"{name}:")
            c.settle()
            if name == "seaweedfs":
                results[name] = direct_rows(weed, big_path, big_size)
                continue
            s = Registry(name, work, weed, f"{name}/").start()
            try:
                versions[name] = s.version()
                results[name] = registry_rows(s, big_path, big_digest, big_size)
            finally:
                s.stop()
        c.settle()
        nodes = nodes_rows(work, weed) if "wharf" in ONLY else None
        redirected = (redirect_rows(work, weed, big_path, big_digest, big_size)
                      if "wharf" in ONLY else None)
        rss4g = big_rss(work, weed) if "wharf" in ONLY and not c.QUICK else None
    finally:
        weed.stop()

    lines = []
    p = lines.append
    p(f"S3 run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, "
      f"Linux {os.uname().release}; {c.SECS} s per load scenario; client, registry and SeaweedFS "
      "share the cores.")
    p("")
    p("Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()))
    p("")
    cols = [n for n in ONLY]
    peers = [n for n in ONLY if n != "wharf"]
    p("| scenario | " + " | ".join(cols) + "".join(f" | wharf ÷ {x}" for x in peers) + " |")
    p("|" + "---|" * (1 + len(cols) + len(peers)))
    rows = [("4 KiB blob GET, 32 conns (wrk), req/s", "get_4k", "{:,.0f}"),
            ("manifest GET by tag (wrk), req/s", "manifest", "{:,.0f}"),
            ("4 KiB push POST+PUT, 32 VUs (k6), ops/s", "push_4k", "{:,.0f}"),
            ("256 MiB PUT, 1 conn, MB/s", "push_256m", "{:,.0f}"),
            ("256 MiB GET, 1 conn, MB/s", "pull_256m", "{:,.0f}"),
            ("256 MiB PUT, CPU s per push: SeaweedFS + server + client", "push_cpu", cpu_cell),
            ("256 MiB GET, CPU s per pull: SeaweedFS + server + client", "pull_cpu", cpu_cell),
            ("peak RSS over the run, MiB", "rss", "{:.0f}")]
    for label, key, fmt in rows:
        vals = [results.get(n, {}).get(key) for n in cols]
        show = fmt if callable(fmt) else fmt.format
        cells = [show(v) if v is not None else "—" for v in vals]
        w = results.get("wharf", {}).get(key)
        ratios = []
        for x in peers:
            v = results.get(x, {}).get(key)
            ok = not callable(fmt) and w and v
            ratios.append(f"{w / v:.2f}×" if ok else "—")
        p(f"| {label} | " + " | ".join(cells) + "".join(f" | {r}" for r in ratios) + " |")
    if nodes:
        p("")
        p(f"Three nodes on one bucket (4 KiB blob GETs, 32 connections spread by the client): one "
          f"node {nodes['one']:,.0f} req/s, three nodes {nodes['three']:,.0f} req/s "
          f"({nodes['three'] / nodes['one']:.2f}×) on {os.cpu_count()} cores.")
    if redirected:
        direct = results.get("seaweedfs", {}).get("pull_256m")
        share = f" ({redirected['pull_256m'] / direct:.2f} of SeaweedFS direct)" if direct else ""
        p("")
        p(f"wharf with `redirect = true`, 256 MiB pull through a 307 to a presigned URL: "
          f"{redirected['pull_256m']:,.0f} MB/s{share}; CPU s per pull "
          f"{cpu_cell(redirected['pull_cpu'])}.")
    if rss4g:
        p("")
        p(f"wharf peak RSS through a 4 GiB monolithic push and pull on S3: {rss4g:.0f} MiB.")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.environ.get("OUT", "compare-s3-results.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
