"""`mirror` on a condroute backend, end to end through a real mitmdump with real sockets: the copy
carries the body up to stream_large_bodies (a streamed body is not mirrored, said once); the
mirror's answer is dropped; a mirror that refuses, resets or hangs never changes the client's
answer, and the client has it while the copy is still under way; each failure is logged once
with the mirror's name and address, never the request's URL or headers; HTTP/2 clients too.
The per-mirror counts are read from /api/status and the condroute.status text."""
from __future__ import annotations

import json
import subprocess
import socket
import struct
import time
from pathlib import Path

import httpx

from helpers import h2_request_via_proxy, read_head, serve_raw
from test_mirror import Recorder

LIMIT = 65536       # stream_large_bodies=64k


def status(p) -> dict:
    with httpx.Client(proxy=p.url, timeout=10) as c:
        r = c.get("http://condroute.mitm.it/api/status")
        assert r.status_code == 200
        return r.json()


def mirror_counts(p, name: str) -> dict:
    for m in status(p)["mirrors"]["upstreams"]:
        if m["name"] == name:
            return m
    return {"sent": 0, "failed": 0, "dropped": 0, "in_flight": 0}


def until(fn, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def rules(tmp_path: Path, main: str, mirrors: dict[str, str]) -> Path:
    ups = "".join(f"  {n}: {u}\n" for n, u in mirrors.items())
    routes = "".join(f"""\
  - name: to-{n}
    match: {{host: {n}.test}}
    backends:
      - {{name: live, upstream: main, mirror: {{upstream: {n}, percent: 100}}}}
""" for n in mirrors)
    f = tmp_path / "rules.yaml"
    f.write_text(f"version: 1\nupstreams:\n  main: {main}\n{ups}routes:\n{routes}")
    return f


def test_the_copy_carries_the_body_up_to_stream_large_bodies(tmp_path: Path, echo, proxy):
    rec = Recorder()
    try:
        p = proxy(rules(tmp_path, echo("main"), {"shadow": f"http://127.0.0.1:{rec.port}/m"}),
                  "--set", "stream_large_bodies=64k")
        small, big = b"payload", bytes(range(256)) * (60_000 // 256)
        huge = b"x" * (LIMIT + 1000)

        def chunks(data: bytes):
            for i in range(0, len(data), 4096):
                yield data[i:i + 4096]

        with httpx.Client(proxy=p.url, timeout=10) as c:
            sent = [small, big, small + b"-chunked"]
            for i, body in enumerate(sent):
                content = chunks(body) if i == 2 else body       # the last one without Content-Length
                r = c.post(f"http://shadow.test/api/{i}?x=1", content=content, headers={"X-Client": "c"})
                assert r.status_code == 200 and r.json()["backend"] == "main" and r.json()["body_length"] == len(body)
                assert r.text != "ok" and "x-mirror" not in r.headers      # the mirror's answer is dropped
            # larger than stream_large_bodies: streamed on (known length, then chunked), not mirrored
            for i, content in enumerate((huge, chunks(huge))):
                r = c.post(f"http://shadow.test/big/{i}", content=content)
                assert r.status_code == 200 and r.json()["body_length"] == len(huge), r.text
        got = until(lambda: mirror_counts(p, "shadow")["sent"] == 3 and rec.got, "three copies answered")
        counts = mirror_counts(p, "shadow")
        assert (counts["sent"], counts["failed"], counts["dropped"], counts["in_flight"]) == (3, 0, 2, 0)
        got = sorted(rec.wait(3), key=lambda hb: hb[0])
        assert len(rec.got) == 3
        for i, ((head, body), want) in enumerate(zip(got, sent)):
            lines = head.split(b"\r\n")
            assert lines[0] == f"POST /m/api/{i}?x=1 HTTP/1.1".encode()
            assert lines[1] == f"Host: 127.0.0.1:{rec.port}".encode() and b"X-Client: c" in lines
            assert f"Content-Length: {len(want)}".encode() in lines and body == want
            assert not any(x.lower().startswith(b"transfer-encoding") for x in lines)
        said = [ln for ln in p.lines if "streamed body" in ln]
        assert len(said) == 1 and "not mirrored" in said[0], p.output()
        assert not any("Traceback" in ln for ln in p.lines), p.output()
    finally:
        rec.close()


def _reset(conn: socket.socket) -> None:
    read_head(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()                          # an RST, before any answer


def test_a_refusing_resetting_or_hanging_mirror_never_touches_the_answer(tmp_path: Path, echo, proxy):
    dead = socket.socket()                # bound, never listening: refused
    dead.bind(("127.0.0.1", 0))
    resetter = serve_raw(_reset)
    hung = Recorder(answer=False)         # accepts, never answers, until closed
    ports = {"refused": dead.getsockname()[1], "reset": resetter.getsockname()[1], "hung": hung.port}
    try:
        p = proxy(rules(tmp_path, echo("main"), {n: f"http://127.0.0.1:{port}" for n, port in ports.items()}))
        with httpx.Client(proxy=p.url, timeout=10) as c:
            for name in ports:
                for _ in range(2):
                    r = c.post(f"http://{name}.test/pay?token=SECRET", content=b"card", headers={"X-Secret": "SECRET"})
                    assert r.status_code == 200 and r.json()["backend"] == "main", r.text
                    assert r.headers["X-Condroute"].startswith(f"to-{name}/live")
        # the client had both answers from the hung mirror's route while its copies were still under way
        hung.wait(2)
        assert mirror_counts(p, "hung")["in_flight"] == 2
        until(lambda: mirror_counts(p, "refused")["failed"] == 2 and mirror_counts(p, "reset")["failed"] == 2,
              "the refused and reset copies to fail")
        hung.close()                      # now it closes without answering
        until(lambda: mirror_counts(p, "hung")["failed"] == 2, "the hung copies to fail")
        mirrors = status(p)["mirrors"]
        assert sorted(mirrors["failing"]) == ["hung", "refused", "reset"] and mirrors["sent"] == 0
        said = [ln for ln in p.lines if "condroute: mirror " in ln]
        assert len(said) == 3, "\n".join(said)
        for name, port in ports.items():
            (line,) = [ln for ln in said if f"condroute: mirror {name} (127.0.0.1:{port}) " in ln]
            assert "the request itself is not affected" in line
        assert any("refused the connection" in ln for ln in said) and any("reset the connection" in ln for ln in said)
        assert not any("SECRET" in ln or "/pay" in ln for ln in said)
    finally:
        dead.close()
        resetter.close()
        hung.close()


def test_an_http2_request_is_mirrored_with_its_body(tmp_path: Path, echo, proxy):
    rec = Recorder()
    try:
        confdir = tmp_path / "conf"
        p = proxy(rules(tmp_path, echo("main"), {"shadow": f"http://127.0.0.1:{rec.port}/m"}),
                  "--set", f"confdir={confdir}")
        code, _, body, alpn = h2_request_via_proxy(p.port, "https://shadow.test/h2?x=1", str(confdir / "mitmproxy-ca-cert.pem"),
                                                   method="POST", headers=[("x-client", "h2")], body=b"h2-body")
        assert (alpn, code) == ("h2", 200) and json.loads(body)["body_length"] == 7, body
        ((head, got),) = rec.wait(1)
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /m/h2?x=1 HTTP/1.1" and lines[1] == f"Host: 127.0.0.1:{rec.port}".encode()
        assert b"x-client: h2" in lines and b"Content-Length: 7" in lines and got == b"h2-body"
        until(lambda: mirror_counts(p, "shadow")["sent"] == 1, "the copy answered")
    finally:
        rec.close()


def test_the_status_page_draws_the_mirrored_counts(tmp_path: Path, echo, proxy):
    """The page's Mirrored table, drawn by headless Chromium from /api/status (skipped without it)."""
    import pytest

    from test_status_browser import CHROMIUM, Rows, pac
    if CHROMIUM is None:
        pytest.skip("no chromium (/usr/bin/chromium): scripts/test installs Debian's package when it can")
    rec = Recorder()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    try:
        p = proxy(rules(tmp_path, echo("main"), {"shadow": f"http://127.0.0.1:{rec.port}/m",
                                                 "gone": f"http://127.0.0.1:{dead.getsockname()[1]}"}))
        with httpx.Client(proxy=p.url, timeout=10) as c:
            for host in ("shadow.test", "shadow.test", "gone.test"):
                assert c.post(f"http://{host}/x", content=b"b").status_code == 200
        until(lambda: mirror_counts(p, "shadow")["sent"] == 2 and mirror_counts(p, "gone")["failed"] == 1,
              "the copies to end")
        text = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
             f"--user-data-dir={tmp_path / 'profile'}", f"--proxy-pac-url={pac(p.port, dead.getsockname()[1])}",
             "--virtual-time-budget=3000", "--dump-dom", "http://condroute.mitm.it/"],
            capture_output=True, text=True, timeout=90, cwd=str(tmp_path))
        assert text.returncode == 0, text.stderr[-3000:]
        dom = Rows()
        dom.feed(text.stdout)
        assert dom.attrs["app"].get("data-state") == "ok", text.stdout[-3000:]
        drawn = {a["data-mirror"]: cells for a, cells in dom.rows if "data-mirror" in a}
        assert drawn == {"shadow": ["shadow", f"http://127.0.0.1:{rec.port}/m", "2", "0", "0", "0"],
                         "gone": ["gone", f"http://127.0.0.1:{dead.getsockname()[1]}", "0", "1", "0", "0"]}
    finally:
        rec.close()
        dead.close()
