#!/usr/bin/env bash
# Access-policy cost end to end (a benchmark, not a test): 4 KiB blob GETs with wrk (32 keep-alive
# connections) against two wharf processes on the same storage, one without policies and one whose
# five-rule policy lets anonymous GETs in only at its last rule (so every request evaluates all five),
# plus the same with Basic credentials checked on every request (cache hit after the first).
# Usage: loadtest/policy.sh [seconds]   (needs wrk; builds wharf if needed)
secs=${1:-5}
source "$(dirname "$0")/common.sh"
mkdir open policy
hash=$(printf 'bench-pw\n' | $bin hash-password)
cat > open/wharf.toml <<T
[server]
port = 0
[storage]
root = "../data"
T
cat > policy/wharf.toml <<T
[server]
port = 0
[storage]
root = "data"
[auth.identity.ci]
username = "ci"
password = "$hash"
[global.access_policy]
default = "deny"
rules = [
  "size(identity.certificate.common_names) > 0 && identity.certificate.organizations.contains('DevOps')",
  "'build-server' in identity.certificate.common_names",
  "identity.username == 'admin'",
  "has(request.repository) && request.repository.startsWith('private/')",
  "request.action.startsWith('get-') || request.action == 'list-tags'",
]
T
open=$(start open)
head -c 4096 /dev/urandom > blob
d=sha256:$(sha256sum blob | cut -d' ' -f1)
curl -sS -o /dev/null --data-binary @blob "http://$open/v2/bench/app/blobs/uploads/?digest=$d"
# One server per storage root (serve.lock): the policy server gets a copy holding the blob.
cp -r data policy/data
pol=$(start policy)
echo "wharf $($bin version | cut -d' ' -f2), $(nproc) cores, wrk -t2 -c32 -d${secs}s, 4 KiB blob GET"
cat > auth.lua <<'L'
wrk.headers["Authorization"] = "Basic Y2k6YmVuY2gtcHc="
L
run "no policy" "$open"
run "five-rule policy, anonymous" "$pol"
run "five-rule policy, Basic (cached)" "$pol" -s auth.lua
run "no policy (again)" "$open"
