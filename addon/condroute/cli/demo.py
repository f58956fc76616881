"""Small local echo backends that say who they are, for the demo, ``scripts/run --demo`` and the tests.

    python -m condroute.cli.demo variant-a=127.0.0.1:9001 variant-b=127.0.0.1:9002
    python -m condroute.cli.demo --rules rules/local-build.yaml

Every response is JSON: the backend's name, and the method, path, Host and headers it received.
With ``--rules``, a stand-in is started for every upstream of the rules file that is plain HTTP on
this machine (a loopback address or ``localhost``), named after the upstream; the others are named
in one line each and left alone. Every port is checked first: a busy one is one sentence (and who
holds it, when this machine says), exit status 1, and nothing is started.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import model
from ..compile.runtime import Rules
from ..errors import RulesError
from ..load.ctx import CompileCtx
from ..load.rulesfile import read_rules_file
from ..load.yamlpos import parse_bytes
from ..rules import load_model, load_rules_bytes


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
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def start_echo(name: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start an echo backend in a daemon thread; returns the server (``server_address[1]`` is the port)."""
    cls = type("_S", (_Server,), {"address_family": _family(host)})
    srv = cls((host, port), _Handler)
    srv.name = name  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True, name=f"echo-{name}").start()
    return srv


# -- a rules file's stand-ins ---------------------------------------------------------------------
@dataclass(frozen=True)
class StandIn:
    """An echo backend in place of the upstreams (usually one) at ``host:port``."""
    names: tuple[str, ...]
    host: str          # the address to listen on (``localhost`` becomes 127.0.0.1)
    port: int

    @property
    def name(self) -> str:
        return "+".join(self.names)

    @property
    def url(self) -> str:
        return f"http://{'[' + self.host + ']' if ':' in self.host else self.host}:{self.port}"


def load_both(path: str) -> tuple[Rules, model.Rules]:
    """The compiled rules (to check the file as the addon would, and to decide) and the model (the
    file as written) of one read of a rules file. Raises :class:`RulesError`."""
    raw = read_rules_file(path).data
    rules = load_rules_bytes(raw, path)
    root, text = parse_bytes(raw, path)
    return rules, load_model(root, CompileCtx(path, text))


def load_or_report(path: str) -> tuple[Rules, model.Rules] | None:
    """load_both(), or None after printing the file's located problems to stderr."""
    try:
        return load_both(path)
    except RulesError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return None


def upstreams_of(m: model.Rules) -> list[model.Upstream]:
    """Every upstream the file can send to: the named ones, then URLs written in backends and the
    arms of splits; each once."""
    seen: dict[tuple[str, str, str, int], model.Upstream] = {}
    for up in model.every_upstream(m):
        seen.setdefault((up.name, up.scheme, up.host.lower(), up.port), up)
    return list(seen.values())


def loopback_host(host: str) -> str | None:
    """The address to listen on for an upstream host on this machine, or None for another host."""
    h = host.lower().rstrip(".")
    if h == "localhost" or h.endswith(".localhost"):
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return None
    return str(ip) if ip.is_loopback else None


def plan_stand_ins(m: model.Rules) -> tuple[list[StandIn], list[str]]:
    """The stand-ins for a rules file's upstreams, and one line for each upstream not stood in."""
    names: dict[tuple[str, int], list[str]] = {}
    notes: list[str] = []
    for up in upstreams_of(m):
        host = loopback_host(up.host)
        label = up.name if up.name in (up.url, up.origin) else f"{up.name} ({up.origin})"
        if host is None:
            notes.append(f"upstream {label} is not on this machine: not stood in")
        elif up.scheme != "http":
            notes.append(f"upstream {label} is HTTPS: not stood in (a stand-in answers plain HTTP)")
        else:
            names.setdefault((host, up.port), []).append(up.name)
    return [StandIn(tuple(n), h, p) for (h, p), n in names.items()], notes


# -- ports ----------------------------------------------------------------------------------------
def _listener_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (any address), from /proc/net (Linux; else empty)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    # local_address is ADDR:PORT in hex; state 0A is LISTEN
                    if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(cols[9])
        except (OSError, ValueError, IndexError):
            continue
    return inodes


def port_holder(port: int) -> str | None:
    """``pid N (command line)`` of a process listening on ``port``, when this machine lets us see it."""
    inodes = {f"socket:[{i}]" for i in _listener_inodes(port)}
    if not inodes:
        return None
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if len(cmd) > 70:
            cmd = cmd[:67] + "..."
        return f"pid {pid} ({cmd})" if cmd else f"pid {pid}"
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why nothing could listen on ``host:port`` now, or None when it is free. Binds as a server
    would (SO_REUSEADDR: a connection in TIME_WAIT does not make a port busy)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                holder = port_holder(port)
                return "is already in use" + (f" by {holder}" if holder else "")
            if e.errno == errno.EACCES:
                return "needs more privileges than this user has (a port below 1024)"
            if e.errno == errno.EADDRNOTAVAIL:
                return "is on an address this machine does not have"
            return f"cannot be listened on: {e.strerror or e}"
    return None


def stand_in_problems(stand_ins: list[StandIn], rules_file: str, advice: str = "stop that first") -> list[str]:
    """One sentence per stand-in that cannot listen, ending in ``advice``."""
    out = []
    for s in stand_ins:
        why = port_problem(s.host, s.port)
        if why:
            out.append(f"{s.host}:{s.port}, where the stand-in for upstream {s.name} of {rules_file} would "
                       f"listen, {why}: {advice}")
    return out


def start_stand_ins(stand_ins: list[StandIn]) -> list[ThreadingHTTPServer]:
    servers = []
    for s in stand_ins:
        servers.append(start_echo(s.name, s.host, s.port))
        print(f"stand-in for upstream {s.name} listening on {s.url}", flush=True)
    return servers


# -- the command ----------------------------------------------------------------------------------
_USAGE = ("usage: python -m condroute.cli.demo NAME=HOST:PORT ...\n"
          "       python -m condroute.cli.demo --rules RULES   (a stand-in for every upstream on this machine)")


def _parse_pairs(args: list[str]) -> list[StandIn] | str:
    out = []
    for a in args:
        name, eq, addr = a.partition("=")
        host, colon, port = addr.rpartition(":")
        if not (name and eq and colon and port.isdigit() and int(port) < 65536):
            return f"{a!r} is not NAME=HOST:PORT (as in variant-a=127.0.0.1:9001)"
        out.append(StandIn((name,), host.strip("[]") or "127.0.0.1", int(port)))
    return out


def _rules_arg(args: list[str]) -> str | None:
    """FILE, when the arguments are exactly ``--rules FILE`` or ``--rules=FILE``."""
    if len(args) == 2 and args[0] == "--rules":
        return args[1] or None
    if len(args) == 1 and args[0].startswith("--rules="):
        return args[0].partition("=")[2] or None
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    if args[0].startswith("--rules"):
        file = _rules_arg(args)
        if not file:
            print("demo: --rules takes one rules file, as in --rules rules/local-build.yaml", file=sys.stderr)
            return 2
        loaded = load_or_report(file)
        if loaded is None:
            return 1
        m = loaded[1]
        stand_ins, notes = plan_stand_ins(m)
        for n in notes:
            print(n, flush=True)
        problems = stand_in_problems(stand_ins, file)
        if not stand_ins and not problems:
            print(f"demo: {file} has no plain-HTTP upstream on this machine to stand in for", file=sys.stderr)
            return 1
    else:
        parsed = _parse_pairs(args)
        if isinstance(parsed, str):
            print(f"demo: {parsed}", file=sys.stderr)
            return 2
        stand_ins = parsed
        problems = [f"{s.host}:{s.port} (for {s.name}) {why}" for s in stand_ins
                    if (why := port_problem(s.host, s.port))]
    if problems:
        for p in problems:
            print(f"demo: {p}", file=sys.stderr)
        return 1
    start_stand_ins(stand_ins)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
