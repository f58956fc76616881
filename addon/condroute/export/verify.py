"""``condroute export --to TARGET --verify``: the exported configuration run on the real gateway,
every case and saved flow sent through it, and where each request arrived compared with
condroute's own decision for the same request.

How: every upstream of the rules is stood in for by a *recording backend* on 127.0.0.1 (answers
200 with what it received as JSON); the exporter writes the configuration with those addresses
(``ExportOptions.addresses``) and a header the verifier uses to tell the gateway the client's
address (``X-Condroute-Verify-Client``: a verifier on loopback cannot connect from 10.20.3.4).
Each request is written once as it goes on the wire, and condroute decides on exactly that request
(the case's ``jwt`` is put where ``settings.jwt.from`` says first). Compared:

- routed: the upstream that got it (a split: any of its arms, and a sticky split's key sends the
  same arm twice), the path and query it received, every header condroute forwards (values in
  order, names without case; repeated fields folded into one comma-separated field count as the
  same, RFC 9110 §5.3), no header condroute removed, and no header the gateway invented, except
  those a gateway adds by design (``IGNORED``);
- a mirror of every request (``percent: 100``): a copy reached the mirror's recording backend,
  with the path and Host condroute sends it with (a sampled mirror is drawn on each side on its
  own, so it is not compared);
- a direct answer: its status, body and headers (a ``respond.file``: the file as condroute serves
  it now, ``localfiles.serve``, without ETag and Last-Modified, which an inlined copy cannot keep);
  a redirect: status and Location;
- no route (passthrough, which a gateway cannot do): the gateway's own ``404``; nothing selected
  with ``on_no_match: error``: its own ``502``; a path condroute refuses: ``400``.

Every process it started is stopped on the way out, also on Ctrl-C.

Why this module is long: the recording backends, writing a request on the wire, comparing an
answer with a decision and running a gateway are one procedure whose parts share the recorders and
the case numbering; split up, each part would need the others' internals.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

from .. import model
from ..compile.runtime import Rules
from ..engine import Decision, decide
from ..localfiles import serve
from ..render import final_path, forwarded_headers, passes_through
from ..request import RequestView
from .base import ExportOptions, Exported, Target

CLIENT_HEADER = "X-Condroute-Verify-Client"
CASE_HEADER = "X-Condroute-Verify-Case"
RECORDED_BY = "X-Condroute-Recorded-By"

# headers a gateway adds or rewrites by design, and the verifier's own
IGNORED = frozenset({
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-real-ip",
    "x-request-id", "via", "forwarded", "connection", "content-length", "transfer-encoding", "te",
    "keep-alive", CLIENT_HEADER.lower(), CASE_HEADER.lower(),
})
IGNORED_PREFIXES = ("x-envoy-",)
START_TIMEOUT = 30.0
MIRROR_WAIT = 5.0      # the longest a gateway's copy to a mirror may take to arrive


def _ignored(name: str) -> bool:
    low = name.lower()
    return low in IGNORED or low.startswith(IGNORED_PREFIXES)


# ------------------------------------------------------------------------------ recording backends
class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "condroute-recorder"

    def log_message(self, *args: Any) -> None:   # quiet
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self.rfile)
        got = {"upstream": self.server.label, "method": self.command, "target": self.path,
               "headers": [[k, _utf8(v)] for k, v in self.headers.items()], "body_length": len(body)}
        self.server.arrivals.append(got)
        out = json.dumps(got).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header(RECORDED_BY, self.server.label.encode("unicode_escape").decode("ascii"))
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any


def _utf8(v: str) -> str:
    """A header value as sent (UTF-8 bytes), where http.client and http.server read latin-1."""
    try:
        return v.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return v


def _read_chunked(f: Any) -> bytes:
    out = b""
    while True:
        size = int(f.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            f.readline()
            return out
        out += f.read(size)
        f.readline()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass    # a gateway that drops a connection (a health check, a retry) is not the verifier's business


class Recorder:
    """A recording backend on 127.0.0.1 for one upstream origin."""

    def __init__(self, label: str):
        self.server = _Server(("127.0.0.1", 0), _Recorder)
        self.server.label = label
        self.server.arrivals = []
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def arrivals(self) -> list[dict]:
        return self.server.arrivals

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------ requests
@dataclass
class Wire:
    """One request as the verifier writes it, and condroute's view of exactly that request."""
    name: str
    where: str                      # CASES:LINE or DUMP#N
    method: str
    target: str                     # path?query as sent
    headers: list[tuple[str, str]]  # Host first
    client_ip: str
    view: RequestView
    body: bytes = b""


def _jwt_place(m: model.Rules) -> tuple[str, str]:
    """Where settings.jwt.from says the token is: ("header", NAME) or ("cookie", NAME)."""
    spec = "header:Authorization"
    if m.settings.jwt is not None and isinstance(m.settings.jwt.v, dict) and "from" in m.settings.jwt.v:
        spec = str(m.settings.jwt.v["from"].v)
    kind, _, name = spec.partition(":")
    return (kind.strip().lower() or "header", name.strip() or "Authorization")


def wire(name: str, where: str, req: RequestView, m: model.Rules, body: bytes = b"") -> Wire:
    headers = list(req.headers)
    if req.jwt_token:
        kind, place = _jwt_place(m)
        if kind == "cookie":
            headers.append(("Cookie", f"{place}={req.jwt_token}"))
        else:
            headers.append((place, f"Bearer {req.jwt_token}"))
    if not any(k.lower() == "host" for k, _ in headers):
        headers.insert(0, ("Host", req.host))
    client = req.peer or "127.0.0.1"
    target = (req.raw_path or req.path) + (f"?{req.query_string}" if req.query_string else "")
    view = RequestView(req.method, req.scheme, req.host, req.port, req.raw_path or req.path,
                       req.query_string, headers, client)
    return Wire(name, where, req.method, target, headers, client, view, body)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)

    @property
    def arrival(self) -> dict | None:
        if self.header(RECORDED_BY) is None:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def send(port: int, w: Wire, n: int, timeout: float = 10.0) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(w.method, w.target, skip_host=True, skip_accept_encoding=True)
        for k, v in w.headers:
            conn.putheader(k, v.encode("utf-8", "surrogateescape"))
        conn.putheader(CLIENT_HEADER, w.client_ip)
        conn.putheader(CASE_HEADER, str(n))
        if w.body or w.method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(w.body)))
        conn.endheaders(w.body or None)
        r = conn.getresponse()
        body = r.read()
        return Answer(r.status, [(k, _utf8(v)) for k, v in r.getheaders()], body)
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------- comparing
def _values(h: Iterable[tuple[str, str]] | Iterable[list[str]], low: str) -> list[str]:
    return [v for k, v in h if k.lower() == low]


def compare(d: Decision, w: Wire, a: Answer, origins: dict[str, str], rules: Rules, target: str) -> list[str]:
    """What differs between condroute's decision ``d`` and the gateway's answer ``a``; [] when none.
    ``origins`` maps a recorder's label to its upstream origin."""
    req = w.view
    got = a.arrival
    if d.outcome == "routed":
        if got is None:
            return [f"condroute sends it to {d.upstream}, {target} answered {a.status} itself"]
        want = [d.upstream_obj] if d.upstream_obj is not None else []
        b = d.backend_obj
        if b is not None and b.split is not None:
            want = [up for up, weight in b.split.arms if weight > 0]
        arrived = origins.get(got["upstream"])
        match = next((up for up in want if up.origin == arrived), None)
        if match is None:
            names = " or ".join(sorted({up.name for up in want})) or str(d.upstream)
            return [f"upstream: condroute {names}, {target} {got['upstream']}"]
        diffs = []
        path = final_path(d, req) or ""
        chosen = d.upstream_obj
        if match is not chosen and chosen is not None and path.startswith(chosen.base_path):
            path = match.base_path + path[len(chosen.base_path):]    # the arm that got it: its base path
        if got["target"] != path:
            diffs.append(f"path: condroute {path}, {target} {got['target']}")
        if got["method"] != req.method:
            diffs.append(f"method: condroute {req.method}, {target} {got['method']}")
        expected = forwarded_headers(d, req) or []
        if match is not d.upstream_obj and d.host_header == getattr(d.upstream_obj, "authority", None):
            expected = [(k, match.authority if k.lower() == "host" else v) for k, v in expected]
        received = [(k, v) for k, v in got["headers"]]
        names = {k.lower() for k, _ in expected} | {k.lower() for k, _ in received}
        for low in sorted(names):
            if _ignored(low):
                continue
            e, r = _values(expected, low), _values(received, low)
            if e != r and _folded(e) != _folded(r):
                diffs.append(f"header {low}: condroute {_show(e)}, {target} {_show(r)}")
        return diffs
    if got is not None:
        return [f"condroute {_outcome(d)}, {target} sent it to {got['upstream']}"]
    if d.outcome == "respond" and d.respond is not None:
        diffs = []
        resp = d.respond
        if getattr(resp, "file", ""):        # respond.file: the file as it is now (export.toolbox)
            resp = _file_answer(resp, req.method)
        if a.status != resp.status:
            diffs.append(f"status: condroute {resp.status}, {target} {a.status}")
        loc = next((v for k, v in resp.headers if k.lower() == "location"), None)
        if loc is None and req.method != "HEAD" and a.body.decode("utf-8", "replace") != resp.body:
            diffs.append(f"body: condroute {resp.body[:80]!r}, {target} {a.body.decode('utf-8', 'replace')[:80]!r}")
        for k, v in resp.headers:
            if k.lower() in ("content-length",):
                continue
            got_v = a.header(k)
            if got_v != v:
                diffs.append(f"response header {k}: condroute {v!r}, {target} {got_v!r}")
        return diffs
    want_status = 404 if passes_through(d) else (d.status or 502)
    if a.status != want_status:
        return [f"status: condroute {_outcome(d)} ({want_status} from the gateway), {target} {a.status}"]
    return []


def _file_answer(resp: model.Respond, method: str) -> model.Respond:
    """condroute's answer for a respond.file (``localfiles.serve``, the file as it is now), without
    the ETag and Last-Modified an exported copy cannot keep (``export.toolbox``)."""
    a = serve(resp, method)
    headers = tuple((k, v) for k, v in a.headers if k.lower() not in ("etag", "last-modified"))
    return model.Respond(a.status, a.body.decode("utf-8", "replace"), headers)


def _folded(values: list[str]) -> list[str]:
    """Repeated header fields as one comma-separated field, as a proxy may forward them (RFC 9110
    §5.3: the same message); a difference only in that folding is not one."""
    return [part.strip() for v in values for part in v.split(",")]


def _outcome(d: Decision) -> str:
    if passes_through(d):
        return "passes it through (no route)"
    if d.outcome == "respond":
        return f"answers {d.status}"
    if d.outcome == "bad_request":
        return "refuses it (400)"
    return f"answers {d.status or 502} ({d.outcome})"


def _show(values: list[str]) -> str:
    if not values:
        return "absent"
    return values[0] if len(values) == 1 else "[" + ", ".join(values) + "]"


def sticky_key(d: Decision) -> bool:
    """The decision chose a sticky split's arm from a key the request carries (not a random pick)."""
    b = d.backend_obj
    return (b is not None and b.split is not None and b.split.kind != "random"
            and d.split is not None and "random" not in d.split)


# ------------------------------------------------------------------------------------------ running
@dataclass
class Result:
    passed: int = 0
    failed: int = 0
    lines: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    skipped: int = 0
    notes: list[str] = field(default_factory=list)     # the export's notes (what the gateway does otherwise)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(proc: subprocess.Popen, port: int, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"the gateway exited with status {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return None
        except OSError:
            time.sleep(0.05)
    return f"the gateway did not listen on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s"


def stop(proc: subprocess.Popen) -> None:
    """Stop a gateway and everything it started (its process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def write(exp: Exported, t: Target, workdir: str) -> str:
    path = os.path.join(workdir, t.config_name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(exp.text)
    for name, text in exp.files.items():
        p = os.path.join(workdir, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def run(t: Target, compiled: Rules, m: model.Rules, wires: list[Wire], allow_partial: bool = False,
        keep: str | None = None) -> Result:
    """Export ``m`` for ``t``, run the gateway and send ``wires`` through it (see the module)."""
    res = Result()
    origins: dict[str, str] = {}
    recorders: list[Recorder] = []
    by_origin: dict[str, Recorder] = {}
    for up in model.every_upstream(m):
        if up.origin not in by_origin:
            rec = Recorder(up.name)
            by_origin[up.origin] = rec
            recorders.append(rec)
            origins[up.name] = up.origin
    workdir = keep or tempfile.mkdtemp(prefix=f"condroute-verify-{t.name}-")
    proc = None
    try:
        opts = ExportOptions(listen_host="127.0.0.1", listen_port=free_port(),
                             addresses={o: ("127.0.0.1", r.port) for o, r in by_origin.items()},
                             client_ip_header=CLIENT_HEADER, workdir=workdir, admin_port=free_port())
        exp = t.export(m, opts)
        res.refused = [r.line(t.name) for r in exp.refused]
        res.notes = list(exp.notes)
        if exp.refused and not allow_partial:
            return res
        write(exp, t, workdir)
        problem = t.check(workdir)
        if problem is not None:
            res.failed = 1
            res.lines.append(f"the exported configuration does not load in {t.name}: {problem}")
            return res
        proc = t.start(workdir, opts)
        why = _wait_listening(proc, opts.listen_port, time.monotonic() + START_TIMEOUT)
        if why is not None:
            res.failed = 1
            res.lines.append(f"{why}: {_stderr(proc)}")
            return res
        refused_lines = {(r.at.file, r.at.line) for r in exp.refused}
        for n, w in enumerate(wires, 1):
            if w.view.scheme in ("https", "wss"):
                res.skipped += 1
                res.lines.append(f"skip  {w.name} ({w.where}): an https:// request; the verifier speaks plain "
                                 "HTTP to the gateway")
                continue
            d = decide(compiled, w.view)
            if refused_lines and _touches_refused(compiled, d, refused_lines):
                res.skipped += 1
                res.lines.append(f"skip  {w.name} ({w.where}): its route was not exported")
                continue
            try:
                a = send(opts.listen_port, w, n)
                diffs = compare(d, w, a, origins, compiled, t.name)
                if not diffs and sticky_key(d) and a.arrival is not None:
                    again = send(opts.listen_port, w, n).arrival
                    if again is None or again["upstream"] != a.arrival["upstream"]:
                        diffs.append(f"split: the same key went to {a.arrival['upstream']}, then to "
                                     f"{again['upstream'] if again else 'no upstream'} ({t.name} is not sticky)")
                if not diffs and a.arrival is not None and d.mirrors:
                    client_host = next((v for k, v in w.headers if k.lower() == "host"), None)
                    diffs = mirror_diffs(d, n, client_host, by_origin, t.name, time.monotonic() + MIRROR_WAIT)
            except (ValueError, http.client.HTTPException) as e:   # a target http.client cannot write
                diffs = [f"cannot send this request: {e}"]
            except OSError as e:
                diffs = [f"no answer from {t.name}: {e}"]
            if diffs:
                res.failed += 1
                for diff in diffs:
                    res.lines.append(f"FAIL  {w.name} ({w.where}): {diff}")
            else:
                res.passed += 1
        return res
    finally:
        if proc is not None:
            stop(proc)
        for rec in recorders:
            rec.close()
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def mirror_diffs(d: Decision, n: int, client_host: str | None, by_origin: dict[str, Recorder], target: str,
                 deadline: float) -> list[str]:
    """The copies condroute sends for case ``n`` (``d.mirrors``, drawn) compared with what reached
    the mirrors' recording backends: a copy arrived, with its path and Host (``client_host``: the
    request's, for a copy sent with the client's Host). Only mirrors of every request (percent 100)
    are checked: a sampled one is drawn on each side on its own."""
    diffs = []
    for m, path, host in d.mirrors:
        if m.percent < 100:
            continue
        rec = by_origin.get(m.upstream.origin)
        if rec is None:
            continue
        mine = 2 if d.upstream_obj is not None and d.upstream_obj.origin == m.upstream.origin else 1
        while True:
            got = [x for x in list(rec.arrivals) if _values(x["headers"], CASE_HEADER.lower()) == [str(n)]]
            if len(got) >= mine or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if len(got) < mine:
            diffs.append(f"mirror: condroute sends a copy to {m.upstream.name}, {target} sent none")
            continue
        copy = got[-1]
        if copy["target"] != path and not any(x["target"] == path for x in got):
            diffs.append(f"mirror {m.upstream.name}: path: condroute {path}, {target} {copy['target']}")
        want = host if host is not None else client_host
        hosts = {h for x in got for h in _values(x["headers"], "host")}
        if want is not None and want not in hosts:
            diffs.append(f"mirror {m.upstream.name}: Host: condroute {want}, {target} {_show(sorted(hosts))}")
    return diffs


def _touches_refused(rules: Rules, d: Decision, refused: set[tuple[str, int]]) -> bool:
    """The decision's route holds a part that was not exported: one written from where the route
    starts (its line, or an imported route's first backend, written above it) to where the next
    route of its file starts. A route that does not own the request decides nothing."""
    if d.route is None:
        return False

    def place(r) -> tuple[str, int]:
        return (getattr(r, "file", "") or rules.file, min([r.line] + [b.line for b in r.backends]))
    starts = [place(r) for r in rules.routes]
    for r, (file, start) in zip(rules.routes, starts):
        if r.name == d.route:
            end = min((ln for f, ln in starts if f == file and ln > start), default=10 ** 9)
            return any(f == file and start <= ln < end for f, ln in refused)
    return True


def _stderr(proc: subprocess.Popen) -> str:
    try:
        _, err = proc.communicate(timeout=2)
    except (subprocess.TimeoutExpired, ValueError):
        return ""
    text = (err or b"").decode("utf-8", "replace").strip()
    return text[-800:] if text else "(nothing on stderr)"

