#!/usr/bin/env bash
# Listing pages (issue 16): a catalog of 10,000 repositories and a tag list of 10,000 tags, time per
# page of n=100 (first page, a page in the middle, a page near the end), median of 20 requests each.
#
#   loadtest/listing.sh            REPOS=10000 TAGS=10000 WHARF_BIN=<older build>
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bin=${WHARF_BIN:-$bin}
repos=${REPOS:-10000}
tags=${TAGS:-10000}

mkdir -p s
printf '[server]\nport = 0\n[storage]\nroot = "%s/s/data"\n' "$work" > s/wharf.toml
RUST_LOG=warn $bin serve -c s/wharf.toml > s/out 2> s/log &
server=$!
for _ in $(seq 100); do grep -q listening s/out 2>/dev/null && break; sleep 0.05; done
addr=$(sed -n 's|.*://\([0-9.:]*\) .*|\1|p' s/out)

python3 - "$addr" "$repos" "$tags" <<'EOF'
import hashlib, http.client, json, statistics, sys, time
host, port = sys.argv[1].rsplit(":", 1)
repos, tags = int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection(host, int(port))

def req(method, path, body=b"", headers={}):
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    assert r.status < 300, (method, path, r.status, data[:200])
    return data

blob = b"layer"
d = "sha256:" + hashlib.sha256(blob).hexdigest()
for i in range(repos):
    req("POST", f"/v2/bench/r{i:05d}/blobs/uploads/?digest={d}", blob)
cfg = b"{}"
cd = "sha256:" + hashlib.sha256(cfg).hexdigest()
req("POST", f"/v2/bench/tagged/blobs/uploads/?digest={cd}", cfg)
req("POST", f"/v2/bench/tagged/blobs/uploads/?digest={d}", blob)
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(blob)}]}).encode()
for i in range(tags):
    req("PUT", f"/v2/bench/tagged/manifests/t{i:05d}", m,
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})

def page_ms(path):
    times = []
    for _ in range(20):
        t = time.perf_counter()
        req("GET", path)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)

print(f"catalog of {repos + 1} repositories, n=100:")
for label, last in [("first page", None), ("middle", f"bench/r{repos // 2:05d}"), ("near the end", f"bench/r{repos - 150:05d}")]:
    q = "n=100" + (f"&last={last}" if last else "")
    print(f"  {label:13s} {page_ms('/v2/_catalog?' + q):8.2f} ms")
print(f"tag list of {tags} tags, n=100:")
for label, last in [("first page", None), ("middle", f"t{tags // 2:05d}"), ("near the end", f"t{tags - 150:05d}")]:
    q = "n=100" + (f"&last={last}" if last else "")
    print(f"  {label:13s} {page_ms('/v2/bench/tagged/tags/list?' + q):8.2f} ms")
EOF
kill "$server"; wait "$server" 2>/dev/null || true
