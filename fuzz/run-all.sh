#!/usr/bin/env bash
# Run every fuzz target for N seconds (default 600), one after another, and print one summary line
# per target (executions, coverage, crash or not). Generated inputs go to a scratch corpus; with
# KEEP=1 the committed corpus/<target>/ is replaced by the minimised union of the old corpus and the
# run's (libFuzzer -merge=1), which `cargo test` replays (tests/it/fuzz_corpus.rs). Needs nightly +
# cargo-fuzz.
#   [KEEP=1] fuzz/run-all.sh [seconds] [target ...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v wharf-fuzz)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build --release >/dev/null 2>&1
here=$PWD
bins=$here/target/$(rustc -vV | sed -n 's/^host: //p')/release
status=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  seeds=()
  [ -d "corpus/$t" ] && seeds=("corpus/$t")
  # cert_identity has no committed seeds: give it three wharf-made certificates.
  if [ "$t" = cert_identity ] && command -v openssl >/dev/null; then
    bin=../target/release/wharf
    if [ -x "$bin" ]; then
      "$bin" cert ca --out "$scratch/pki" >/dev/null 2>&1 || true
      "$bin" cert client --out "$scratch/pki" --cn ci --org DevOps --org Ünïcode >/dev/null 2>&1 || true
      "$bin" cert server --out "$scratch/pki" >/dev/null 2>&1 || true
      for f in "$scratch"/pki/*.crt; do
        [ -f "$f" ] && openssl x509 -in "$f" -outform DER -out "$scratch/$t/$(basename "$f").der"
      done
    fi
  fi
  log="$scratch/$t.log"
  mkdir -p "artifacts/$t"
  # The binaries built above, run directly: editing the sources meanwhile does not rebuild them.
  if (cd "$scratch" && "$bins/$t" "$scratch/$t" "${seeds[@]/#/$here/}" \
      -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$here/artifacts/$t/") >"$log" 2>&1; then
    verdict="no crash"
  else
    verdict="FAILED (see fuzz/artifacts/$t)"
    status=1
  fi
  if [ "${KEEP:-}" = 1 ] && [ $status = 0 ] && [ "$t" != cert_identity ]; then
    merged="$scratch/$t.merged"
    mkdir -p "$merged"
    (cd "$scratch" && "$bins/$t" -merge=1 "$merged" "$scratch/$t" "${seeds[@]/#/$here/}") >"$log.merge" 2>&1
    rm -rf "corpus/$t" && mkdir -p "corpus/$t" && cp "$merged"/* "corpus/$t/"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1)
  kept=""
  [ "${KEEP:-}" = 1 ] && [ "$t" != cert_identity ] && kept="  corpus $(ls "corpus/$t" | wc -l) files"
  printf '%-14s %5ss  %12s executions  %-10s %-10s  %s%s\n' "$t" "$secs" "${runs:-?}" "${cov:-}" "${ft:-}" "$verdict" "$kept"
done
exit $status
