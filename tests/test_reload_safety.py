"""Rules files that must never hurt (issue 11, items 6-9): only regular files are read, never more
than 32 MiB, the bytes are read once (hashed and parsed from the same read); a reload loads in a
worker thread while traffic flows; a half-written file is not installed before it settles; a
version that fails is remembered and not loaded again until the file changes."""
from __future__ import annotations

import errno
import gc
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from condroute.mitm import reload as mitm
from condroute.load import rulesfile
from condroute.errors import RulesError
from condroute.rules import _no_gc, load_rules
from helpers import ADDON, MITMDUMP, ROOT, run_mitmdump_until_exit

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")


def in_thread(fn, timeout: float = 10.0):
    """Run fn() in a thread; fail (instead of hanging the suite) if it has not returned in time."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still blocked after {timeout} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def located(e: RulesError, path: Path | str) -> str:
    msg = str(e)
    assert msg.startswith(f"{path}:1:1: "), msg
    assert "Traceback" not in msg
    return msg[len(f"{path}:1:1: "):]


# -- only regular files, read once ----------------------------------------------------------------
@needs_fifo
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "rules.yaml"
    os.mkfifo(fifo)
    with pytest.raises(RulesError) as ei:
        in_thread(lambda: load_rules(str(fifo)))     # open() of a FIFO used to block until a writer came
    assert located(ei.value, fifo).startswith("is a named pipe (FIFO), not a regular file")


@needs_fifo
def test_a_fifo_swapped_in_after_the_stat_does_not_block(tmp_path, monkeypatch):
    """The type is checked again on the open descriptor; the open itself cannot block."""
    fifo, regular = tmp_path / "fifo", tmp_path / "regular.yaml"
    os.mkfifo(fifo)
    regular.write_text("version: 1\nroutes: []\n")
    real_stat = os.stat
    monkeypatch.setattr(rulesfile.os, "stat", lambda p, *a, **k: real_stat(regular if str(p) == str(fifo) else p))
    with pytest.raises(RulesError) as ei:
        in_thread(lambda: rulesfile.read_rules_file(str(fifo)))
    assert located(ei.value, fifo).startswith("is a named pipe (FIFO)")


def test_directory_device_and_unreadable_file_are_reported_as_such(tmp_path, monkeypatch):
    with pytest.raises(RulesError) as ei:
        load_rules(str(tmp_path))
    assert located(ei.value, tmp_path) == "is a directory, not a regular file"
    if os.path.exists("/dev/zero"):            # an endless read, if it were read
        with pytest.raises(RulesError) as ei:
            in_thread(lambda: load_rules("/dev/zero"))
        assert located(ei.value, "/dev/zero") == "is a character device, not a regular file"
    f = tmp_path / "secret.yaml"
    f.write_text("version: 1\nroutes: []\n")

    def denied(*a, **k):   # chmod 000 does not stop root, who runs these tests in CI
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(rulesfile.os, "open", denied)
    with pytest.raises(RulesError) as ei:
        load_rules(str(f))
    assert located(ei.value, f) == "cannot read the file: Permission denied"


def test_a_file_over_32_mib_is_refused_before_it_is_read(tmp_path, monkeypatch):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:
        fh.truncate(rulesfile.MAX_BYTES + 1)     # sparse: no disk used
    reads = []
    real_read = os.read
    monkeypatch.setattr(rulesfile.os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(RulesError) as ei:
        load_rules(str(big))
    assert located(ei.value, big) == "the file is too large: 33,554,433 bytes, the limit is 33,554,432 bytes (32 MiB)"
    assert reads == []


def test_a_file_growing_past_the_cap_while_read_is_refused(tmp_path, monkeypatch):
    f = tmp_path / "r.yaml"
    f.write_text("version: 1\nroutes: []\n")
    monkeypatch.setattr(rulesfile, "MAX_BYTES", 10)    # the size at fstat was under the cap
    monkeypatch.setattr(rulesfile, "check_stat", lambda path, st: None)
    with pytest.raises(RulesError) as ei:
        load_rules(str(f))
    assert located(ei.value, f).startswith("the file is too large: more than 10 bytes")


def test_the_digest_and_the_rules_come_from_one_read(tmp_path, monkeypatch):
    f = tmp_path / "r.yaml"
    f.write_text("version: 1\nroutes:\n  - {name: one, backends: [{name: x, upstream: 'http://127.0.0.1:1'}]}\n")
    opens = []
    real_open = os.open
    monkeypatch.setattr(rulesfile.os, "open", lambda p, *a: opens.append(p) or real_open(p, *a))
    got = mitm.load_version(str(f))
    assert opens == [str(f)]
    assert got.error is None and got.rules.routes[0].name == "one"
    assert got.read.digest == rulesfile.digest(f.read_bytes())
    assert got.read.key == rulesfile.stat_key(os.stat(f)) and got.read.changed is False


# -- the addon: settling, remembered failures, worker thread ---------------------------------------
GOOD = """\
version: 1
routes:
  - {name: blocked, match: {host: blocked.example}, backends: [{name: deny, respond: {status: 403}}]}
  - {name: shop, match: {host: shop.example}, backends: [{name: a, upstream: "http://127.0.0.1:9001"}]}
  - {name: rest, backends: [{name: b, upstream: "http://127.0.0.1:%d"}]}
"""


def flow(host: str) -> http.HTTPFlow:
    req = http.Request.make("GET", f"http://{host}/x")
    req.headers["Host"], req.authority = host, ""
    return tflow.tflow(req=req)


def set_mtime(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "condroute" and r.levelno == logging.ERROR]


async def test_a_half_written_file_is_not_installed_while_its_writer_pauses(addon, tmp_path, clock, caplog):
    """Issue 11, item 8: a save that truncates, writes two of three routes and pauses 1.5 s (at the
    default 1 s interval) must not get its two routes installed: the blocked host stays blocked."""
    f = tmp_path / "rules.yaml"
    f.write_text(GOOD % 9002)
    set_mtime(f, 3600)
    addon.tctx.configure(addon, condroute_rules=str(f))
    assert addon.reload_interval == 1.0
    gen = addon.generation
    full = (GOOD % 9003).encode()
    cut = full.index(b"  - {name: shop")             # the blocked route is the one not yet written
    f.write_bytes(b"version: 1\nroutes:\n" + full[cut:])
    set_mtime(f, 0.1)
    for _ in range(2):                                # the watcher's checks during the 1.5 s pause
        assert addon.check_reload() is False
        await addon.tctx.cycle(addon, fl := flow("blocked.example"))
        assert fl.response is not None and fl.response.status_code == 403
        clock[0] += 1.0
        set_mtime(f, 0.1 + clock[0] - 1000)
    assert addon.generation == gen
    with open(f, "wb") as fh:                        # the writer goes on: the whole file
        fh.write(full)
    assert addon.check_reload() is False              # a new version: settling again
    clock[0] += 2.0
    assert addon.check_reload() is True               # seen unchanged for 2 s: installed, whole
    assert addon.generation == gen + 1
    await addon.tctx.cycle(addon, fl := flow("blocked.example"))
    assert fl.response is not None and fl.response.status_code == 403
    f2 = flow("elsewhere.example")
    await addon.tctx.cycle(addon, f2)
    assert f2.request.port == 9003
    assert not errors(caplog)


async def test_a_settled_version_is_installed_with_its_version_logged(addon, tmp_path, clock, caplog):
    caplog.set_level(logging.INFO)
    f = tmp_path / "rules.yaml"
    f.write_text(GOOD % 9002)
    addon.tctx.configure(addon, condroute_rules=str(f))
    f.write_text(GOOD % 9004)
    set_mtime(f, 3600)
    assert addon.check_reload() is False              # one check is not enough, however old the file
    assert addon.check_reload() is True
    digest = rulesfile.digest(f.read_bytes()).hex()[:12]
    line = [r.getMessage() for r in caplog.records if "reloaded" in r.getMessage()][-1]
    assert re.search(rf"\[generation {addon.generation}, content {digest}, modified \d{{4}}-\d\d-\d\d [\d:.]+ UTC\]$", line), line


async def test_a_file_with_an_mtime_in_the_future_settles_by_the_watchers_clock(addon, tmp_path, clock):
    f = tmp_path / "rules.yaml"
    f.write_text(GOOD % 9002)
    addon.tctx.configure(addon, condroute_rules=str(f))
    f.write_text(GOOD % 9005)
    set_mtime(f, -3600)                               # another machine's clock, an hour ahead
    assert addon.check_reload() is False
    clock[0] += 1.0
    assert addon.check_reload() is False
    clock[0] += 1.0
    assert addon.check_reload() is True


@pytest.mark.parametrize("exc, message", [
    (MemoryError(), "out of memory while loading the file"),
    (RecursionError("maximum recursion depth exceeded"), "the file is nested too deeply"),
    (ValueError("boom"), "the file does not load: ValueError: boom"),
])
async def test_a_loader_exception_is_located_logged_and_not_retried(addon, tmp_path, clock, caplog, monkeypatch,
                                                                     exc, message):
    """Issue 11, item 9: an exception in the loader at reload is a located error, the watcher goes
    on, and that version is not loaded again (an alias bomb used to cost a MemoryError per tick)."""
    f = tmp_path / "rules.yaml"
    f.write_text(GOOD % 9002)
    addon.tctx.configure(addon, condroute_rules=str(f))
    good, gen = addon.rules, addon.generation
    calls = []

    def explode(raw, path):
        calls.append(path)
        raise exc
    monkeypatch.setattr(mitm, "load_rules_bytes", explode)
    f.write_text(GOOD % 9006)
    set_mtime(f, 3600)
    caplog.clear()
    assert addon.check_reload() is False
    assert addon.check_reload() is False              # loaded once, failed
    for _ in range(5):                                # the next ticks: nothing is loaded again
        clock[0] += 1
        assert addon.check_reload() is False
    assert len(calls) == 1
    assert addon.rules is good and addon.generation == gen
    errs = errors(caplog)
    assert len(errs) == 1 and errs[0].endswith(f"\n{f}:1:1: {message}"), errs
    assert "keeping the last good rules" in errs[0] and "not loading it again until the file changes" in errs[0]
    set_mtime(f, 1800)                                # the file changes (a touch): loaded once more
    assert addon.check_reload() is False
    assert addon.check_reload() is False
    assert len(calls) == 2


async def test_an_unreadable_or_replaced_file_is_reported_as_such_not_as_gone(addon, tmp_path, caplog, monkeypatch):
    f = tmp_path / "rules.yaml"
    f.write_text(GOOD % 9002)
    addon.tctx.configure(addon, condroute_rules=str(f))
    good = addon.rules
    caplog.clear()

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    f.write_text(GOOD % 9007)
    set_mtime(f, 3600)
    with monkeypatch.context() as m:
        m.setattr(rulesfile.os, "open", denied)
        assert addon.check_reload() is False
        assert addon.check_reload() is False
        assert addon.check_reload() is False
    errs = errors(caplog)
    assert len(errs) == 1 and errs[0].endswith(f"{f}:1:1: cannot read the file: Permission denied"), errs
    assert "gone" not in errs[0]
    os.chmod(f, 0o644)                                # made readable again (ctime moves): loaded
    assert addon.check_reload() is False
    assert addon.check_reload() is True
    f.unlink()
    f.mkdir()
    caplog.clear()
    assert addon.check_reload() is False
    assert addon.check_reload() is False
    assert errors(caplog) == [f"condroute: {f}:1:1: is a directory, not a regular file; keeping the last good rules"]
    assert addon.rules is not good and addon.rules.routes[2].backends[0].upstream.port == 9007


@needs_fifo
async def test_a_fifo_put_in_place_of_the_rules_file_does_not_block_the_watcher(addon, tmp_path, caplog):
    f = tmp_path / "rules.yaml"
    f.write_text(GOOD % 9002)
    addon.tctx.configure(addon, condroute_rules=str(f))
    f.unlink()
    os.mkfifo(f)
    caplog.clear()
    assert in_thread(addon.check_reload, 10) is False
    assert in_thread(addon.check_reload, 10) is False
    assert errors(caplog) == [f"condroute: {f}:1:1: " + rulesfile.not_regular(os.stat(f).st_mode)
                              + "; keeping the last good rules"]


async def test_the_watcher_loads_in_a_worker_thread_and_installs_on_the_loop(addon, tmp_path, monkeypatch):
    f = tmp_path / "rules.yaml"
    f.write_text(GOOD % 9002)
    addon.tctx.configure(addon, condroute_rules=str(f), condroute_reload_interval="0.01")
    monkeypatch.setattr(mitm, "SETTLE_SECONDS", 0.0)
    threads = []
    real = mitm.load_rules_bytes
    monkeypatch.setattr(mitm, "load_rules_bytes", lambda raw, p: threads.append(threading.current_thread()) or real(raw, p))
    gen = addon.generation
    addon.running()
    try:
        f.write_text(GOOD % 9008)
        set_mtime(f, 3600)
        deadline = time.monotonic() + 20
        while addon.generation == gen:
            assert time.monotonic() < deadline, "not reloaded"
            await __import__("asyncio").sleep(0.01)
    finally:
        addon.done()
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert threads[0].name == "condroute-reload"
    assert addon.rules.routes[2].backends[0].upstream.port == 9008


def test_concurrent_loads_keep_the_gc_off_until_the_last_one_ends():
    assert gc.isenabled()
    a, b = _no_gc(), _no_gc()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert not gc.isenabled()       # b is still loading
    b.__exit__(None, None, None)
    assert gc.isenabled()


# -- end to end ------------------------------------------------------------------------------------
@needs_fifo
def test_mitmdump_with_a_fifo_or_process_substitution_as_rules_exits_1_at_once(tmp_path):
    fifo = tmp_path / "rules.yaml"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    proc = run_mitmdump_until_exit(["-s", str(ADDON), "--set", f"condroute_rules={fifo}"], timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"{fifo}:1:1: is a named pipe (FIFO), not a regular file" in out
    assert "Traceback" not in out
    # <(cat rules.yaml): a pipe given as /dev/fd/N
    rules = tmp_path / "real.yaml"
    rules.write_text(GOOD % 9002)
    cmd = (f"exec {MITMDUMP} --listen-host 127.0.0.1 --listen-port 0 -s {ADDON} "
           f"--set condroute_rules=<(cat {rules})")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert re.search(r"/dev/fd/\d+:1:1: is a named pipe \(FIFO\), not a regular file", out), out
    assert "the file is empty" not in out and "Traceback" not in out
    assert time.monotonic() - t0 < 60


@needs_fifo
def test_mitmdump_keeps_serving_and_stops_on_sigterm_when_a_fifo_replaces_the_rules(echo, rules_file, proxy):
    up = echo("svc-a")
    path = rules_file(f"version: 1\nroutes:\n  - {{name: r, backends: [{{name: only, upstream: '{up}'}}]}}\n")
    p = proxy(path, "--set", "condroute_reload_interval=0.05")
    mark = p.mark()
    path.unlink()
    os.mkfifo(path)
    p.wait_for(re.escape(f"{path}:1:1: is a named pipe (FIFO)"), start=mark)
    with httpx.Client(proxy=p.url, timeout=10) as c:
        assert c.get("http://svc.example/").json()["backend"] == "svc-a"
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(15) is not None


def test_requests_are_served_while_a_large_file_reloads(echo, tmp_path, proxy):
    """Item 6: the load runs in a worker thread; requests complete between the start of the load
    and the swap (they used to wait for the whole load: ~4 s for 5 MB)."""
    up = echo("svc-a")
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import gen_rules
    path = tmp_path / "big.yaml"
    path.write_text(gen_rules(2, upstream=up))
    p = proxy(path, "--set", "condroute_log=off", "--set", "flow_detail=0")
    done: list[float] = []
    stop = threading.Event()

    def client():
        with httpx.Client(proxy=p.url, timeout=30) as c:
            while not stop.is_set():
                assert c.get("http://svc.example/svc1/7").status_code == 200
                done.append(time.monotonic())

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        mark = p.mark()
        path.write_text(gen_rules(12000, upstream=up))   # ~4.4 MB
        set_mtime(path, 3600)
        p.wait_for(r"loading it in the background", 60, mark)
        t_start = time.monotonic()
        p.wait_for(r"condroute: reloaded .*12000 routes", 120, mark)
        t_end = time.monotonic()
    finally:
        stop.set()
        t.join(30)
    during = [x for x in done if t_start < x < t_end]
    assert t_end - t_start > 0.5, "the load was too quick to show anything"
    assert len(during) >= 10, (len(during), t_end - t_start)
