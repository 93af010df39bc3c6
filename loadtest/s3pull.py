#!/usr/bin/env python3
"""A 256 MiB blob pulled through wharf from one SeaweedFS, with the CPU each process spends: this
build and, with OLD_BIN, another wharf build, in reversed order every other round (ROUNDS, default
3). Each round starts the build on the bucket, pulls once to warm up, then times the best of four
pulls over one loopback connection and prints MB/s with the CPU seconds per pull of SeaweedFS,
wharf and this client (from /proc). With PUSH=1 the same for pushes: the best of three monolithic
256 MiB pushes (the client sends with sendfile).

    python3 loadtest/s3pull.py                                   # this build
    OLD_BIN=/tmp/old/wharf python3 loadtest/s3pull.py            # A/B against another build
    PUSH=1 OLD_BIN=/tmp/old/wharf python3 loadtest/s3pull.py     # the same for pushes

Needs a release build (`cargo build --release`) and SeaweedFS (`tests/setup.sh` installs it).
"""

import hashlib
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402
import s3bench as s  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
PUSH = os.environ.get("PUSH") == "1"
SIZE = 256 << 20


def main():
    builds = [c.WHARF] + ([os.environ["OLD_BIN"]] if os.environ.get("OLD_BIN") else [])
    work = tempfile.mkdtemp(prefix="wharf-s3pull-")
    weed = s.Weed.start(work)
    try:
        big = os.path.join(work, "big")
        data = os.urandom(SIZE)
        open(big, "wb").write(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        del data
        for rnd in range(ROUNDS):
            for build in builds if rnd % 2 == 0 else builds[::-1]:
                c.WHARF = build
                r = s.Registry("wharf", work, weed, "pull/").start()
                try:
                    # Every build reads the one upload (same prefix, same bucket layout); with
                    # PUSH=1 every timed push, of either build, meets the blob already stored.
                    if rnd == 0 and build == builds[0]:
                        c.big_push(r.url, big, digest, SIZE, best_of=1)
                    if PUSH:
                        what = "push"
                        mbs, cpu = s.costed(lambda: c.big_push(r.url, big, digest, SIZE, best_of=3),
                                            (weed.proc.pid, r.proc.pid), 3)
                    else:
                        what = "pull"
                        c.big_pull(r.url, digest, SIZE, best_of=1)
                        mbs, cpu = s.costed(lambda: c.big_pull(r.url, digest, SIZE, best_of=4),
                                            (weed.proc.pid, r.proc.pid), 4)
                    print(f"round {rnd} {build}: {mbs:,.0f} MB/s; CPU s per {what}: SeaweedFS "
                          f"{cpu[0]:.2f}, wharf {cpu[1]:.2f}, client {cpu[2]:.2f}", flush=True)
                finally:
                    r.stop()
    finally:
        weed.stop()
        c.shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
