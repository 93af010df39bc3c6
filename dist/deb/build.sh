#!/usr/bin/env bash
# Build wharf_<version>_<arch>.deb with Debian's own packager (dpkg-deb): the binary in /usr/bin,
# the hardened systemd unit, a `wharf` system user (postinst), /etc/wharf/wharf.toml (a conffile:
# plain HTTP on loopback until you edit it) and /var/lib/wharf (the storage root, mode 0700).
#
#   cargo build --release && dist/deb/build.sh [OUT_DIR]      # default OUT_DIR: target/deb
#
# WHARF_BIN names another binary. Install with `dpkg -i`, then edit /etc/wharf/wharf.toml and
# `systemctl restart wharf`. Removing keeps /var/lib/wharf; purging removes the config too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/deb}
bin=${WHARF_BIN:-$root/target/release/wharf}
[ -x "$bin" ] || { echo "build.sh: $bin not found: cargo build --release first" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/wharf

install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/wharf" \
  "$pkg/usr/share/doc/wharf"
# Debug info stays out of the package (the release profile keeps it for profiling).
objcopy --strip-debug "$bin" "$pkg/usr/bin/wharf"
chmod 0755 "$pkg/usr/bin/wharf"
sed 's|/usr/local/bin/wharf|/usr/bin/wharf|g; s|^Documentation=.*|Documentation=file:///usr/share/doc/wharf/operations.md|' \
  "$root/dist/wharf.service" >"$pkg/lib/systemd/system/wharf.service"
install -m 0640 "$here/wharf.toml" "$pkg/etc/wharf/wharf.toml"
install -m 0644 "$root/dist/wharf.toml" "$pkg/usr/share/doc/wharf/wharf.toml.example"
for d in operations tls configuration access-control quickstart; do
  install -m 0644 "$root/docs/$d.md" "$pkg/usr/share/doc/wharf/$d.md"
done
install -m 0644 "$root/README.md" "$pkg/usr/share/doc/wharf/README.md"
install -m 0755 "$here/postinst" "$here/postrm" "$here/prerm" "$pkg/DEBIAN/"
echo /etc/wharf/wharf.toml >"$pkg/DEBIAN/conffiles"
size=$(du -sk "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: wharf
Version: $version
Architecture: $arch
Maintainer: wharf developers <wharf@localhost>
Installed-Size: $size
Depends: libc6, adduser
Section: admin
Priority: optional
Description: OCI container registry with mutual TLS and CEL access policies
 wharf serves the OCI Distribution API (docker, podman, containerd, skopeo) from a
 thread-per-core io_uring server, with TLS and client certificates in-process,
 CEL access policies, pull-through mirrors and S3-compatible storage.
CONTROL
mkdir -p "$out"
dpkg-deb --root-owner-group --build "$pkg" "$out/wharf_${version}_${arch}.deb" >/dev/null
echo "$out/wharf_${version}_${arch}.deb"
