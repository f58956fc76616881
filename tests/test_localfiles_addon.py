"""Map Local in mitmproxy's test harness (taddons + tflow): the file is read in the `request` hook,
when the request is answered, not when it is decided; metadata, comment, debug header, log."""
from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute.localfiles import CACHE
from condroute.mitm.addon import ConditionalRouting
from test_addon import make_flow, messages

RULES = """
version: 1
routes:
  - name: me
    match: {path: /api/me}
    backends:
      - {name: mock, respond: {file: mock.json, headers: {X-Mock: "1"}}}
  - name: mocks
    match: {path: /mocks/*}
    backends:
      - {name: folder, respond: {dir: mocks/}}
  - name: down
    match: {path: /down}
    backends:
      - {name: maint, respond: {status: 503, file: page.html}}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "mocks").mkdir()
    (tmp_path / "mock.json").write_text('{"me": 1}')
    (tmp_path / "page.html").write_text("<p>down</p>")
    (tmp_path / "mocks" / "users.json").write_text("[1, 2]")
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(RULES))
    CACHE.clear()
    return tmp_path


@pytest.fixture
def addon(tree):
    a = ConditionalRouting()
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(tree / "rules.yaml"), condroute_debug_header=True)
        yield a


async def answer(addon, url: str, method: str = "GET", headers: dict | None = None):
    f = make_flow(url, method=method, headers=headers)
    addon.requestheaders(f)
    assert f.response is None           # decided, not yet answered
    addon.request(f)
    addon.responseheaders(f)            # (mitmproxy emulates it for an answer set in `request`)
    return f


async def test_file_read_at_answer_time_not_decision_time(addon, tree):
    f = make_flow("http://app.example/api/me")
    addon.requestheaders(f)
    (tree / "mock.json").write_text('{"me": 2}')      # changed between the decision and the answer
    addon.request(f)
    assert f.response.status_code == 200
    assert f.response.content == b'{"me": 2}'
    assert f.response.headers["Content-Type"] == "application/json"
    assert f.response.headers["X-Mock"] == "1"
    assert f.response.headers["ETag"].startswith('"')
    md = f.metadata["condroute"]
    assert md["file"] == "mock.json"
    assert md["answer"]["local"]["served"] == {"status": 200, "file": "mock.json"}
    json.dumps(md)                                    # plain data: a saved flow keeps it
    assert "from file mock.json" in f.comment


async def test_dir_rest_and_debug_header(addon):
    f = await answer(addon, "http://app.example/mocks/users.json")
    assert (f.response.status_code, f.response.content) == (200, b"[1, 2]")
    assert f.response.headers["X-Condroute"] == "mocks/folder -> respond 200 from file mocks/users.json"


async def test_missing_in_dir_is_404_and_said(addon, caplog):
    caplog.set_level(logging.INFO)
    f = await answer(addon, "http://app.example/mocks/nope.json")
    assert f.response.status_code == 404
    assert f.response.content == b"condroute: mocks/nope.json: there is no such file\n"
    assert f.response.headers["X-Condroute"].endswith("(answered 404: mocks/nope.json: there is no such file)")
    assert "answered 404: mocks/nope.json: there is no such file" in f.comment
    assert any("answered 404" in m for m in messages(caplog, logging.INFO))


async def test_missing_file_is_a_warning(addon, tree, caplog):
    (tree / "mock.json").unlink()
    f = await answer(addon, "http://app.example/api/me")
    assert f.response.status_code == 404
    assert any("mock.json: there is no such file (respond.file)" in m for m in messages(caplog, logging.WARNING))


async def test_revalidation_304_then_200_after_change(addon, tree):
    first = await answer(addon, "http://app.example/api/me")
    etag = first.response.headers["ETag"]
    again = await answer(addon, "http://app.example/api/me", headers={"If-None-Match": etag})
    assert again.response.status_code == 304
    assert again.response.content == b""
    assert "content-length" not in again.response.headers
    assert again.response.headers["ETag"] == etag
    assert "304 not modified" in again.comment
    (tree / "mock.json").write_text('{"me": "new"}')
    changed = await answer(addon, "http://app.example/api/me", headers={"If-None-Match": etag})
    assert (changed.response.status_code, changed.response.content) == (200, b'{"me": "new"}')


async def test_head_has_file_length(addon):
    f = await answer(addon, "http://app.example/api/me", method="HEAD")
    assert f.response.status_code == 200
    assert f.response.raw_content == b""
    assert f.response.headers["content-length"] == str(len('{"me": 1}'))


async def test_status_applies(addon):
    f = await answer(addon, "http://app.example/down")
    assert (f.response.status_code, f.response.content) == (503, b"<p>down</p>")
    assert f.response.headers["Content-Type"] == "text/html; charset=utf-8"


async def test_traversal_reaching_the_core_is_refused(addon):
    # what mitmproxy and the engine let through: "%00" and a drive letter are not refused before
    for path, status in (("/mocks/users.json%00.txt", 400), ("/mocks/C:/x", 400), ("/mocks/.hidden", 404)):
        f = await answer(addon, "http://app.example" + path)
        assert f.response.status_code == status, path
    # what the engine refuses before (a route could own it either way)
    f = await answer(addon, "http://app.example/mocks/%2e%2e/rules.yaml")
    assert f.response.status_code == 400 and b"version" not in f.response.content


async def test_internal_error_answers_500_never_forwards(addon, monkeypatch):
    from condroute import localfiles

    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(localfiles, "serve", boom)
    f = await answer(addon, "http://app.example/api/me")
    assert f.response is not None and f.response.status_code == 500


async def test_missing_error_page_is_said_though_its_status_is_planned(tmp_path, caplog):
    """A respond.file with status 404 (an error page) whose file is missing is answered 404 too:
    the planned status, but not the planned answer. The warning, the comment and the debug header
    say so (nothing was said: only a status other than the planned one was)."""
    (tmp_path / "gone.html").write_text("<p>gone</p>")
    (tmp_path / "rules.yaml").write_text(textwrap.dedent("""
        version: 1
        routes:
          - {name: gone, match: {path: /gone}, backends: [{name: page, respond: {status: 404, file: gone.html}}]}
        """))
    CACHE.clear()
    a = ConditionalRouting()
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(tmp_path / "rules.yaml"), condroute_debug_header=True)
        served = await answer(a, "http://app.example/gone")
        assert (served.response.status_code, served.response.content) == (404, b"<p>gone</p>")
        assert served.response.headers["X-Condroute"] == "gone/page -> respond 404 from file gone.html"
        (tmp_path / "gone.html").unlink()
        f = await answer(a, "http://app.example/gone")
    assert f.response.status_code == 404
    assert b"there is no such file" in f.response.content
    assert f.response.headers["X-Condroute"].endswith("(answered 404: gone.html: there is no such file (respond.file))")
    assert "answered 404: gone.html: there is no such file" in f.comment
    assert any("gone.html: there is no such file (respond.file)" in m for m in messages(caplog, logging.WARNING))
    # the saved flow's metadata names no file that was not served
    assert f.metadata["condroute"]["answer"]["local"]["served"] == {"status": 404, "file": None}
    assert served.metadata["condroute"]["answer"]["local"]["served"] == {"status": 404, "file": "gone.html"}
