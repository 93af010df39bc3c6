#!/usr/bin/env python3
"""Memory of idle keep-alive connections (a benchmark, never a test): each server in turn on
loopback, N connections that each made one request and then wait, and the RSS that grew, per
connection. wharf over plain HTTP and over TLS (with a client certificate), distribution over plain
HTTP when loadtest/.peers has it (compare.sh builds it), and `wharf-old` when OLD_BIN names another
wharf build (a before/after in one run).

Usage: loadtest/idle.py [N]   (default 10,000; builds nothing: run `cargo build --release` first)
"""

import os
import resource
import socket
import ssl
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import OLD_BIN, PEERS, Server, bench_pki, status_mib  # noqa: E402


def idle_growth(server, n, ctx=None):
    """KiB of RSS per connection that `n` idle connections (one request each) grew `server` by."""
    pid = server.proc.pid
    time.sleep(1)
    before = status_mib(pid, "VmRSS")
    conns = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", server.port))
        if ctx:
            c = ctx.wrap_socket(c, server_hostname="127.0.0.1")
        c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        conns.append(c)
    for c in conns:
        if not c.recv(4096).startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"{server.name}: GET /v2/ did not answer 200 on every connection")
    # wharf parks a connection 250 ms after its last request; give every server a moment.
    time.sleep(2)
    grown = status_mib(pid, "VmRSS") - before
    for c in conns:
        c.close()
    return grown * 1024 / n


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * n + 1024)), hard))
    work = tempfile.mkdtemp(prefix="idle-")
    pki, tls = bench_pki(work)
    ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    ctx.load_cert_chain(f"{pki}/client.crt", f"{pki}/client.key")
    names = ["wharf"] + (["wharf-old"] if OLD_BIN else [])
    rows = []
    for name in names:
        for label, cfg, c in [("plain", None, None), ("TLS, client certificate", tls, ctx)]:
            s = Server(name, work)
            # All connections come from 127.0.0.1: lift the per-address cap (256 by default).
            s.storage_extra = "[limits]\nmax_connections_per_client = 0\n"
            s.start(tls=cfg)
            try:
                rows.append((f"{name} ({label})", idle_growth(s, n, c)))
            finally:
                s.stop()
    if os.path.exists(os.path.join(PEERS, "registry")):
        s = Server("distribution", work).start()
        try:
            rows.append(("distribution v3.1.2 (plain)", idle_growth(s, n)))
        finally:
            s.stop()
    print(f"| {n:,} idle keep-alive connections | RSS per connection |")
    print("|---|---|")
    for label, kib in rows:
        print(f"| {label} | {kib:.1f} KiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
