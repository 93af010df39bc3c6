// k6 scenarios against any OCI registry (wharf, CNCF distribution, zot): a benchmark, never a test.
//
//   k6 run -e TARGET=http://127.0.0.1:5000 -e SCENARIO=pull -e SIZE=4096 -e VUS=32 -e DURATION=10s loadtest/registry.js
//
// SCENARIO  push       monolithic push: POST an upload, PUT the whole blob with ?digest= (2 requests)
//           chunked    streamed push: POST, PATCH the blob in CHUNK-sized pieces, PUT ?digest= (empty body)
//           pull       GET one blob (seeded in setup) again and again
//           mix        75 % pulls, 25 % monolithic pushes
//           manifest   manifest storm: HEAD and GET of a manifest by tag, alternating
//           tagpush    manifest push: PUT a distinct small manifest under a new tag (manifest bytes,
//                      revision link and tag written and fsynced per request)
// SIZE      blob size in bytes (4096, 1048576, 67108864, 1073741824; default 4096)
// VUS       virtual users (1, 32, 256; default 32) — each is one keep-alive connection
// DURATION  default 10s
// TARGET    base URL: http://… (plain) or https://… (TLS; the certificate is not verified)
// CERT/KEY  PEM files of a client certificate for mutual TLS (k6 tlsAuth), with an https TARGET
// REPO      repository to use (default bench/k6)
// CHUNK     PATCH size for SCENARIO=chunked (default 1048576)
//
// Pushed blobs are unique per iteration (an 8-byte counter overwrites the start of a random buffer),
// so no registry can answer from what it already has. Besides k6's own http_req_duration, the custom
// trends pull_ms / push_ms time one whole operation (a push is 2 or more requests), summing k6's
// per-request timings (sub-millisecond resolution; the client's own hashing is not counted).

import http from 'k6/http';
import crypto from 'k6/crypto';
import { check, fail } from 'k6';
import { Trend, Counter } from 'k6/metrics';

const TARGET = (__ENV.TARGET || 'http://127.0.0.1:5000').replace(/\/$/, '');
const SCENARIO = __ENV.SCENARIO || 'pull';
const SIZE = parseInt(__ENV.SIZE || '4096', 10);
const VUS = parseInt(__ENV.VUS || '32', 10);
const DURATION = __ENV.DURATION || '10s';
const REPO = __ENV.REPO || 'bench/k6';
const CHUNK = parseInt(__ENV.CHUNK || '1048576', 10);

const tlsAuth = __ENV.CERT
  ? [{ domains: ['127.0.0.1', 'localhost'], cert: open(__ENV.CERT), key: open(__ENV.KEY) }]
  : undefined;

export const options = {
  vus: VUS,
  duration: DURATION,
  insecureSkipTLSVerify: true,
  tlsAuth: tlsAuth,
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'med', 'p(99)', 'max'],
  setupTimeout: '600s',
};

const pullMs = new Trend('pull_ms', true);
const pushMs = new Trend('push_ms', true);
const opBytes = new Counter('op_bytes');
const ops = new Counter('ops');

const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';

function randomBuffer(n) {
  const buf = new Uint8Array(n);
  // crypto.randomBytes is limited in size per call; fill in 64 KiB steps.
  for (let off = 0; off < n; off += 65536) {
    const part = new Uint8Array(crypto.randomBytes(Math.min(65536, n - off)));
    buf.set(part, off);
  }
  return buf;
}

function sha256(bytes) {
  return 'sha256:' + crypto.sha256(bytes.buffer, 'hex');
}

function location(res) {
  const loc = res.headers['Location'];
  if (!loc) fail(`no Location in ${res.status} answer to ${res.request.method} ${res.url}`);
  return loc.startsWith('http') ? loc : TARGET + loc;
}

function withDigest(url, digest) {
  return url + (url.includes('?') ? '&' : '?') + 'digest=' + digest;
}

// Monolithic push of `bytes`: POST, then PUT with the whole body.
function pushMonolithic(bytes) {
  const digest = sha256(bytes);
  const post = http.post(`${TARGET}/v2/${REPO}/blobs/uploads/`, null, { tags: { op: 'post' } });
  if (!check(post, { 'POST 202': (r) => r.status === 202 })) return null;
  const put = http.put(withDigest(location(post), digest), bytes.buffer, {
    headers: { 'Content-Type': 'application/octet-stream' },
    tags: { op: 'put' },
  });
  if (!check(put, { 'PUT 201': (r) => r.status === 201 })) return null;
  pushMs.add(post.timings.duration + put.timings.duration);
  return digest;
}

// Streamed push: POST, PATCH pieces with Content-Range, PUT ?digest= with no body.
function pushChunked(bytes) {
  const digest = sha256(bytes);
  const post = http.post(`${TARGET}/v2/${REPO}/blobs/uploads/`, null, { tags: { op: 'post' } });
  if (!check(post, { 'POST 202': (r) => r.status === 202 })) return null;
  let took = post.timings.duration;
  let url = location(post);
  for (let off = 0; off < bytes.length; off += CHUNK) {
    const end = Math.min(off + CHUNK, bytes.length);
    const patch = http.patch(url, bytes.slice(off, end).buffer, {
      headers: {
        'Content-Type': 'application/octet-stream',
        'Content-Range': `${off}-${end - 1}`,
      },
      tags: { op: 'patch' },
    });
    if (!check(patch, { 'PATCH 202': (r) => r.status === 202 })) return null;
    took += patch.timings.duration;
    url = location(patch);
  }
  const put = http.put(withDigest(url, digest), null, { tags: { op: 'put' } });
  if (!check(put, { 'PUT 201': (r) => r.status === 201 })) return null;
  pushMs.add(took + put.timings.duration);
  return digest;
}

export function setup() {
  // A blob to pull and a manifest (tag "bench") to storm, pushed once.
  const blob = randomBuffer(SIZE);
  const digest = pushMonolithic(blob);
  if (!digest) fail(`setup: cannot push a ${SIZE}-byte blob to ${TARGET}`);
  const configText = JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } });
  const configBytes = new Uint8Array(configText.length);
  for (let i = 0; i < configText.length; i++) configBytes[i] = configText.charCodeAt(i);
  const configDigest = pushMonolithic(configBytes);
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: MANIFEST_TYPE,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: configBytes.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: digest, size: SIZE }],
  });
  const put = http.put(`${TARGET}/v2/${REPO}/manifests/bench`, manifest, {
    headers: { 'Content-Type': MANIFEST_TYPE },
  });
  if (put.status !== 201) fail(`setup: manifest PUT answered ${put.status}`);
  return { digest: digest, config: configDigest, configSize: configBytes.length };
}

// Per VU: one random buffer, made unique per push by a counter in its first 8 bytes.
let buffer = null;
let counter = 0;

function nextBlob() {
  if (buffer === null) buffer = randomBuffer(SIZE);
  counter += 1;
  const view = new DataView(buffer.buffer);
  view.setUint32(0, __VU, false);
  view.setUint32(4, counter, false);
  return buffer;
}

function pull(data) {
  const res = http.get(`${TARGET}/v2/${REPO}/blobs/${data.digest}`, {
    responseType: 'none',
    tags: { op: 'get-blob' },
  });
  if (check(res, { 'GET blob 200': (r) => r.status === 200 })) {
    pullMs.add(res.timings.duration);
    opBytes.add(SIZE);
    ops.add(1);
  }
}

function push(chunked) {
  const bytes = nextBlob();
  if ((chunked ? pushChunked : pushMonolithic)(bytes)) {
    opBytes.add(SIZE);
    ops.add(1);
  }
}

function manifestStorm() {
  const url = `${TARGET}/v2/${REPO}/manifests/bench`;
  const params = { headers: { Accept: MANIFEST_TYPE }, tags: { op: 'manifest' } };
  const res = __ITER % 2 === 0 ? http.head(url, params) : http.get(url, params);
  if (check(res, { 'manifest 200': (r) => r.status === 200 })) {
    pullMs.add(res.timings.duration);
    ops.add(1);
  }
}

function tagPush(data) {
  const m = JSON.stringify({
    schemaVersion: 2,
    mediaType: MANIFEST_TYPE,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: data.config, size: data.configSize },
    layers: [],
    annotations: { n: `${__VU}-${__ITER}` },
  });
  const res = http.put(`${TARGET}/v2/${REPO}/manifests/t${__VU}-${__ITER}`, m, {
    headers: { 'Content-Type': MANIFEST_TYPE },
    tags: { op: 'put-manifest' },
  });
  if (check(res, { 'manifest PUT 201': (r) => r.status === 201 })) {
    pushMs.add(res.timings.duration);
    ops.add(1);
  }
}

export default function (data) {
  switch (SCENARIO) {
    case 'pull':
      return pull(data);
    case 'push':
      return push(false);
    case 'chunked':
      return push(true);
    case 'mix':
      return Math.random() < 0.75 ? pull(data) : push(false);
    case 'manifest':
      return manifestStorm();
    case 'tagpush':
      return tagPush(data);
    default:
      fail(`unknown SCENARIO ${SCENARIO}`);
  }
}
