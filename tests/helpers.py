"""Test helpers: echo backends and a real mitmdump subprocess, all on 127.0.0.1."""
from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon" / "conditional_routing.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")
LISTEN_RE = re.compile(r"listening at (?:\*|[\d.]+|\[[0-9a-f:]+\]):(\d+)")


class Proxy:
    """A mitmdump (or ``program``: mitmweb) subprocess. ``port`` is where it listens; ``lines`` collects its output."""

    def __init__(self, args: list[str], env: dict | None = None, cwd: str | None = None, program: str = "mitmdump"):
        self.cmd = [str(MITMDUMP.with_name(program)), "--listen-host", "127.0.0.1", "--listen-port", "0", *args]
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})}, cwd=cwd or str(ROOT),
        )
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.port: int | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match:
        """Wait until an output line (from index ``start`` on) matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    if self.lines[i] == "<EOF>":
                        raise AssertionError(f"mitmdump exited before {pattern!r}:\n" + self.output())
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {pattern!r}:\n" + self.output())
                self._cond.wait(left)

    def start(self) -> "Proxy":
        m = self.wait_for(LISTEN_RE.pattern)
        self.port = int(m.group(1))
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def logs_status(output: str, status: int) -> bool:
    """Does mitmdump's output show this status code? Not inside a timestamp ("[01:57:47.504]")."""
    return re.search(rf"(?<![\d.:]){status}(?!\d)", output) is not None


def read_head(sock: socket.socket) -> bytes:
    """Read up to and including the blank line that ends an HTTP head (a request's, or a proxy's
    answer to CONNECT); what was read so far if the peer closes first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def serve_raw(handler) -> socket.socket:
    """A raw-socket server on 127.0.0.1 (a free port): each accepted connection goes to
    ``handler(conn)`` in a thread of its own. Close the returned socket to stop accepting."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def loop() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for programs that cannot be given port 0
    and tell which port they took, such as mitmweb's web server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mitmdump_until_exit(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run mitmdump expecting it to exit by itself (e.g. a bad rules file at start-up)."""
    cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", "0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


def has_ipv6_loopback() -> bool:
    """True when this machine can listen on ::1."""
    import socket
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def h2_request_via_proxy(proxy_port: int, url: str, cafile: str, method: str = "GET",
                         headers: list[tuple[str, str]] = (), body: bytes = b"",
                         timeout: float = 10.0, validate: bool = True) -> tuple[int, dict[str, str], bytes, str]:
    """One HTTP/2 request through an HTTP proxy (CONNECT, then TLS with ALPN h2 only), using the h2
    library. httpx cannot be used for this: through a proxy it offers ALPN "http/1.1" before "h2",
    and mitmproxy honours the client's order. Returns (status, headers, body, negotiated ALPN).
    ``validate=False`` lets the client send headers h2 would refuse (:authority and Host that differ)."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    import h2.config
    import h2.connection
    import h2.events

    u = urlsplit(url)
    host, port = u.hostname, u.port or 443
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = read_head(sock)
        if not head.endswith(b"\r\n\r\n"):
            raise AssertionError(f"proxy closed the CONNECT: {head!r}")
        assert head.split(b" ", 2)[1] == b"200", head
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["h2"])
        tls = ctx.wrap_socket(sock, server_hostname=host)
        alpn = tls.selected_alpn_protocol() or ""
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                    validate_outbound_headers=validate))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", method), (":scheme", "https"), (":authority", u.netloc),
                                (":path", path), *headers], end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)
        tls.sendall(conn.data_to_send())
        status, resp_headers, data, done = 0, {}, b"", False
        while not done:
            chunk = tls.recv(65536)
            if not chunk:
                raise AssertionError("connection closed before the response ended")
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    resp_headers = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                                    for k, v in ev.headers}
                    status = int(resp_headers[":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == sid:
                    done = True
            tls.sendall(conn.data_to_send())
        return status, resp_headers, data, alpn
    finally:
        sock.close()


_FORKER = r"""
import json, os, sys, tempfile
from mitmproxy.tools import main   # imported once here; every child starts with it loaded
import condroute.mitm.addon              # noqa: F401 - likewise the addon's package
for line in sys.stdin:
    args = json.loads(line)
    with tempfile.TemporaryFile() as out:
        pid = os.fork()
        if pid == 0:   # the child: mitmdump's own entry point, output to the file
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            code = 0
            try:
                main.mitmdump(args)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 70
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        status = os.waitpid(pid, 0)[1]
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    print(json.dumps([os.waitstatus_to_exitcode(status), text]), flush=True)
"""


class MitmdumpForker:
    """Runs mitmdump to its exit many times, cheaply: a helper process imports mitmproxy and
    condroute once, then forks a child per run that calls mitmdump's own entry point
    (``mitmproxy.tools.main.mitmdump``) with the given arguments. The same code path as the
    ``mitmdump`` command, without an interpreter start-up and imports per run (~1.3 s each).
    Use as a context manager; runs are sequential."""

    def __enter__(self) -> "MitmdumpForker":
        self.proc = subprocess.Popen([sys.executable, "-c", _FORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        return self

    def run(self, args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Like run_mitmdump_until_exit: stdout holds all the output, stderr is empty."""
        import json
        cmd = ["--listen-host", "127.0.0.1", "--listen-port", "0", *args]
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            raise AssertionError(f"the mitmdump fork helper died (timeout {timeout} s?) running {cmd}")
        code, text = json.loads(line)
        return subprocess.CompletedProcess(["mitmdump", *cmd], code, text, "")

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()
