#!/usr/bin/env bash
# Head-of-line blocking (issue 16): one worker thread, wrk GETting a 4 KiB blob over 8 connections,
# alone and then while three large blobs are pushed through the same worker; both I/O drivers.
# A worker that runs file writes or fsyncs itself stalls every GET behind them.
#
#   loadtest/headofline.sh [seconds]     SIZE_MIB=2048 DRIVERS="io_uring epoll" WHARF_BIN=<older build>
# Prints one line per driver: GETs/s alone, GETs/s during the pushes, the ratio, p99s.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
secs=${1:-10}
size_mib=${SIZE_MIB:-2048}
bin=${WHARF_BIN:-$bin}

head -c 4096 /dev/urandom > small
dd if=/dev/urandom of=big bs=1M count="$size_mib" status=none
small_digest=sha256:$(sha256sum small | cut -d' ' -f1)
big_digest=sha256:$(sha256sum big | cut -d' ' -f1)

rate() { sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$1"; }
p99() { sed -n 's/^ *99% *\([0-9.a-z]*\).*/\1/p' "$1"; }

for driver in ${DRIVERS:-io_uring epoll}; do
  rm -rf "$work/s" && mkdir -p "$work/s"
  printf '[server]\nport = 0\nthreads = 1\n[storage]\nroot = "%s/s/data"\n' "$work" > "$work/s/wharf.toml"
  RUST_LOG=warn WHARF_IO_DRIVER=$driver $bin serve -c "$work/s/wharf.toml" > "$work/s/out" 2> "$work/s/log" &
  server=$!
  for _ in $(seq 100); do grep -q listening "$work/s/out" 2>/dev/null && break; sleep 0.05; done
  grep -q "driver=$driver" "$work/s/out" || { echo "wharf did not start on $driver" >&2; cat "$work/s/log" >&2; exit 1; }
  addr=$(sed -n 's|.*://\([0-9.:]*\) .*|\1|p' "$work/s/out")
  url=http://$addr/v2/hol/small/blobs/$small_digest
  curl -sf -X POST --data-binary @small "http://$addr/v2/hol/small/blobs/uploads/?digest=$small_digest" -o /dev/null
  curl -sf "$url" -o /dev/null
  wrk -t1 -c8 -d"${secs}s" --latency "$url" > alone.txt
  pids=()
  for i in 1 2 3; do
    curl -sf -X POST -T - -H 'Content-Type: application/octet-stream' \
      "http://$addr/v2/hol/big$i/blobs/uploads/?digest=$big_digest" -o /dev/null < big & pids+=($!)
  done
  sleep 1
  wrk -t1 -c8 -d"${secs}s" --latency "$url" > during.txt
  still=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && still=$((still + 1)); done
  for p in "${pids[@]}"; do wait "$p" || { echo "a push failed" >&2; exit 1; }; done
  a=$(rate alone.txt); d=$(rate during.txt)
  printf '%-8s alone %9.0f GET/s (p99 %s)  during pushes %9.0f GET/s (p99 %s)  ratio %3.0f %%  (pushes still running at the end: %d of 3)\n' \
    "$driver" "$a" "$(p99 alone.txt)" "$d" "$(p99 during.txt)" "$(echo "100 * $d / $a" | bc -l)" "$still"
  kill "$server"; wait "$server" 2>/dev/null || true
done
