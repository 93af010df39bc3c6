#!/usr/bin/env python3
"""A 256 MiB blob pulled cold: pushed once, then ROUNDS times evicted from the page cache
(`POSIX_FADV_DONTNEED` on the blob's file, which is clean after wharf's fsync) and pulled over one
loopback connection, then pulled once more warm; beside it, in the same round, `dd` reading the
same evicted file in 1 MiB and 8 MiB blocks (the device's limit). The servers (this build; OLD_BIN,
another wharf build; ZOT=1, zot as compare.sh builds it, ZOT_BIN) run in turn, in reversed order
every other round.

    python3 loadtest/coldget.py                                  # this build
    OLD_BIN=/tmp/old/wharf ZOT=1 python3 loadtest/coldget.py     # against another build and zot

Needs a release build (`cargo build --release`) and curl; prints one line per pull and the medians.
"""

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

MIB = 1 << 20
ROUNDS = int(os.environ.get("ROUNDS", "5"))
SIZE = int(os.environ.get("SIZE_MIB", "256")) * MIB


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def dd(path, bs):
    evict(path)
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", f"bs={bs}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return SIZE / (time.perf_counter() - t0) / 1e6


def pull(url, digest):
    return compare.big_pull(url, digest, SIZE, best_of=1, repo="bench/cold")


def main():
    builds = [("wharf", os.environ.get("WHARF_BIN", compare.WHARF))]
    if os.environ.get("OLD_BIN"):
        builds.append(("wharf-old", os.environ["OLD_BIN"]))
    if os.environ.get("ZOT") == "1":
        builds.append(("zot", compare.ZOT_BIN))
    work = tempfile.mkdtemp(prefix="coldget-")
    data = os.urandom(SIZE)
    path = os.path.join(work, "blob")
    open(path, "wb").write(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    hexd = digest.split(":")[1]
    servers = []
    for name, binary in builds:
        compare.WHARF = binary
        s = compare.Server("zot" if name == "zot" else "wharf", work).start()
        s.binary = binary
        loc = compare.start_upload(s.url, "bench/cold")
        sep = "&" if "?" in loc else "?"
        compare.timed_put(s.url, f"{loc}{sep}digest={digest}", path, SIZE)
        if name == "zot":
            s.blob = f"{s.dir}/data/bench/cold/blobs/sha256/{hexd}"
        else:
            s.blob = f"{s.dir}/data/blobs/sha256/{hexd[:2]}/{hexd}"
        assert os.path.exists(s.blob), s.blob
        servers.append((name, s))
    results = {name: {"cold": [], "warm": []} for name, _ in builds}
    results["dd 1 MiB"], results["dd 8 MiB"] = {"cold": []}, {"cold": []}
    try:
        for r in range(ROUNDS):
            order = servers if r % 2 == 0 else servers[::-1]
            for name, s in order:
                evict(s.blob)
                cold = pull(s.url, digest)
                warm = pull(s.url, digest)
                results[name]["cold"].append(cold)
                results[name]["warm"].append(warm)
                print(f"round {r + 1} {name} ({s.binary}): cold {cold:,.0f} MB/s, warm {warm:,.0f} MB/s",
                      flush=True)
            for bs in ("1M", "8M"):
                mbps = dd(servers[0][1].blob, bs)
                results[f"dd {bs[0]} MiB"]["cold"].append(mbps)
                print(f"round {r + 1} dd bs={bs}: cold {mbps:,.0f} MB/s", flush=True)
    finally:
        for _, s in servers:
            s.stop()
    print(f"\nmedians of {ROUNDS} rounds, {SIZE // MIB} MiB, MB/s:")
    for name, rows in results.items():
        cells = ", ".join(f"{k} {statistics.median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f})"
                          for k, v in rows.items())
        print(f"  {name}: {cells}")


if __name__ == "__main__":
    main()
