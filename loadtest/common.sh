# Sourced by the loadtest scripts: a release build of wharf ($bin), a temporary working directory
# ($work, removed with every started server on exit, and the current directory), and start().
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q
bin=$PWD/target/release/wharf
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"

# start DIR: run wharf on DIR/wharf.toml in the background and print the address it listens on.
start() {
  RUST_LOG=warn $bin serve -c "$1/wharf.toml" > "$1/out" 2> "$1/log" &
  for _ in $(seq 100); do grep -q listening "$1/out" 2>/dev/null && break; sleep 0.05; done
  sed -n 's|.*://\([0-9.:]*\) .*|\1|p' "$1/out"
}
