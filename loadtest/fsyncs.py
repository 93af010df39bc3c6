#!/usr/bin/env python3
"""What each registry does to the filesystem per pushed blob: fsyncs and inode allocations.

Runs the k6 4 KiB push scenario (POST + PUT, 32 VUs) and the 1 MiB chunked push (4 PATCH of
256 KiB, then PUT) against each server in turn (the ones loadtest/compare.sh built) and counts,
system-wide with `perf stat`, the ext4 tracepoints `ext4_sync_file_enter` (every fsync/fdatasync,
whether a syscall or an io_uring op) and `ext4_allocate_inode` / `ext4_free_inode`. On ext4
without a journal every inode allocation scans past the inodes freed in the last minute, so both
columns cost CPU. Needs root, `perf` (Debian: linux-perf) and an ext4 filesystem under $TMPDIR.
Usage: loadtest/fsyncs.py [seconds] (env ONLY=wharf,zot,...)
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

EVENTS = ["ext4:ext4_sync_file_enter", "ext4:ext4_allocate_inode", "ext4:ext4_free_inode"]


def main():
    secs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    print("| server | scenario | blobs/s | fsyncs per blob | inodes allocated per blob | "
          "inodes freed per blob |")
    print("|---|---|---|---|---|---|")
    for name, (scenario, size) in [(n, sc) for n in compare.ONLY
                                   for sc in (("push", 4096), ("chunked", 1 << 20))]:
        work = tempfile.mkdtemp(prefix="fsyncs-")
        s = compare.Server(name, work).start()
        try:
            out = os.path.join(work, "perf.txt")
            perf = subprocess.Popen(["perf", "stat", "-a", "-x", ",", "-e", ",".join(EVENTS),
                                     "-o", out])
            time.sleep(0.5)
            r = compare.k6(s.url, scenario, size, 32, secs=secs)
            perf.send_signal(2)
            perf.wait()
            counts = {}
            for line in open(out):
                f = line.strip().split(",")
                if len(f) > 2 and f[2] in EVENTS:
                    counts[f[2]] = int(f[0])
            # One blob per k6 iteration, `rps` iterations per second over `secs` seconds.
            blobs = r["rps"] * secs
            per = {e: counts.get(e, 0) / blobs for e in EVENTS}
            print(f"| {name} | {scenario} {size // 1024} KiB | {r['rps']:,.0f} | {per[EVENTS[0]]:.2f} | {per[EVENTS[1]]:.2f} | "
                  f"{per[EVENTS[2]]:.2f} |")
        finally:
            s.stop()
            subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
