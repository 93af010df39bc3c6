#!/usr/bin/env bash
# TLS benchmark (not a test): on loopback with a release build of wharf and fresh certificates,
#  1. full and resumed mutual-TLS handshakes per second against ONE worker thread (openssl s_time),
#  2. a 256 MiB blob pulled over plain HTTP and over TLS (curl, best of 5), from the same storage.
# Usage: loadtest/tls.sh [seconds-per-handshake-run]   (needs openssl, curl; builds wharf if needed)
secs=${1:-5}
source "$(dirname "$0")/common.sh"
$bin cert ca >/dev/null && $bin cert server --ip 127.0.0.1 >/dev/null && $bin cert client --cn bench --org Bench >/dev/null
mkdir plain tls
cat > plain/wharf.toml <<T
[server]
port = 0
threads = 1
[storage]
root = "../data"
T
cat > tls/wharf.toml <<T
[server]
port = 0
threads = 1
[server.tls]
server_certificate_bundle = "../server.crt"
server_private_key = "../server.key"
client_ca_bundle = "../ca.crt"
client_auth = "required"
[storage]
root = "../data"
T
plain=$(start plain); tls=$(start tls)
echo "wharf $($bin version | cut -d' ' -f2), threads=1, $(nproc) cores, $(openssl version | cut -d' ' -f1-2)"

# s_time never reads TLS 1.3 session tickets, so resumption is measured on TLS 1.2 (session ids).
for run in "new -tls1_3|full mTLS handshakes, TLS 1.3" "new -tls1_2|full mTLS handshakes, TLS 1.2" "reuse -tls1_2|resumed handshakes,   TLS 1.2"; do
  args=${run%%|*}; label=${run#*|}
  out=$(openssl s_time -connect "$tls" -$args -time "$secs" -CAfile ca.crt -cert client.crt -key client.key 2>&1 || true)
  wall=$(echo "$out" | grep 'connections in [0-9]* real' | tail -1 | sed 's/\([0-9]*\) connections in \([0-9]*\) real.*/\1 \2/')
  n=${wall% *}; t=${wall#* }
  echo "$label: $((n / (t > 0 ? t : 1)))/s (server: 1 worker thread; client: openssl s_time on the other core)"
done

head -c $((256 << 20)) /dev/urandom > blob
d=sha256:$(sha256sum blob | cut -d' ' -f1)
curl -sS -o /dev/null --data-binary @blob "http://$plain/v2/bench/blobs/uploads/?digest=$d"
best() { sort -n | tail -1; }
p=$(for i in 1 2 3 4 5; do curl -sS -o /dev/null -w '%{speed_download}\n' "http://$plain/v2/bench/blobs/$d"; done | best)
t=$(for i in 1 2 3 4 5; do curl -sS -o /dev/null -w '%{speed_download}\n' --cacert ca.crt --cert client.crt --key client.key "https://$tls/v2/bench/blobs/$d"; done | best)
awk -v p="$p" -v t="$t" 'BEGIN { printf "256 MiB pull, plain HTTP: %.0f MB/s\n256 MiB pull, TLS:        %.0f MB/s (%.0f%% of plain)\n", p/1e6, t/1e6, 100*t/p }'
