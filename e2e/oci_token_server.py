"""A token service for docker-registry's `auth: token` mode, as the Docker registry token
specification describes it: `GET /token?service=S&scope=repository:NAME:ACTIONS` with HTTP Basic
credentials answers `{"token": JWT}`, an ES256 JWT whose `x5c` header carries the certificate
the registry's `rootcertbundle` trusts. Only `USER` with `PASSWORD` gets a token (401 otherwise),
and it grants what each scope asks.

Usage: oci_token_server.py PORT CERT_PATH ISSUER USER PASSWORD. It writes the certificate to
CERT_PATH before it listens on 127.0.0.1:PORT."""

import base64
import datetime
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

port, cert_path, issuer, user, password = sys.argv[1:]
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
now = datetime.datetime.now(datetime.timezone.utc)
certificate = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(key, hashes.SHA256())
)
with open(cert_path, "wb") as out:
    out.write(certificate.public_bytes(serialization.Encoding.PEM))
chain = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]
expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(service: str, scopes: list) -> str:
    access = []
    for scope in scopes:
        kind, repository, actions = scope.split(":")
        access.append({"type": kind, "name": repository, "actions": actions.split(",")})
    issued = int(time.time())
    claims = {
        "iss": issuer, "sub": user, "aud": service, "exp": issued + 300, "nbf": issued - 10,
        "iat": issued, "jti": secrets.token_hex(8), "access": access,
    }
    header = {"typ": "JWT", "alg": "ES256", "x5c": chain}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/token":
            self.send_error(404)
            return
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="token"')
            self.end_headers()
            return
        query = parse_qs(url.query)
        body = json.dumps({"token": token(query["service"][0], query.get("scope", [])), "expires_in": 300})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()
