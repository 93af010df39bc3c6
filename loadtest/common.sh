# Sourced by the loadtest scripts: a release build of wharf ($bin), a temporary working directory
# ($work, removed with every started server on exit, and the current directory), and start().
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q
bin=$PWD/target/release/wharf
work=$(mktemp -d)
# Servers are started inside `$(start ...)`, a subshell whose jobs this shell does not see: their
# pids go to $work/pids, and the exit trap stops them (before removing $work).
trap 'kill $(jobs -p) $(cat "$work/pids" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"

# start DIR: run wharf on DIR/wharf.toml in the background and print the address it listens on.
start() {
  RUST_LOG=warn $bin serve -c "$1/wharf.toml" > "$1/out" 2> "$1/log" &
  echo $! >> "$work/pids"
  for _ in $(seq 100); do grep -q listening "$1/out" 2>/dev/null && break; sleep 0.05; done
  sed -n 's|.*://\([0-9.:]*\) .*|\1|p' "$1/out"
}

# run LABEL ADDR [wrk args...]: wrk -t2 -c32 for $secs seconds on the 4 KiB blob $d, one table row
# (req/s, p50, p99, non-2xx answers).
run() {
  local label=$1 addr=$2; shift 2
  out=$(wrk -t2 -c32 -d"${secs}s" --latency "$@" "http://$addr/v2/bench/app/blobs/$d")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  printf '%-42s %10s req/s  p50 %-8s p99 %-8s%s\n' "$label" "$rps" "$p50" "$p99" "${non2xx:+  non-2xx: $non2xx}"
}
