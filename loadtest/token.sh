#!/usr/bin/env bash
# Registry-token cost end to end (a benchmark, not a test): 4 KiB blob GETs with wrk (32 keep-alive
# connections) against wharf without authentication, and against wharf with [auth.token] and a
# one-rule policy, the requests carrying a Bearer token from /token (verified once per worker,
# then found in its cache) or the Basic credentials it was obtained with (cache hit after the first).
# Usage: loadtest/token.sh [seconds]   (needs wrk; builds wharf if needed)
secs=${1:-5}
source "$(dirname "$0")/common.sh"
mkdir open token
hash=$(printf 'bench-pw\n' | $bin hash-password)
$bin cert token-key --out token >/dev/null
cat > open/wharf.toml <<T
[server]
port = 0
[storage]
root = "../data"
T
cat > token/wharf.toml <<T
[server]
port = 0
[storage]
root = "data"
[auth.token]
service = "bench"
signing_key = "token-key.pem"
[auth.identity.ci]
username = "ci"
password = "$hash"
[global.access_policy]
default = "deny"
rules = ["identity.username == 'ci'"]
T
open=$(start open); tok=$(start token)
head -c 4096 /dev/urandom > blob
d=sha256:$(sha256sum blob | cut -d' ' -f1)
curl -sS -o /dev/null --data-binary @blob "http://$open/v2/bench/app/blobs/uploads/?digest=$d"
token=$(curl -sS -u ci:bench-pw "http://$tok/token?service=bench" | sed 's/.*"token":"\([^"]*\)".*/\1/')
curl -sS -o /dev/null -H "Authorization: Bearer $token" --data-binary @blob "http://$tok/v2/bench/app/blobs/uploads/?digest=$d"
echo "wharf $($bin version | cut -d' ' -f2), $(nproc) cores, wrk -t2 -c32 -d${secs}s, 4 KiB blob GET, token ${#token} bytes"
printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$token" > bearer.lua
printf 'wrk.headers["Authorization"] = "Basic Y2k6YmVuY2gtcHc="\n' > basic.lua
run "no authentication" "$open"
run "Bearer token (cached), one rule" "$tok" -s bearer.lua
run "Basic (cached), one rule" "$tok" -s basic.lua
run "no authentication (again)" "$open"
