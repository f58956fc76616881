"""Small local echo backends that say who they are, for the demo and the tests.

    python -m condroute.demo variant-a=127.0.0.1:9001 variant-b=127.0.0.1:9002

Every response is JSON: the backend's name, and the method, path, Host and headers it received.
"""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without this, Nagle + delayed ACK stall every
    # keep-alive response by ~40 ms
    disable_nagle_algorithm = True
    server_version = "condroute-demo"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = b""
        if length:
            body = self.rfile.read(length)
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        out = json.dumps({
            "backend": self.server.name,  # type: ignore[attr-defined]
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "headers": {k: v for k, v in self.headers.items()},
            "body_length": len(body),
        }, indent=1).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Backend", self.server.name)  # type: ignore[attr-defined]
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _answer

    def log_message(self, format: str, *args) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128   # the default backlog of 5 refuses connections under a burst

    def handle_error(self, request, client_address) -> None:
        import sys as _sys
        if not isinstance(_sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _family(host: str):
    import socket
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def start_echo(name: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start an echo backend in a daemon thread; returns the server (``server_address[1]`` is the port)."""
    cls = type("_S", (_Server,), {"address_family": _family(host)})
    srv = cls((host, port), _Handler)
    srv.name = name  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True, name=f"echo-{name}").start()
    return srv


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m condroute.demo NAME=HOST:PORT ...", file=sys.stderr)
        return 2
    servers = []
    for a in args:
        name, _, addr = a.partition("=")
        host, _, port = addr.rpartition(":")
        servers.append(start_echo(name, host.strip("[]") or "127.0.0.1", int(port)))
        print(f"demo backend {name} listening on http://{addr}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
