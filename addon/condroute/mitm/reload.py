"""The live rules and their file: versions, settling, loading in a worker thread (hot reload).

:class:`LiveRules` is the part of :class:`~condroute.mitm.addon.ConditionalRouting` that holds the
rules in force and watches their file; the addon installs the file named by its option at start-up
(synchronously: mitmdump must exit with status 1 on a bad file) and calls ``running``/``done``.
A changed file is loaded in a worker thread once it has settled and installed in one assignment
on the event loop; a version that fails is remembered and not loaded again until the file changes.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from ..errors import RulesError
from ..load.rulesfile import RulesBytes, not_regular, read_rules_file, stat_key
from ..rules import Rules, load_rules_bytes

log = logging.getLogger("condroute")

RELOAD_INTERVAL = 1.0

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
    # the files it imports, with the stat key each had when read (None: unreadable): a change in
    # any of them is a new version too
    imports: tuple[tuple[str, tuple[int, int, int, int] | None], ...] = ()

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.mtime_ns, self.ctime_ns, self.size, self.ino)

    @staticmethod
    def of(key: tuple[int, int, int, int], digest: bytes, racy: bool, imports: tuple = ()) -> "FileSignature":
        mtime_ns, ctime_ns, size, ino = key
        return FileSignature(mtime_ns, size, ino, digest, racy, ctime_ns, imports)

    def describe(self) -> str:
        """The version, for the log: content hash and modification time."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.mtime_ns / 1e9))
        return f"content {self.digest.hex()[:12] or 'unread'}, modified {when}.{self.mtime_ns // 1_000_000 % 1000:03d} UTC"


def file_signature(read: RulesBytes, read_at: float, imports: tuple = ()) -> FileSignature:
    """The signature of the bytes read (hashed and parsed from that same read). *Racy* when the
    file was modified less than RACY_SECONDS before it was read (git's "racily clean" rule): an
    edit right after may keep the same mtime, so that version is read and hashed once more later."""
    racy = abs(read_at - read.mtime_ns / 1e9) < RACY_SECONDS
    return FileSignature.of(read.key, read.digest, racy, imports)


def import_keys(imports: tuple) -> tuple:
    """The imported files of a signature as they are now (stat only)."""
    out = []
    for path, _ in imports:
        try:
            st = os.stat(path)
            out.append((path, stat_key(st) if not_regular(st.st_mode) is None else None))
        except OSError:
            out.append((path, None))
    return tuple(out)


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

    @property
    def imports(self) -> tuple:
        if self.rules is not None:
            return self.rules.imports
        return self.error.imported if self.error is not None else ()


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


class LiveRules:
    """The rules in force, the version of the file they came from, and the watcher of that file.
    A subclass (the addon) may override :meth:`_sync_hooks`, called whenever rules are installed."""

    def __init__(self) -> None:
        self.rules: Rules | None = None          # in force
        self.loaded: Rules | None = None         # as loaded from the file (self.rules may have switches applied)
        self.path: str = ""
        self.signature: FileSignature | None = None   # the version whose rules are live
        self.generation = 0              # bumped on every successful (re)load
        self.loaded_at: float | None = None   # time.time() of that (re)load
        self._seen: FileSignature | None = None       # the version last loaded, live or failed: not retried
        self._pending: tuple[tuple[int, int, int, int], float] | None = None   # a new version settling, first seen when
        self._loading: asyncio.Future | None = None   # the reload running in a worker thread
        self._file_problem: str | None = None         # logged once
        self.last_error: str | None = None
        self.reload_interval = RELOAD_INTERVAL
        self._watcher: asyncio.Task | None = None
        self._running = False

    def _sync_hooks(self) -> None:
        """Called when rules are installed (the addon registers the hooks the new rules need)."""

    def _adapt(self, rules: Rules) -> Rules:
        """The rules to put in force for rules just loaded (the addon applies its switches)."""
        return rules

    def _install(self, rules: Rules, path: str, sig: FileSignature, verb: str) -> None:
        self.loaded = rules               # as loaded, before _adapt
        live = self._adapt(rules)
        old, self.rules, self.path, self.signature = self.rules, live, path, sig   # one assignment: atomic swap
        if old is not None and old is not rules:
            retire(old)
            del old
        self._seen, self._pending = sig, None
        self._sync_hooks()
        self.generation += 1
        self.loaded_at = time.time()
        self.last_error = None
        log.info(f"condroute: {verb} {path}: {rules.summary()} [generation {self.generation}, {sig.describe()}]")
        for w in rules.warnings:
            log.warning(f"condroute: warning: {w}")

    def load_now(self, path: str, verb: str) -> None:
        """Load ``path`` in this thread and put it in force; RulesError (nothing changes) when it does
        not load. For start-up, a changed option and ``condroute.reload``; the watcher loads in a thread."""
        got = load_version(path)
        if got.error is not None:
            raise got.error
        assert got.rules is not None and got.read is not None
        self._install(got.rules, path, file_signature(got.read, got.read_at, got.imports), verb)

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
        imports = import_keys(seen.imports) if seen is not None and seen.imports else ()
        if seen is not None and seen.key == key and not seen.racy and imports == seen.imports:
            self._pending = None          # the version last loaded (live, or failed: not retried)
            return None
        now = _clock()
        if self._pending is None or self._pending[0] != (key, imports):
            self._pending = ((key, imports), now)   # first seen: let it settle (a writer may be half-way through)
            return None
        settle = max(self.reload_interval, SETTLE_SECONDS)
        newest = max([st.st_mtime_ns] + [k[0] for _, k in imports if k is not None])
        # "modified long ago" by mtime, or by how long this watcher has seen it unchanged, which can
        # only understate it (a file with an mtime in the future, from another machine's clock)
        if time.time() - newest / 1e9 < settle and now - self._pending[1] < settle:
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
        sig = (file_signature(read, got.read_at, got.imports) if read is not None
               else FileSignature.of(key, b"", False, got.imports))
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
