"""A Docker registry token server (the realm of CNCF distribution's `auth.token`) and a blob
"CDN" (what distribution's `redirect` storage middleware sends blob GETs to), for the mirror's
upstream tests. Loopback only.

usage: token_realm.py KEY CERT USER:PASSWORD STORAGE_ROOT
  KEY, CERT   RSA key and self-signed certificate the tokens are signed with (RS256, `x5c`);
              the registry's `rootcertbundle` is CERT.
  USER:PASSWORD  the only credentials the realm accepts (Basic).
  STORAGE_ROOT   the registry's filesystem root, served as the CDN.
Prints "<token port> <cdn port>", then serves until killed. The realm refuses requests
without the credentials (401); the CDN refuses requests that carry any Authorization header
(400): an upstream's credentials must never follow a redirect to another host.
"""

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

KEY, CERT, CREDS, ROOT = sys.argv[1:5]
ISSUER = "wharf-test-issuer"


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def der_of(pem_path):
    pem = open(pem_path).read()
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return base64.b64decode("".join(body.split()))


X5C = base64.b64encode(der_of(CERT)).decode()


def token(service, scopes):
    access = []
    for scope in scopes:
        parts = scope.split(":")
        if len(parts) >= 3:
            access.append({"type": parts[0], "name": ":".join(parts[1:-1]), "actions": parts[-1].split(",")})
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [X5C]}
    claims = {"iss": ISSUER, "sub": CREDS.split(":")[0], "aud": service, "exp": now + 300,
              "nbf": now - 10, "iat": now, "jti": b64url(os.urandom(12)), "access": access}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", KEY], input=signing_input.encode(),
                         capture_output=True, check=True).stdout
    return signing_input + "." + b64url(sig)


class Realm(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        want = "Basic " + base64.b64encode(CREDS.encode()).decode()
        if self.headers.get("Authorization") != want:
            self.answer(401, b'{"details":"wrong credentials"}')
            return
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        t = token(q.get("service", [""])[0], q.get("scope", []))
        self.answer(200, json.dumps({"token": t, "expires_in": 300}).encode())

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class Cdn(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=ROOT, **kw)

    def do_GET(self):
        if self.headers.get("Authorization"):
            self.send_error(400, "credentials were sent to the CDN")
            return
        super().do_GET()

    def log_message(self, *a):
        pass


realm = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Realm)
cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cdn)
for s in (realm, cdn):
    threading.Thread(target=s.serve_forever, daemon=True).start()
print(realm.server_address[1], cdn.server_address[1], flush=True)
threading.Event().wait()
