"""Backends for the sni and throttle tests (no tests here): a TLS server on 127.0.0.1 that records
the server name each handshake carried and says it in the body, certificates made with
`cryptography` (which mitmproxy depends on), and a plain HTTP server with a body of a given size."""
from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import read_head, serve_raw

NO_SNI = "(none)"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(folder: Path) -> tuple[Path, object, object]:
    """A test CA: (its PEM file, key, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("condroute test CA")).issuer_name(_name("condroute test CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    pem = folder / "test-ca.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pem, key, cert


def make_leaf(folder: Path, names: list[str], ca: tuple[Path, object, object] | None = None) -> tuple[Path, Path]:
    """A server certificate for ``names`` (DNS names or IP addresses), signed by ``ca`` or self-signed:
    (certificate chain file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    issuer_key, issuer = (key, _name(names[0])) if ca is None else (ca[1], ca[2].subject)  # type: ignore[attr-defined]
    b = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.SubjectAlternativeName(sans), critical=False)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if ca is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca[1].public_key()),  # type: ignore[attr-defined]
                            critical=False)
    cert = b.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    stem = names[0].replace(":", "_")
    cf, kf = folder / f"{stem}.crt", folder / f"{stem}.key"
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cf, kf


def _answer(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def _serve_requests(conn: socket.socket, say: bytes) -> None:
    """Answer requests on ``conn`` until it closes: GET /size/N is N bytes, anything else ``say``."""
    while True:
        head = read_head(conn)
        if b"\r\n\r\n" not in head:
            return
        target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
        if target.startswith(b"/size/"):
            _answer(conn, b"x" * int(target[6:].split(b"?")[0]))
        else:
            _answer(conn, say)


class TLSBackend:
    """HTTPS on 127.0.0.1 with the certificate ``cert``/``key``; records the server name of each
    handshake (``seen``; NO_SNI when none) and answers ``sni=<name>``."""

    def __init__(self, cert: Path, key: Path):
        self.seen: list[str] = []
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.sni_callback = self._sni
        self.srv = serve_raw(self._handle)
        self.port = self.srv.getsockname()[1]
        self._names = threading.local()

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        self.seen.append(name or NO_SNI)
        self._names.last = name or NO_SNI

    def _handle(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                _serve_requests(conn, f"sni={getattr(self._names, 'last', NO_SNI)}".encode())
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.srv.close()


class PlainBackend:
    """HTTP on 127.0.0.1: GET /size/N answers N bytes, anything else ``plain``."""

    def __init__(self):
        self.srv = serve_raw(self._handle)
        self.port = self.srv.getsockname()[1]

    @staticmethod
    def _handle(conn: socket.socket) -> None:
        try:
            with conn:
                _serve_requests(conn, b"plain")
        except OSError:
            pass

    def close(self) -> None:
        self.srv.close()
