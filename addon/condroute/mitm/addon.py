"""The mitmproxy addon: a thin adapter between mitmproxy flows and the pure engine."""
from __future__ import annotations

import asyncio
import logging
import errno
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx, http

from .. import render
from ..engine import Decision, decide
from ..errors import RulesError
from ..httptext import parse_seconds
from ..rules import Rules, load_rules_bytes
from . import compat
from .compat import set_host_header
from .upstreams import Upstreams
from .view import H2_H3, FlowView, host_header_text, request_view

__all__ = ["ConditionalRouting", "FlowView", "request_view"]
from ..load.rulesfile import RulesBytes, not_regular, read_rules_file, stat_key

log = logging.getLogger("condroute")

LOG_LEVELS = ("off", "decisions", "verbose")
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off", "")
RELOAD_INTERVAL = 1.0


class BadOption(Exception):
    pass


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise BadOption(f"{name} must be true or false, not {value!r}")


# mtime granularity to allow for (FAT: 2 s; HFS+: 1 s; ext4 with a jiffy clock: 4-10 ms)
RACY_SECONDS = 2.0
# A new version is installed only once it has settled: seen unchanged by two checks and last
# modified longer ago than the reload interval, and never less than this: a writer that truncates,
# writes part of the file and pauses (1.5 s in issue 11) must not get its half installed at the
# default 1 s interval, and on FAT an mtime cannot tell times less than 2 s apart.
SETTLE_SECONDS = 2.0
_clock = time.monotonic       # tests replace it to drive settling without sleeping
LOAD_SWITCH_INTERVAL = 0.0005   # seconds; see _load_in_thread


@dataclass(frozen=True)
class FileSignature:
    """What identifies one version of the rules file: mtime, ctime, size and inode, plus a hash of
    the content read, which catches a same-size edit made within the same mtime tick as the read (a
    coarse filesystem clock). Comparison ignores ``racy``."""
    mtime_ns: int
    size: int
    ino: int
    digest: bytes
    racy: bool = field(default=False, compare=False)   # modified so recently that mtime can't be trusted yet
    ctime_ns: int = 0

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.mtime_ns, self.ctime_ns, self.size, self.ino)

    @staticmethod
    def of(key: tuple[int, int, int, int], digest: bytes, racy: bool) -> "FileSignature":
        mtime_ns, ctime_ns, size, ino = key
        return FileSignature(mtime_ns, size, ino, digest, racy, ctime_ns)

    def describe(self) -> str:
        """The version, for the log: content hash and modification time."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.mtime_ns / 1e9))
        return f"content {self.digest.hex()[:12] or 'unread'}, modified {when}.{self.mtime_ns // 1_000_000 % 1000:03d} UTC"


def file_signature(read: RulesBytes, read_at: float) -> FileSignature:
    """The signature of the bytes read (hashed and parsed from that same read). *Racy* when the
    file was modified less than RACY_SECONDS before it was read (git's "racily clean" rule): an
    edit right after may keep the same mtime, so that version is read and hashed once more later."""
    racy = abs(read_at - read.mtime_ns / 1e9) < RACY_SECONDS
    return FileSignature.of(read.key, read.digest, racy)


def retire(rules: Rules) -> None:
    """Free replaced rules in a daemon thread, one route at a time. Freeing a large rules file's
    hundreds of thousands of objects at once is one C-level cascade that holds the GIL throughout
    (0.1-0.4 s for 5 MB, measured): on the event loop, traffic would wait for it. Route by route,
    the loop gets the GIL back between routes. (Flows still using a route keep it alive.)"""
    routes = list(rules.routes)
    box = [rules]
    del rules

    def run() -> None:
        box.clear()
        while routes:
            routes.pop()

    threading.Thread(target=run, name="condroute-retire", daemon=True).start()


@dataclass
class Loaded:
    """The outcome of one load of the rules file (made in a worker thread at reload)."""
    path: str
    read: RulesBytes | None
    rules: Rules | None
    error: RulesError | None
    read_at: float


def load_version(path: str) -> Loaded:
    """Read the file once, then compile those bytes. Never raises: any exception becomes a located
    error (a MemoryError or RecursionError at reload must not kill the watcher)."""
    read_at = time.time()
    read: RulesBytes | None = None
    try:
        read = read_rules_file(path)
        return Loaded(path, read, load_rules_bytes(read.data, path), None, read_at)
    except RulesError as e:
        err = e
    except MemoryError:
        err = RulesError.at(path, 1, 1, "out of memory while loading the file")
    except RecursionError:
        err = RulesError.at(path, 1, 1, "the file is nested too deeply")
    except Exception as e:  # noqa: BLE001 - reported with its place, never as a traceback
        err = RulesError.at(path, 1, 1, f"the file does not load: {type(e).__name__}: {e}")
    return Loaded(path, read, None, err, read_at)


def answered(flow: http.HTTPFlow) -> bool:
    """Does condroute answer ``flow`` itself (respond, on_no_match: error)? Then its request body
    stays local (compat.keep_answered_bodies_local)."""
    md = flow.metadata.get("condroute")
    return bool(md and md.get("answer"))


def body_dropped(flow: http.HTTPFlow) -> None:
    """Part of the answered request's body was dropped: the request keeps no body (_answer_or_fix)."""
    flow.metadata["condroute"]["body_dropped"] = True


class ConditionalRouting:
    def __init__(self) -> None:
        self.rules: Rules | None = None
        self.path: str = ""
        self.signature: FileSignature | None = None   # the version whose rules are live
        self.generation = 0              # bumped on every successful (re)load
        self._seen: FileSignature | None = None       # the version last loaded, live or failed: not retried
        self._pending: tuple[tuple[int, int, int, int], float] | None = None   # a new version settling, first seen when
        self._loading: asyncio.Future | None = None   # the reload running in a worker thread
        self._file_problem: str | None = None         # logged once
        self.last_error: str | None = None
        self.log_level = 1               # index into LOG_LEVELS
        self.debug_header = False
        self.reload_interval = RELOAD_INTERVAL
        self._watcher: asyncio.Task | None = None
        self._running = False
        # retries, failover, passive health, timeouts. Called from this addon's own hooks rather than
        # registered as a sub-addon: mitmproxy walks an addon's children and dispatches each hook for
        # every event, which cost more per request than condroute's whole decision (callgrind).
        self.upstreams = Upstreams(self.route)

    # -- options --------------------------------------------------------------------------------
    def load(self, loader: Any) -> None:
        compat.keep_answered_bodies_local(answered, body_dropped)
        loader.add_option("condroute_rules", str, "",
                          "condroute: path to the rules file (YAML, JSON or KrakenD); empty = inactive.")
        loader.add_option("condroute_debug_header", str, "false",
                          "condroute: 'true' adds the response header X-Condroute: ROUTE/BACKEND -> UPSTREAM.")
        loader.add_option("condroute_reload_interval", str, "1",
                          "condroute: seconds between checks of the rules file for changes; 0 = do not watch.")
        loader.add_option("condroute_log", str, "decisions",
                          "condroute: off | decisions (a line per routed request) | verbose (also skipped backends).")
        self.upstreams.load(loader)

    def configure(self, updated: set[str]) -> None:
        self.upstreams.configure(updated)
        # Errors are logged, not raised: mitmproxy shows an exception from a script with a traceback,
        # while an error logged during start-up makes mitmdump exit with status 1 all the same.
        try:
            self._configure(updated)
        except BadOption as e:
            log.error(f"condroute: {e}")
        except RulesError as e:
            if self.rules is not None:
                log.error(f"condroute: the rules file does not load; keeping the last good rules ({self.rules.summary()}):")
            for p in e.problems:
                log.error(str(p))
        self._sync_watcher()
        self._sync_hooks()

    def _sync_hooks(self) -> None:
        """Register ``responseheaders`` only while it has work: mitmproxy dispatches every hook an
        addon has on every request, and this one is needed only for the debug header and for
        response timeouts (see compat.show_hook)."""
        rules = self.rules
        compat.show_hook(self, "responseheaders",
                         self.debug_header or bool(self.upstreams.timers) or (rules is not None and rules.has_timeouts))

    def _configure(self, updated: set[str]) -> None:
        if "condroute_log" in updated:
            v = ctx.options.condroute_log.strip().lower()
            if v not in LOG_LEVELS:
                raise BadOption(f"condroute_log must be one of off, decisions, verbose, not {ctx.options.condroute_log!r}")
            self.log_level = LOG_LEVELS.index(v)
        if "condroute_reload_interval" in updated:
            try:
                self.reload_interval = parse_seconds("condroute_reload_interval", ctx.options.condroute_reload_interval)
            except ValueError as e:
                raise BadOption(str(e)) from None
        if "condroute_debug_header" in updated:
            self.debug_header = parse_bool("condroute_debug_header", ctx.options.condroute_debug_header)
        if "condroute_rules" in updated:
            path = ctx.options.condroute_rules.strip()
            if not path:
                if self.rules is not None or not self.path:
                    log.info("condroute: no rules file (set condroute_rules=FILE): inactive, every request passes through")
                self.rules, self.path, self.signature = None, "", None
            else:
                # at start-up, synchronously: mitmdump must exit with status 1 on a bad file
                got = load_version(path)
                if got.error is not None:
                    raise got.error
                assert got.rules is not None and got.read is not None
                self._install(got.rules, path, file_signature(got.read, got.read_at), "loaded")
        if self.rules is not None and ("connection_strategy" in updated or "condroute_rules" in updated):
            # getattr: the option belongs to mitmproxy's Proxyserver addon, absent from bare test harnesses
            if getattr(ctx.options, "connection_strategy", None) == "eager":
                log.info("condroute: setting connection_strategy=lazy, so that a rerouted request never first "
                         "connects to its original destination")
                ctx.options.update(connection_strategy="lazy")
        if self.rules is not None and ("mode" in updated or "keep_host_header" in updated):
            self._warn_reverse_host()

    def _warn_reverse_host(self) -> None:
        rules = self.rules
        if rules is None:
            return
        modes = [m for m in getattr(ctx.options, "mode", []) if str(m).startswith("reverse")]
        uses_host = any(r.hosts for r in rules.routes)
        if modes and uses_host and not getattr(ctx.options, "keep_host_header", False):
            log.warning("condroute: in reverse mode mitmproxy rewrites the Host header before condroute sees it; "
                        "rules that match on host need --set keep_host_header=true")

    def _install(self, rules: Rules, path: str, sig: FileSignature, verb: str) -> None:
        old, self.rules, self.path, self.signature = self.rules, rules, path, sig   # one assignment: atomic swap
        if old is not None and old is not rules:
            retire(old)
            del old
        self._seen, self._pending = sig, None
        self._sync_hooks()
        self.generation += 1
        self.last_error = None
        log.info(f"condroute: {verb} {path}: {rules.summary()} [generation {self.generation}, {sig.describe()}]")
        for w in rules.warnings:
            log.warning(f"condroute: warning: {w}")

    # -- hot reload -----------------------------------------------------------------------------
    def running(self) -> None:
        self._running = True
        self._sync_watcher()

    def done(self) -> None:
        self._running = False
        self._sync_watcher()

    def _sync_watcher(self) -> None:
        """The watcher runs only while there is a file to watch and an interval to watch it at."""
        want = self._running and bool(self.path) and self.reload_interval > 0
        if want and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        elif not want and self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval or RELOAD_INTERVAL)
            try:
                if self._loading is not None and not self._loading.done():
                    continue              # one load at a time; this file is checked again once it is done
                due = self._due()
                if due is not None:
                    # read, hash, parse and compile in a worker thread: a 5 MB file takes seconds,
                    # and traffic must flow meanwhile. Installing is one assignment, here on the loop.
                    log.info(f"condroute: {due[0]} changed; loading it in the background "
                             f"(generation {self.generation} stays live meanwhile)")
                    self._loading = self._load_in_thread(due[0])
                    self._finish(due, await asyncio.shield(self._loading))
            except Exception as e:  # never let the watcher die
                log.error(f"condroute: reload check failed: {type(e).__name__}: {e}")

    @staticmethod
    def _load_in_thread(path: str) -> asyncio.Future:
        """load_version() in a daemon thread (not an executor's: a load in progress must not
        delay mitmdump's exit)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def done(got: Loaded) -> None:
            if not fut.done():
                fut.set_result(got)

        def run() -> None:
            # The loader holds the GIL except every "switch interval": the event loop, back from
            # each wait for I/O, waits that long for it (5 ms by default, several times per
            # request). A shorter interval while the load runs keeps request latency close to normal.
            was = sys.getswitchinterval()
            sys.setswitchinterval(min(was, LOAD_SWITCH_INTERVAL))
            try:
                got = load_version(path)
            finally:
                sys.setswitchinterval(was)
            try:
                loop.call_soon_threadsafe(done, got)
            except RuntimeError:  # the loop has closed: mitmdump is exiting
                pass

        threading.Thread(target=run, name="condroute-reload", daemon=True).start()
        return fut

    def check_reload(self) -> bool:
        """One check of the watcher, loading in this thread. Returns True when new rules were installed."""
        due = self._due()
        return due is not None and self._finish(due, load_version(due[0]))

    def _problem(self, msg: str | None) -> None:
        """Log a problem with the file (gone, unreadable, not a regular file) once, not on every check."""
        if msg is not None and self._file_problem != msg:
            log.error(f"condroute: {msg}; keeping the last good rules")
            self.last_error = msg
        self._file_problem = msg

    def _due(self) -> tuple[str, tuple[int, int, int, int], int] | None:
        """A stat, on the event loop: is a new version of the file there and settled, i.e. seen
        unchanged by two checks and modified longer ago than the reload interval (and
        SETTLE_SECONDS)? Then (path, its stat key, the generation now) for _finish."""
        path = self.path
        if not path:
            return None
        try:
            st = os.stat(path)
        except OSError as e:
            self._pending = None
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                self._problem(f"{path}: the rules file is gone")
            else:
                self._problem(f"{path}:1:1: cannot read the file: {e.strerror or e}")
            return None
        why = not_regular(st.st_mode)
        if why is not None:
            self._pending = None
            self._problem(f"{path}:1:1: {why}")
            return None
        self._problem(None)
        key = stat_key(st)
        seen = self._seen
        if seen is not None and seen.key == key and not seen.racy:
            self._pending = None          # the version last loaded (live, or failed: not retried)
            return None
        now = _clock()
        if self._pending is None or self._pending[0] != key:
            self._pending = (key, now)    # first seen: let it settle (a writer may be half-way through)
            return None
        settle = max(self.reload_interval, SETTLE_SECONDS)
        # "modified long ago" by mtime, or by how long this watcher has seen it unchanged, which can
        # only understate it (a file with an mtime in the future, from another machine's clock)
        if time.time() - st.st_mtime_ns / 1e9 < settle and now - self._pending[1] < settle:
            return None
        return path, key, self.generation

    def _finish(self, due: tuple[str, tuple[int, int, int, int], int], got: Loaded) -> bool:
        """On the event loop: install what was loaded, or remember that this version fails."""
        path, key, generation = due
        if path != self.path or generation != self.generation:
            return False                  # rules were set meanwhile (the option changed): stale
        self._pending = None
        read = got.read
        if read is not None and (read.changed or read.key != key):
            return False                  # changed since it settled: load again once it settles again
        sig = file_signature(read, got.read_at) if read is not None else FileSignature.of(key, b"", False)
        if self._seen == sig:
            # the same version read again because it was racy: nothing new (an error was logged already)
            self._seen = sig
            if self.signature == sig:
                self.signature = sig
            return False
        self._seen = sig                  # a failed version is not loaded again until the file changes
        if got.error is not None:
            self.last_error = str(got.error)
            kept = (f"generation {self.generation}, {self.rules.summary()}, {self.signature.describe()}"
                    if self.rules is not None and self.signature is not None else "none")
            log.error(f"condroute: reload failed ({sig.describe()}); not loading it again until the file "
                      f"changes; keeping the last good rules ({kept}):\n{got.error}")
            return False
        assert got.rules is not None
        self._install(got.rules, path, sig, "reloaded")
        return True

    # -- traffic --------------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> Any:
        self.route(flow)
        # a coroutine (awaited by mitmproxy) only when an upstream must be tried first
        return self.upstreams.requestheaders(flow)

    def route(self, flow: http.HTTPFlow) -> None:
        """Decide for a flow and reroute it (or prepare the direct answer)."""
        rules = self.rules
        if rules is None or flow.response is not None or flow.error is not None or not flow.live:
            return
        try:
            view = request_view(flow)
            if view.bad_host is not None:
                d = Decision("bad_request", req=view)
                d.status, d.reason = 400, view.bad_host
            else:
                if view.fix_host is not None:
                    data = flow.request.data
                    set_host_header(data, False, view.fix_host, view.host_at)
                    view.fields = data.headers.fields
                d = decide(rules, view, health=self.upstreams.health)
        except Exception as e:  # a bug must not become a silent passthrough
            log.error(f"condroute: internal error while deciding for {flow.request.method} "
                      f"{flow.request.pretty_url.split('?')[0]}: {type(e).__name__}")
            flow.metadata["condroute"] = {"outcome": "error", "status": 502, "header": "error",
                                          "answer": {"status": 502, "headers": {},
                                                     "body": "condroute: internal error while routing\n"}}
            flow.request.stream = False
            return
        if d.route is None and d.status is None:
            if self.log_level == 2:
                log.info(f"condroute: {render.summary(d)}")
            return
        md = render.to_dict(d)
        md["header"] = render.header_value(d)
        if d.outcome == "routed":
            # what apply() rewrites, so that `condroute explain --flows` can decide again
            data = flow.request.data
            md["original"] = {"scheme": view.scheme, "host": view.host, "port": view.port, "path": view.full_path,
                              "host_header": host_header_text(view.authority, data.http_version in H2_H3),
                              "headers": self._original_headers(flow, d)}
            self.upstreams.remember(flow, d)   # before apply: a failover starts from the original
            self.apply(flow, d, view.host_at if view.fields is data.headers.fields else None)
        elif d.status is not None:  # respond, or no match with on_no_match: error
            if d.respond is not None:
                md["answer"] = {"status": d.respond.status, "body": d.respond.body, "headers": dict(d.respond.headers)}
            else:
                md["answer"] = {"status": d.status, "body": render.error_body(d),
                                "headers": {"Content-Type": "text/plain; charset=utf-8"}}
            flow.request.stream = False   # answered in `request`: the body must not be streamed anywhere
        flow.metadata["condroute"] = md
        flow.comment = render.comment(d)
        if self.log_level:
            log.info(f"condroute: {render.summary(d)}")
            if self.log_level == 2:
                for line in render.skipped_lines(d):
                    log.info(f"condroute:   {line}")

    @staticmethod
    def _original_headers(flow: http.HTTPFlow, d: Decision) -> dict[str, list[str]]:
        if not (d.remove_headers or d.set_headers):
            return {}
        h = flow.request.headers
        return {n: h.get_all(n) for n in {*d.remove_headers, *dict(d.set_headers)}}

    @staticmethod
    def apply(flow: http.HTTPFlow, d: Decision, host_at: int | None = None) -> None:
        req = flow.request
        data = req.data
        up = d.upstream_obj
        if up is not None:
            # Written at the data level: the public setters validate and rewrite Host/:authority on
            # every call (and write IPv6 literals unbracketed); Host is set once, below. The values
            # come from an upstream URL checked when the rules were loaded.
            data.scheme = up.scheme_b
            data.host = d.host
            data.port = d.port
            keep_host = d.host_header is None      # preserve_host: the client's Host stays
            h2 = data.http_version in H2_H3
            # the request target of an absolute-form HTTP/1 request (what an upstream proxy is
            # asked for) follows the new destination; for HTTP/2 and 3, :authority is the Host
            if data.authority and not (keep_host and h2):
                data.authority = up.authority_b
            if not keep_host:
                if d.host_header == up.authority and up.authority.isascii():
                    set_host_header(data, h2, up.authority_b, host_at)
                else:
                    req.host_header = d.host_header
        data.path = d.path.encode("utf-8", "surrogateescape")
        if d.remove_headers or d.set_headers:
            for name in d.remove_headers:
                req.headers.pop(name, None)
            for name, value in d.set_headers:
                req.headers[name] = value

    def request(self, flow: http.HTTPFlow) -> None:
        self._answer_or_fix(flow)
        self.upstreams.request(flow)

    def _answer_or_fix(self, flow: http.HTTPFlow) -> None:
        md = flow.metadata.get("condroute")
        if md is None or flow.response is not None:
            return
        answer = md.get("answer")
        if answer:
            if md.get("body_dropped"):
                flow.request.data.content = None   # as for a streamed body: not kept
            flow.response = http.Response.make(answer["status"], answer["body"], answer["headers"])
        elif md.get("outcome") == "routed":
            # mitmproxy (11, 12) forwards an HTTP/2 request without content-length to an HTTP/1.1
            # server with no framing at all, so the server reads an empty body. A rerouted HTTP/2
            # request often goes to a plain-http backend: give a buffered body its length.
            r = flow.request
            if ((r.is_http2 or r.is_http3) and not r.stream and r.raw_content
                    and "content-length" not in r.headers and "transfer-encoding" not in r.headers):
                r.headers["content-length"] = str(len(r.raw_content))

    # connection events and errors: for passive health, retries and timeouts
    def error(self, flow: http.HTTPFlow) -> None:
        self.upstreams.error(flow)

    def server_connected(self, data: Any) -> None:
        self.upstreams.server_connected(data)

    def server_disconnected(self, data: Any) -> None:
        self.upstreams.server_disconnected(data)

    def server_connect_error(self, data: Any) -> None:
        self.upstreams.server_connect_error(data)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.upstreams.responseheaders(flow)
        if self.debug_header and flow.response is not None:
            md = flow.metadata.get("condroute")
            flow.response.headers["X-Condroute"] = md["header"] if md else "passthrough"
