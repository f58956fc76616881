from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from condroute.demo import start_echo
from helpers import ADDON, Proxy


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
