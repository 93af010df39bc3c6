#!/usr/bin/env python3
"""Fleet pulls through a pull-through cache: N clients (default 64) ask a mirror for the same
uncached layer (default 256 MiB) at the same moment, as a CI fleet starting one job does; then
again once it is cached. wharf's `[[upstream]]` mirror beside CNCF distribution v3.1.2 in proxy
mode (`proxy.remoteurl`), each in turn with fresh storage, in front of the same upstream (a wharf
holding the layer, with its access log on, which counts the blob GETs the mirror sent it).

Per mirror: upstream blob GETs and bytes while the fleet pulled, wall time until every client had
the whole layer, aggregate MB/s, each client's time to first byte and to last (p50/max), and the
warm round's wall time. Every client hashes what it received and checks it against the digest.

Second table: the upstream behind a slow link (LINK_MBS, default 16 MB/s, shared by all
connections, as a WAN link to Docker Hub is; a throttling TCP proxy in this script): one client
pulling the uncached layer alone, then the whole fleet, each on fresh storage; the issue's target
is the fleet's last client within 1.3x of the one alone. distribution's fleet is not run over the
link (its 64 upstream fetches would share it: about 64 times the solo time); its solo pull is.
A benchmark: it never fails on a number.

  loadtest/fleet.py                 # CLIENTS=64 SIZE_MIB=256 LINK_MBS=16 ONLY=wharf,distribution OUT=file
Needs target/release/wharf and loadtest/.peers/bin/registry (loadtest/compare.sh builds both).
"""

import datetime
import hashlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402 - the helpers of the comparison

CLIENTS = int(os.environ.get("CLIENTS", "64"))
SIZE = int(os.environ.get("SIZE_MIB", "256")) * c.MIB
ONLY = os.environ.get("ONLY", "wharf,distribution").split(",")
LINK = float(os.environ.get("LINK_MBS", "16")) * 1e6


class Link:
    """A TCP proxy on loopback whose upstream-to-client bytes share one token bucket of `rate`
    bytes/s (all connections together), like a WAN link."""

    def __init__(self, target_port, rate):
        import socket

        self.rate, self.target = rate, target_port
        self.lock = threading.Lock()
        self.allowance, self.last = 0.0, time.monotonic()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def take(self, n):
        while True:
            with self.lock:
                now = time.monotonic()
                self.allowance = min(self.rate * 0.05, self.allowance + (now - self.last) * self.rate)
                self.last = now
                if self.allowance >= n:
                    self.allowance -= n
                    return
                wait = (n - self.allowance) / self.rate
            time.sleep(wait)

    def accept(self):
        import socket

        while True:
            client, _ = self.sock.accept()
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self.pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, True), daemon=True).start()

    def pump(self, src, dst, slow):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if slow:
                    self.take(len(data))
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(2)
            except OSError:
                pass


class Proc:
    def __init__(self, cmd, d, env=None):
        self.log = os.path.join(d, "log")
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(os.path.join(d, "out"), "w"),
                                     stderr=open(self.log, "w"))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wharf(d, port, extra="", log="warn"):
    os.makedirs(f"{d}/data", exist_ok=True)
    open(f"{d}/wharf.toml", "w").write(
        f'[server]\nport = {port}\n[storage]\nroot = "{d}/data"\n{extra}')
    p = Proc([c.WHARF, "serve", "-c", f"{d}/wharf.toml"], d, dict(os.environ, RUST_LOG=log))
    c.wait_http(f"http://127.0.0.1:{port}/v2/")
    return p


def distribution_proxy(d, port, upstream):
    os.makedirs(f"{d}/data", exist_ok=True)
    open(f"{d}/config.yml", "w").write(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\nproxy:\n  remoteurl: {upstream}\n")
    p = Proc([f"{c.PEERS}/registry", "serve", f"{d}/config.yml"], d,
             dict(os.environ, OTEL_TRACES_EXPORTER="none"))
    c.wait_http(f"http://127.0.0.1:{port}/v2/")
    return p


def upstream_gets(log, digest):
    """Blob GETs of `digest` in the upstream's access log, and the body bytes they sent."""
    n = sent = 0
    for line in open(log, errors="replace"):
        if "wharf::access" in line and f"GET /v2/library/big/blobs/{digest}" in line:
            m = re.search(r" (\d{3}) (\d+) \d+us", line)
            if m and m.group(1) == "200":
                n += 1
                sent += int(m.group(2))
    return n, sent


def start_mirror(name, d, port, up_url):
    """The mirror `name` on `port` in front of `up_url`; (process, blob path prefix)."""
    if name == "wharf":
        p = wharf(d, port, f'[[upstream]]\nname = "up"\nurl = "{up_url}"\nprefix = "hub"\n')
        return p, "/v2/hub/library/big/blobs/"
    return distribution_proxy(d, port, up_url), "/v2/library/big/blobs/"


def one_client(url, target, digest, start, out, i):
    buf = memoryview(bytearray(4 * c.MIB))
    start.wait()
    t0 = time.perf_counter()
    sock = c._conn(url)
    host = url.split("://", 1)[1]
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    status, _, rest = c._head(sock)
    first = time.perf_counter() - t0
    h = hashlib.sha256(rest)
    left = SIZE - len(rest)
    ok = status == 200
    while ok and left > 0:
        n = sock.recv_into(buf)
        if n == 0:
            ok = False
            break
        h.update(buf[:n])
        left -= n
    sock.close()
    out[i] = (ok and "sha256:" + h.hexdigest() == digest, first, time.perf_counter() - t0)


def fleet(url, target, digest, clients=CLIENTS):
    """`clients` clients GET `target` at once; (wall s, all verified, ttfb list, done list)."""
    start = threading.Barrier(clients + 1)
    out = [None] * clients
    threads = [threading.Thread(target=one_client, args=(url, target, digest, start, out, i))
               for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return wall, all(o and o[0] for o in out), [o[1] for o in out if o], [o[2] for o in out if o]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def main():
    work = tempfile.mkdtemp(prefix="wharf-fleet-")
    c.log(f"fleet: {CLIENTS} clients, one {SIZE // c.MIB} MiB layer, work dir {work}")
    data = os.urandom(SIZE)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    up_dir = tempfile.mkdtemp(prefix="upstream-", dir=work)
    up_port = c.free_port()
    upstream = wharf(up_dir, up_port, log="info,wharf::access=info")
    up_url = f"http://127.0.0.1:{up_port}"
    c.push_blob(up_url, data, repo="library/big")
    c.push_manifest(up_url, "library/big", "v1", digest, SIZE)
    del data
    rows = []
    try:
        for name in ONLY:
            d = tempfile.mkdtemp(prefix=f"{name}-", dir=work)
            port = c.free_port()
            url = f"http://127.0.0.1:{port}"
            p, base = start_mirror(name, d, port, up_url)
            target = base + digest
            before = upstream_gets(upstream.log, digest)
            c.settle()
            wall, ok, ttfb, done = fleet(url, target, digest)
            # Let the upstream's access log catch up with the last response.
            time.sleep(1)
            after = upstream_gets(upstream.log, digest)
            warm, warm_ok, _, _ = fleet(url, target, digest)
            p.stop()
            rows.append({
                "name": name, "wall": wall, "ok": ok and warm_ok,
                "gets": after[0] - before[0], "bytes": after[1] - before[1],
                "mbs": CLIENTS * SIZE / wall / 1e6, "ttfb50": pct(ttfb, 0.5),
                "ttfbmax": max(ttfb), "done50": pct(done, 0.5), "donemax": max(done),
                "warm": warm,
            })
            c.log(rows[-1])
        link = Link(up_port, LINK)
        slow = []
        for name in ONLY:
            runs = [1, CLIENTS] if name == "wharf" else [1]
            for n in runs:
                d = tempfile.mkdtemp(prefix=f"{name}-link-{n}-", dir=work)
                port = c.free_port()
                p, base = start_mirror(name, d, port, f"http://127.0.0.1:{link.port}")
                c.settle()
                wall, ok, _, _ = fleet(f"http://127.0.0.1:{port}", base + digest, digest, n)
                p.stop()
                slow.append((name, n, wall, ok))
                c.log(slow[-1])
    finally:
        upstream.stop()
    table = [
        f"Fleet pull: {CLIENTS} clients, one uncached {SIZE // c.MIB} MiB layer at once, then again cached "
        f"({datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores; `loadtest/fleet.py`)",
        "",
        "| mirror | upstream blob GETs | bytes from upstream | all clients done (cold) | aggregate | first byte p50 / max | done p50 / max | all done (warm) | every client verified |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        label = "wharf `[[upstream]]`" if r["name"] == "wharf" else "distribution v3.1.2 proxy"
        table.append(
            f"| {label} | {r['gets']} | {r['bytes'] / c.MIB:,.0f} MiB | {r['wall']:.1f} s | "
            f"{r['mbs']:,.0f} MB/s | {r['ttfb50']:.2f} / {r['ttfbmax']:.2f} s | "
            f"{r['done50']:.1f} / {r['donemax']:.1f} s | {r['warm']:.1f} s | {'yes' if r['ok'] else 'NO'} |")
    table += [
        "",
        f"The upstream behind a {LINK / 1e6:.0f} MB/s link shared by all its connections (fresh storage each run):",
        "",
        "| mirror | clients | last client done | ÷ one client alone | every client verified |",
        "|---|---:|---:|---:|---|",
    ]
    alone = {name: wall for name, n, wall, _ in slow if n == 1}
    for name, n, wall, ok in slow:
        label = "wharf `[[upstream]]`" if name == "wharf" else "distribution v3.1.2 proxy"
        table.append(f"| {label} | {n} | {wall:.1f} s | {wall / alone[name]:.2f}× | {'yes' if ok else 'NO'} |")
    text = "\n".join(table) + "\n"
    print(text)
    if os.environ.get("OUT"):
        open(os.environ["OUT"], "w").write(text)


if __name__ == "__main__":
    main()
