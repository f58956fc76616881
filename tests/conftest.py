from __future__ import annotations

import functools
import inspect
import textwrap
from pathlib import Path

import pytest

from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute.cli.demo import start_echo
from condroute.mitm import reload as mitm_reload
from condroute.mitm.addon import ConditionalRouting
from helpers import ADDON, Proxy


@pytest.fixture
def addon():
    """condroute's addon in mitmproxy's test harness (taddons, with the proxy server's options);
    ``addon.tctx`` is the context, for ``configure`` and ``cycle``."""
    a = ConditionalRouting()
    with taddons.context(Proxyserver(), a) as tctx:
        a.tctx = tctx   # type: ignore[attr-defined]
        yield a


@pytest.fixture
def clock(monkeypatch):
    """The rules watcher's monotonic clock, moved by the test instead of sleeping."""
    now = [1000.0]
    monkeypatch.setattr(mitm_reload, "_clock", lambda: now[0])
    return now


@pytest.fixture
def echo():
    """Factory: echo('name', host='127.0.0.1') -> base URL of a backend that answers with its name."""
    servers = []

    def make(name: str, host: str = "127.0.0.1") -> str:
        srv = start_echo(name, host)
        servers.append(srv)
        h = f"[{host}]" if ":" in host else host
        return f"http://{h}:{srv.server_address[1]}"

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture
def rules_file(tmp_path: Path):
    """Factory: rules_file(yaml_text, name='rules.yaml') -> path of a file with that (dedented) text."""

    def make(text: str, name: str = "rules.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return make


@pytest.fixture
def proxy():
    """Factory: proxy(rules_path, *extra_args) -> a started mitmdump running the addon."""
    started: list[Proxy] = []

    def make(rules: Path | str | None, *args: str, env: dict | None = None) -> Proxy:
        a = ["-s", str(ADDON)]
        if rules is not None:
            a += ["--set", f"condroute_rules={rules}"]
        p = Proxy([*a, "--set", "condroute_debug_header=true", *args], env=env)
        started.append(p)
        return p.start()

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def plain_mitmdump():
    """Factory: plain_mitmdump(*args) -> a started mitmdump WITHOUT the addon (e.g. an upstream proxy)."""
    started: list[Proxy] = []

    def make(*args: str) -> Proxy:
        p = Proxy(list(args))
        started.append(p)
        return p.start()

    yield make
    for p in started:
        p.stop()


# -- the quick subset: `./scripts/test -m "not slow"` -----------------------------------------------
# A test is `slow` when it starts real processes or servers (it uses one of these fixtures, or its
# body calls one of these) or when it is a hypothesis property test; a module may mark itself too.
# Marked here, once, so that a new test is classified by what it does rather than by someone
# remembering a decorator.
SLOW_FIXTURES = {"proxy", "plain_mitmdump", "echo"}
SLOW_CALLS = ("Proxy(", "run_mitmdump_until_exit(", "MitmdumpForker(", "subprocess.", "DumpMaster(",
              "start_echo(", "h2_request_via_proxy(", "mitmdump",
              " cr(")    # test_cli: the installed console script, as a process


@functools.lru_cache(maxsize=None)
def _is_slow(fn) -> bool:
    if getattr(fn, "is_hypothesis_test", False):
        return True
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return any(call in src for call in SLOW_CALLS)


def pytest_collection_modifyitems(items):
    for item in items:
        fn = getattr(item, "function", None)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or (fn is not None and _is_slow(fn)):
            item.add_marker(pytest.mark.slow)
