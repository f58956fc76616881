"""A mirror upstream over https: the copy's TLS is verified as mitmproxy verifies its own upstreams
(``ssl_verify_upstream_trusted_ca``, else certifi's CAs; nothing with ``ssl_insecure``), and a
failed handshake is a logged failure of the copy, never of the request. In mitmproxy's harness,
with a real TLS server on 127.0.0.1 whose self-signed certificate names that address."""
from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
from pathlib import Path

import pytest

from condroute import model
from helpers import read_head, serve_raw
from test_mirror import flow, rules_with, until


async def sent_one(addon) -> None:
    """One request through the addon, its response sent (so its copy goes)."""
    f = flow()
    await addon.tctx.cycle(addon, f)
    f.live = False


@pytest.fixture
def tls_mirror(tmp_path: Path):
    """(upstream, cert path, bodies received) of an https server on 127.0.0.1 that answers 200."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "condroute test mirror")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    got: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                head = read_head(s)
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < 5:
                    body += s.recv(100)
                got.append(body)
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (ssl.SSLError, OSError):
            pass

    srv = serve_raw(handle)
    port = srv.getsockname()[1]
    yield model.Upstream("secure", f"https://127.0.0.1:{port}", "https", "127.0.0.1", port, ""), tmp_path / "c.pem", got
    srv.close()


@pytest.mark.slow
async def test_an_https_mirror_is_verified_like_mitmproxys_upstreams(addon, tls_mirror, caplog):
    caplog.set_level(logging.INFO)
    up, cert, got = tls_mirror
    addon.rules = rules_with(model.Mirror(up))
    # certifi's CAs do not know this certificate: the copy fails, the request goes on
    f = flow()
    await addon.tctx.cycle(addon, f)
    assert f.request.port == 9001 and f.response is None and f.error is None
    f.live = False
    await until(lambda: addon.mirrors.failed == 1)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("condroute: mirror ")]
    assert line.startswith(f"condroute: mirror secure (127.0.0.1:{up.port}) failed the TLS handshake "
                           "(CERTIFICATE_VERIFY_FAILED)"), line
    assert got == []
    # trusted through mitmproxy's own option: verified and answered
    addon.tctx.options.ssl_verify_upstream_trusted_ca = str(cert)
    await sent_one(addon)
    await until(lambda: addon.mirrors.sent == 1)
    assert got == [b"hello"]
    assert any(f"mirror secure (127.0.0.1:{up.port}) answers again (200)" in r.getMessage() for r in caplog.records)
    # ssl_insecure: not verified at all
    addon.tctx.options.ssl_verify_upstream_trusted_ca = None
    addon.tctx.options.ssl_insecure = True
    await sent_one(addon)
    await until(lambda: addon.mirrors.sent == 2)
    assert addon.mirrors.by_upstream[up] == [2, 1, 0, 0]


@pytest.mark.slow
async def test_a_ca_file_that_does_not_load_is_a_failure_of_the_copy(addon, tls_mirror, caplog, tmp_path):
    up, _, got = tls_mirror
    addon.rules = rules_with(model.Mirror(up))
    addon.tctx.options.ssl_verify_upstream_trusted_ca = str(tmp_path / "missing.pem")
    f = flow()
    await addon.tctx.cycle(addon, f)
    assert f.response is None and f.error is None
    f.live = False
    await until(lambda: addon.mirrors.failed == 1)
    assert any("the trusted certificates do not load" in r.getMessage() for r in caplog.records)
    assert got == []
