"""Upstream faults through a real mitmproxy: each gives the client a clear response and the proxy
a log line, and the proxy keeps serving the next request."""
from __future__ import annotations

import datetime
import socket
import ssl
import struct
from pathlib import Path

import httpx
import pytest

from helpers import free_port, read_head, serve_raw


def _serve(handler) -> tuple[int, socket.socket]:
    srv = serve_raw(handler)
    return srv.getsockname()[1], srv


def _read_request(conn: socket.socket) -> None:
    read_head(conn)


@pytest.fixture
def reset_midway():
    """Answers with headers and half a body, then resets the connection (RST)."""
    def handle(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    port, srv = _serve(handle)
    yield f"http://127.0.0.1:{port}"
    srv.close()


@pytest.fixture
def bad_cert_https(tmp_path: Path):
    """An HTTPS server whose certificate is self-signed for another name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-this-host.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("not-this-host.invalid")]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    def handle(conn: socket.socket) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                _read_request(s)
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (ssl.SSLError, OSError):
            pass

    port, srv = _serve(handle)
    yield f"https://127.0.0.1:{port}"
    srv.close()




def test_upstream_faults_give_clear_answers_and_the_proxy_keeps_serving(echo, rules_file, proxy,
                                                                       reset_midway, bad_cert_https):
    good = echo("good")
    rules = rules_file(f"""
        version: 1
        routes:
          - name: faults
            match: {{host: faults.example}}
            backends:
              - {{name: reset, when: {{path: /reset}}, upstream: "{reset_midway}"}}
              - {{name: badtls, when: {{path: /tls}}, upstream: "{bad_cert_https}"}}
              - {{name: refused, when: {{path: /refused}}, upstream: "http://127.0.0.1:{free_port()}"}}
              - {{name: fine, upstream: "{good}"}}
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=20) as c:
        for path, needle in [("/reset", "reset|closed|disconnect|incomplete"),
                             ("/tls", "certificate")]:
            mark = p.mark()
            r = c.get(f"http://faults.example{path}")
            assert r.status_code == 502, (path, r.status_code, r.text)
            assert r.text.strip(), path                                  # a body that says what happened
            p.wait_for(f"(?i)({needle})", timeout=10, start=mark)        # and a log line
            # the proxy keeps serving
            ok = c.get("http://faults.example/next")
            assert ok.status_code == 200 and ok.json()["backend"] == "good"
        # refused: passed over, and the next backend that holds serves; the trace says why
        mark = p.mark()
        r = c.get("http://faults.example/refused")
        assert r.status_code == 200 and r.json()["backend"] == "good"
        assert r.headers["X-Condroute"] == "faults/fine -> " + good
        p.wait_for("(?i)refused", timeout=10, start=mark)
    assert p.proc.poll() is None


def test_rules_files_cannot_run_code_or_read_other_files(tmp_path: Path):
    """YAML tags that construct objects or include files are errors, and nothing is executed."""
    from condroute.errors import RulesError
    from condroute.rules import load_rules

    marker = tmp_path / "pwned"
    for i, value in enumerate([f"!!python/object/apply:os.system ['touch {marker}']",
                               "!include /etc/passwd", "!!python/name:os.system"]):
        f = tmp_path / f"r{i}.yaml"
        f.write_text(f"version: 1\nroutes:\n  - name: r\n    backends:\n      - {{name: x, upstream: {value}}}\n")
        with pytest.raises(RulesError) as ei:
            load_rules(str(f))
        assert str(ei.value).startswith(f"{f}:5:"), ei.value
    assert not marker.exists()
