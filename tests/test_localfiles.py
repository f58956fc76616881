"""Map Local (respond.file / respond.dir): the pure core (condroute.localfiles) and the loader's
checks (load/toolbox.read_local_answer). Real files in tmp_path; no sleeps (mtimes set with os.utime)."""
from __future__ import annotations

import os
import textwrap
from email.utils import formatdate
from pathlib import Path

import pytest

from condroute import localfiles
from condroute.errors import RulesError
from condroute.localfiles import CACHE, check_rest, content_type, serve, shown_name
from condroute.model import Respond
from condroute.rules import load_rules


@pytest.fixture(autouse=True)
def _fresh_cache():
    CACHE.clear()
    CACHE.reads = 0
    yield
    CACHE.clear()


def _file(root: Path, rel: str, status: int = 200, headers=()) -> Respond:
    r = os.path.realpath(root)
    return Respond(status, "", tuple(headers), file=os.path.join(r, rel), root=r)


def _dir(root: Path, rel: str, status: int = 200, headers=()) -> Respond:
    r = os.path.realpath(root)
    return Respond(status, "", tuple(headers), dir=os.path.join(r, rel), root=r)


def hdr(a, name):
    vals = [v for k, v in a.headers if k.lower() == name.lower()]
    return vals[0] if len(vals) == 1 else (vals or None)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """rules folder: mock.json, page.html, mocks/ (users.json, a b.json, sub/index.html, sub/x.txt,
    .env, .git/config, noindex/), and a secret outside the folder."""
    root = tmp_path / "rules"
    (root / "mocks" / "sub").mkdir(parents=True)
    (root / "mocks" / "noindex").mkdir()
    (root / "mocks" / ".git").mkdir()
    (root / "mock.json").write_text('{"ok": true}\n')
    (root / "page.html").write_text("<p>hi</p>")
    (root / "mocks" / "users.json").write_text('[{"id": 1}]')
    (root / "mocks" / "a b.json").write_text('{"space": 1}')
    (root / "mocks" / "é.txt").write_text("accent")
    (root / "mocks" / "sub" / "index.html").write_text("<h1>sub</h1>")
    (root / "mocks" / "sub" / "x.txt").write_text("x")
    (root / "mocks" / ".env").write_text("SECRET=1")
    (root / "mocks" / ".git" / "config").write_text("[core]")
    (tmp_path / "secret.txt").write_text("top secret")
    return root


# -- respond.file ---------------------------------------------------------------------------------
def test_file_served_with_type_etag_last_modified(tree):
    os.utime(tree / "mock.json", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    a = serve(_file(tree, "mock.json"), "GET", None, now=1_800_000_000)
    assert (a.status, a.body, a.name, a.note) == (200, b'{"ok": true}\n', "mock.json", "")
    assert hdr(a, "Content-Type") == "application/json"
    assert hdr(a, "Cache-Control") == "no-cache"
    assert hdr(a, "Last-Modified") == formatdate(1_700_000_000, usegmt=True)
    assert hdr(a, "ETag").startswith('"') and len(hdr(a, "ETag")) == 34
    assert a.content_length == len(a.body)


def test_status_and_headers_apply_content_type_overridden(tree):
    a = serve(_file(tree, "page.html", 503, [("Content-Type", "text/x-mine"), ("Retry-After", "5"),
                                            ("Cache-Control", "max-age=60")]), "GET")
    assert a.status == 503
    assert hdr(a, "Content-Type") == "text/x-mine"
    assert hdr(a, "Retry-After") == "5"
    assert hdr(a, "Cache-Control") == "max-age=60"
    assert hdr(a, "ETag") is None           # validators only on 2xx answers
    b = serve(_file(tree, "page.html"), "GET")
    assert hdr(b, "Content-Type") == "text/html; charset=utf-8"


def test_head_has_length_and_no_body(tree):
    a = serve(_file(tree, "mock.json"), "HEAD")
    assert (a.status, a.body, a.content_length) == (200, b"", len('{"ok": true}\n'))
    assert hdr(a, "ETag") == hdr(serve(_file(tree, "mock.json"), "GET"), "ETag")


def test_reread_when_changed_cached_when_not(tree):
    r = _file(tree, "mock.json")
    p = tree / "mock.json"
    os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    first = serve(r)
    assert serve(r).body == first.body and CACHE.reads == 1      # unchanged: from memory
    p.write_text('{"ok": false}\n')                              # same size, new content
    os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))   # ... and the same mtime
    second = serve(r)
    assert second.body == b'{"ok": false}\n'      # the ctime (and the write) changed: read again
    assert hdr(second, "ETag") != hdr(first, "ETag")
    assert CACHE.reads == 2
    os.utime(p, ns=(1_000_000_000_500_000_000, 1_000_000_000_500_000_000))   # a touch: read, same ETag
    third = serve(r)
    assert CACHE.reads == 3 and hdr(third, "ETag") == hdr(second, "ETag")


def test_editor_rename_is_seen(tree):
    r = _file(tree, "mock.json")
    serve(r)
    tmp = tree / "mock.json.swp"
    tmp.write_text('{"v": 2}')
    os.replace(tmp, tree / "mock.json")      # how editors save: a new inode
    assert serve(r).body == b'{"v": 2}'


def test_missing_at_serve_time_is_404_with_sentence(tree):
    r = _file(tree, "mock.json")
    (tree / "mock.json").unlink()
    a = serve(r)
    assert a.status == 404 and a.error
    assert a.body == b"condroute: mock.json: there is no such file (respond.file)\n"
    assert hdr(a, "Content-Type") == "text/plain; charset=utf-8"


def test_file_swapped_for_symlink_outside_after_load_is_refused(tree):
    r = _file(tree, "mock.json")
    assert serve(r).status == 200
    (tree / "mock.json").unlink()
    (tree / "mock.json").symlink_to(tree.parent / "secret.txt")
    a = serve(r)
    assert a.status == 403 and b"top secret" not in a.body
    assert b"outside the rules file's folder" in a.body


def test_file_symlink_inside_followed_and_repointed(tree):
    (tree / "v1.json").write_text("1")
    (tree / "v2.json").write_text("2")
    (tree / "cur.json").symlink_to("v1.json")
    r = _file(tree, "cur.json")
    assert serve(r).body == b"1"
    (tree / "cur.json").unlink()
    (tree / "cur.json").symlink_to("v2.json")
    assert serve(r).body == b"2"


def test_not_a_regular_file(tree):
    os.mkfifo(tree / "pipe.json")
    a = serve(_file(tree, "pipe.json"))
    assert a.status == 404 and b"not a regular file" in a.body


def test_too_large_is_500_and_not_read(tree, monkeypatch):
    monkeypatch.setattr(localfiles, "MAX_FILE", 10)
    a = serve(_file(tree, "mock.json"))
    assert a.status == 500 and a.error and "serves files up to" in a.note
    assert CACHE.reads == 0


def test_unreadable_is_403(tree):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    p = tree / "mock.json"
    p.chmod(0)
    try:
        a = serve(_file(tree, "mock.json"))
    finally:
        p.chmod(0o644)
    assert a.status == 403 and b"permission denied" in a.body


# -- conditional requests ---------------------------------------------------------------------------
def test_if_none_match_304_then_changed_200(tree):
    r = _file(tree, "mock.json")
    a = serve(r)
    etag = hdr(a, "ETag")
    nm = serve(r, "GET", if_none_match=[etag])
    assert (nm.status, nm.body, nm.content_length, nm.note) == (304, b"", None, "not modified")
    assert hdr(nm, "ETag") == etag and hdr(nm, "Last-Modified") == hdr(a, "Last-Modified")
    assert hdr(nm, "Content-Type") is None and hdr(nm, "Cache-Control") == "no-cache"
    assert serve(r, "HEAD", if_none_match=[etag]).status == 304
    assert serve(r, "GET", if_none_match=[f'"x", W/{etag}']).status == 304     # weak comparison, a list
    assert serve(r, "GET", if_none_match=['"x"', etag]).status == 304          # two header fields
    assert serve(r, "GET", if_none_match=["*"]).status == 304
    assert serve(r, "GET", if_none_match=['"other"']).status == 200
    (tree / "mock.json").write_text("changed")
    c = serve(r, "GET", if_none_match=[etag])
    assert c.status == 200 and c.body == b"changed" and hdr(c, "ETag") != etag


def test_if_none_match_on_other_methods_is_412(tree):
    r = _file(tree, "mock.json")
    etag = hdr(serve(r), "ETag")
    a = serve(r, "POST", if_none_match=[etag])
    assert a.status == 412
    assert serve(r, "POST", if_none_match=['"nope"']).status == 200


def test_if_modified_since(tree):
    p = tree / "mock.json"
    os.utime(p, (1_700_000_000, 1_700_000_000))
    r = _file(tree, "mock.json")
    same = formatdate(1_700_000_000, usegmt=True)
    assert serve(r, "GET", if_modified_since=[same]).status == 304
    assert serve(r, "GET", if_modified_since=[formatdate(1_700_000_100, usegmt=True)]).status == 304
    assert serve(r, "GET", if_modified_since=[formatdate(1_699_999_999, usegmt=True)]).status == 200
    assert serve(r, "GET", if_modified_since=["garbage"]).status == 200
    assert serve(r, "GET", if_modified_since=[same, same]).status == 200          # more than one: ignored
    assert serve(r, "POST", if_modified_since=[same]).status == 200               # not GET/HEAD: ignored
    # RFC 9110 §13.2.2: If-None-Match wins; a non-matching one means 200 even with a fresh date
    assert serve(r, "GET", if_none_match=['"old"'], if_modified_since=[same]).status == 200
    # an mtime in the future is sent as now
    os.utime(p, (2_000_000_000, 2_000_000_000))
    a = serve(r, "GET", now=1_900_000_000)
    assert hdr(a, "Last-Modified") == formatdate(1_900_000_000, usegmt=True)


def test_conditional_ignored_for_non_2xx(tree):
    r = _file(tree, "mock.json", 404)
    assert serve(r, "GET", if_none_match=["*"]).status == 404


# -- respond.dir -------------------------------------------------------------------------------------
def test_dir_serves_rest(tree):
    r = _dir(tree, "mocks")
    a = serve(r, "GET", "users.json")
    assert (a.status, a.body, a.name) == (200, b'[{"id": 1}]', "mocks/users.json")
    assert hdr(a, "Content-Type") == "application/json"
    assert serve(r, "GET", "a%20b.json").body == b'{"space": 1}'              # percent-decoded once
    assert serve(r, "GET", "%C3%A9.txt").body == b"accent"
    assert serve(r, "GET", "é.txt").body == b"accent"
    assert serve(r, "GET", "sub/x.txt").body == b"x"


def test_dir_index(tree):
    r = _dir(tree, "mocks")
    a = serve(r, "GET", "sub/")
    assert (a.status, a.body, a.name) == (200, b"<h1>sub</h1>", "mocks/sub/index.html")
    assert serve(r, "GET", "sub").body == b"<h1>sub</h1>"
    none = serve(r, "GET", "")
    assert none.status == 404 and none.name == "mocks/index.html" and not none.error
    assert serve(r, "GET", None).status == 404
    (tree / "mocks" / "index.html").write_text("root index")
    assert serve(r, "GET", None).body == b"root index"
    assert serve(r, "GET", "noindex/").status == 404


def test_dir_missing_is_404(tree):
    a = serve(_dir(tree, "mocks"), "GET", "nope.json")
    assert a.status == 404 and a.body == b"condroute: mocks/nope.json: there is no such file\n"
    assert not a.error


@pytest.mark.parametrize("rest,status", [
    ("..", 400), ("../secret.txt", 400), ("sub/../../secret.txt", 400), ("./users.json", 400),
    ("sub/./x.txt", 400), ("%2e%2e/secret.txt", 400), ("%2E%2E/secret.txt", 400), (".%2e/secret.txt", 400),
    ("%2e/users.json", 400), ("sub%2f..%2f..%2fsecret.txt", 400), ("..%2Fsecret.txt", 400),
    ("..%5csecret.txt", 400), ("..%5Csecret.txt", 400), ("..\\secret.txt", 400), ("sub\\x.txt", 400),
    ("users.json\x00.png", 400), ("users.json%00.png", 400), ("/etc/passwd", 400), ("//etc/passwd", 400),
    ("sub//x.txt", 400), ("C:/Windows/win.ini", 400), ("c:secret", 400), ("sub/C:x", 400),
    (".env", 404), (".git/config", 404), ("%2eenv", 400), ("sub/.hidden", 404), (".", 400),
    ("a" * 5000, 404),
])
def test_dir_refuses_traversal(tree, rest, status):
    a = serve(_dir(tree, "mocks"), "GET", rest)
    assert a.status == status, a.note
    assert b"top secret" not in a.body and b"SECRET" not in a.body and b"[core]" not in a.body
    names, st, why = check_rest(rest)
    assert names is None and st == status and why


def test_double_encoding_is_decoded_once(tree):
    (tree / "mocks" / "%2e%2e").mkdir()       # a folder literally named "%2e%2e"
    (tree / "mocks" / "%2e%2e" / "f.txt").write_text("literal")
    a = serve(_dir(tree, "mocks"), "GET", "%252e%252e/f.txt")
    assert (a.status, a.body) == (200, b"literal")


def test_dir_symlink_outside_refused_inside_followed(tree):
    m = tree / "mocks"
    (m / "out.txt").symlink_to(tree.parent / "secret.txt")
    (m / "outdir").symlink_to(tree.parent)
    (m / "in.json").symlink_to("users.json")
    (m / "up.json").symlink_to(tree / "mock.json")       # inside the rules folder, outside mocks/
    r = _dir(tree, "mocks")
    for rest in ("out.txt", "outdir/secret.txt", "up.json"):
        a = serve(r, "GET", rest)
        assert a.status == 403 and b"top secret" not in a.body and b"ok" not in a.body, rest
        assert b"leads outside mocks/" in a.body
    assert serve(r, "GET", "in.json").body == b'[{"id": 1}]'


def test_dir_swapped_for_symlink_after_load(tree):
    r = _dir(tree, "mocks")
    assert serve(r, "GET", "users.json").status == 200
    os.rename(tree / "mocks", tree / "mocks-old")
    (tree / "mocks").symlink_to(tree.parent)
    a = serve(r, "GET", "secret.txt")
    assert a.status == 403 and a.error and b"top secret" not in a.body
    (tree / "mocks").unlink()
    a = serve(r, "GET", "users.json")
    assert a.status == 404 and a.error


def test_opened_path_checked_through_proc(tree, monkeypatch):
    """The race between the realpath check and the open: the descriptor's own path is checked."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc")
    real_open = os.open

    def swapping_open(path, flags, *a, **k):
        if str(path).endswith("users.json"):
            return real_open(str(tree.parent / "secret.txt"), flags, *a, **k)
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(localfiles.os, "open", swapping_open)
    a = serve(_dir(tree, "mocks"), "GET", "users.json")
    assert a.status == 403 and b"top secret" not in a.body


def test_head_on_refusals_has_no_body(tree):
    a = serve(_dir(tree, "mocks"), "HEAD", "../x")
    assert a.status == 400 and a.body == b"" and a.content_length > 0


def test_shown_name_is_pure(tree):
    assert shown_name(_file(tree, "mock.json"), None) == "mock.json"
    assert shown_name(_dir(tree, "mocks"), "a/b.json") == "mocks/a/b.json"
    assert shown_name(_dir(tree, "mocks"), None) == "mocks/"


def test_cache_is_bounded(tree):
    c = localfiles._Cache(max_bytes=10, max_file=6)
    c.put("a", (1,), b"12345", "e")
    c.put("b", (1,), b"12345", "e")
    assert c.get("a", (1,)) is not None and c.bytes == 10
    c.put("c", (1,), b"123", "e")           # "b" is the least recently used now
    assert c.get("b", (1,)) is None and c.get("a", (1,)) is not None and c.bytes == 8
    c.put("big", (1,), b"1234567", "e")     # over max_file: not kept
    assert c.get("big", (1,)) is None and c.bytes <= 10
    assert c.get("a", (2,)) is None         # another stat key: stale


@pytest.mark.parametrize("name,ctype", [
    ("a.json", "application/json"), ("a.html", "text/html; charset=utf-8"), ("a.txt", "text/plain; charset=utf-8"),
    ("a.js", "text/javascript; charset=utf-8"), ("a.css", "text/css; charset=utf-8"), ("a.png", "image/png"),
    ("a.svg", "image/svg+xml; charset=utf-8"), ("a", "application/octet-stream"), ("a.JSON", "application/json"),
    ("a.json.gz", "application/gzip"), ("a.xml", "text/xml; charset=utf-8"), ("a.woff2", "font/woff2"),
])
def test_content_type(name, ctype):
    assert content_type(name) == ctype


# -- loading (toolbox.read_local_answer) ------------------------------------------------------------
def _load(root: Path, text: str):
    p = root / "rules.yaml"
    p.write_text(textwrap.dedent(text))
    return load_rules(str(p))


def _problems(root: Path, text: str) -> str:
    with pytest.raises(RulesError) as e:
        _load(root, text)
    return "\n".join(str(p) for p in e.value.problems)


def test_load_file_and_dir(tree):
    rules = _load(tree, """
        version: 1
        routes:
          - {name: one, match: {path: /one}, backends: [{name: f, respond: {file: ./sub/../mock.json}}]}
          - {name: many, match: {path: /m/*}, backends: [{name: d, respond: {dir: mocks/}}]}
        """)
    f = rules.routes[0].backends[0].respond
    d = rules.routes[1].backends[0].respond
    root = os.path.realpath(tree)
    assert (f.file, f.root, f.status) == (os.path.join(root, "mock.json"), root, 200)
    assert (d.dir, d.root) == (os.path.join(root, "mocks"), root)


@pytest.mark.parametrize("respond,route_path,message", [
    ("{file: ../secret.txt}", "/x", "is outside the rules file's folder"),
    ("{file: /etc/passwd}", "/x", "must be relative to the rules file's folder"),
    ("{file: nope.json}", "/x", "there is no such file"),
    ("{file: mocks}", "/x", "is a folder: write dir"),
    ("{dir: mock.json}", "/x/*", "there is no such folder"),
    ("{dir: mocks}", "/x", "the route's match.path must end in /*"),
    ("{dir: ..}", "/x/*", "is outside the rules file's folder"),
    ("{file: mock.json, dir: mocks}", "/x/*", "use file or dir, not both"),
    ("{file: mock.json, body: x}", "/x", "leave out body"),
    ("{file: mock.json, status: 304}", "/x", "respond.status 304 cannot carry the file"),
    ("{file: mock.json, status: 204}", "/x", "respond.status 204 cannot carry the file"),
    ("{file: mock.json, headers: {ETag: '\"x\"'}}", "/x", "ETag is set from the file's content"),
    ("{file: mock.json, headers: {Last-Modified: x}}", "/x", "Last-Modified is set from"),
    ("{file: 3}", "/x", "respond.file must be a path"),
    ("{file: link.json}", "/x", "outside the rules file's folder (", ),
])
def test_load_refusals_are_located(tree, respond, route_path, message):
    (tree / "link.json").symlink_to(tree.parent / "secret.txt")
    out = _problems(tree, f"""
        version: 1
        routes:
          - name: r
            match: {{path: "{route_path}"}}
            backends:
              - {{name: b, respond: {respond}}}
        """)
    assert message in out
    assert out.startswith(str(tree / "rules.yaml") + ":7:")


def test_names_in_notes_are_printable(tree):
    a = serve(_dir(tree, "mocks"), "GET", "a\nb\x1b.json")
    assert a.status == 404 and "\n" not in a.note and "\x1b" not in a.note
    assert a.note == "mocks/a\\nb\\x1b.json: there is no such file" and a.name == "mocks/a\\nb\\x1b.json"
    b = serve(_dir(tree, "mocks"), "GET", "x\x00")
    assert b.note == "mocks/x\\x00: the name has a NUL"
    assert shown_name(_dir(tree, "mocks"), "\r\n") == "mocks/\\r\\n"


# -- explain, render and condroute check -----------------------------------------------------------
RULES = """
version: 1
routes:
  - {name: one, match: {path: /api/me}, backends: [{name: f, respond: {file: mock.json}}]}
  - {name: many, match: {path: /m/*}, backends: [{name: d, respond: {dir: mocks}}]}
"""


def test_render_names_the_file(tree):
    from condroute import render
    from condroute.engine import decide
    from condroute.explain import build_request
    rules = _load(tree, RULES)
    d = decide(rules, build_request("http://a.example/m/users.json", "GET", [], [], None, None), explain=True)
    assert render.header_value(d) == "many/d -> respond 200 from file mocks/users.json"
    assert render.summary(d).endswith("-> many/d -> respond 200 from file mocks/users.json")
    assert "condroute answered 200 from file mocks/users.json" in render.comment(d)
    assert render.to_dict(d)["file"] == "mocks/users.json"
    lines = render.render_decision(rules, d, d._req)
    assert any(line.startswith("respond") and "200 from file mocks/users.json (the file {rest} names in mocks/)"
               in line for line in lines)
    d = decide(rules, build_request("http://a.example/api/me", "GET", [], [], None, None))
    assert render.header_value(d) == "one/f -> respond 200 from file mock.json"


def test_check_cases_read_the_file(tree):
    from condroute.cli.cases import load_cases, run_case
    rules = _load(tree, RULES)
    cases = tree / "cases.yaml"
    cases.write_text(textwrap.dedent("""
        - request: {url: "http://a.example/m/users.json"}
          expect: {status: 200, file: mocks/users.json}
        - request: {url: "http://a.example/m/nope.json"}
          expect: {status: 404, file: null}
        - request: {url: "http://a.example/api/me", headers: {If-None-Match: "*"}}
          expect: {status: 304, file: mock.json}
        - request: {url: "http://a.example/m/nope.json"}
          expect: {status: 200, file: mocks/nope.json}
        - request: {url: "http://a.example/m/%2e%2e/x"}
          expect: {status: 400}
        """))
    got = [run_case(rules, c) for c in load_cases(str(cases))]
    assert got[:3] == [[], [], []]
    assert got[3] == ["status: wanted 200, got 404", 'file: wanted "mocks/nope.json", got null']
    assert got[4] == []


def test_check_names_the_file_of_an_error_page(tree):
    """A respond.file with an error status (a custom 404 page) is answered with that file: check's
    ``file`` names it (it was null for any status from 400, as if the file were missing)."""
    from condroute.cli.cases import load_cases, run_case
    rules = _load(tree, """
        version: 1
        routes:
          - {name: gone, match: {path: /gone}, backends: [{name: p, respond: {status: 404, file: page.html}}]}
          - {name: many, match: {path: /m/*}, backends: [{name: d, respond: {dir: mocks, status: 410}}]}
        """)
    cases = tree / "cases.yaml"
    cases.write_text(textwrap.dedent("""
        - request: {url: "http://a.example/gone"}
          expect: {status: 404, file: page.html}
        - request: {url: "http://a.example/m/users.json"}
          expect: {status: 410, file: mocks/users.json}
        - request: {url: "http://a.example/m/nope.json"}
          expect: {status: 404, file: null}
        """))
    assert [run_case(rules, c) for c in load_cases(str(cases))] == [[], [], []]


def test_lint_big_file_and_empty_dir(tree, monkeypatch):
    from condroute.cli.lint import lint
    (tree / "empty" / ".git").mkdir(parents=True)
    (tree / "empty" / ".git" / "x").write_text("x")
    (tree / "empty" / ".env").write_text("x")
    rules = _load(tree, """
        version: 1
        routes:
          - {name: one, match: {path: /api/me}, backends: [{name: f, respond: {file: mock.json}}]}
          - {name: e, match: {path: /e/*}, backends: [{name: d, respond: {dir: empty}}]}
          - {name: m, match: {path: /m/*}, backends: [{name: d, respond: {dir: mocks}}]}
        """)
    assert [str(p).split(": ", 1)[1] for p in lint(rules)] == [
        "backend 'd': respond.dir empty/ has no file condroute would serve (hidden files and folders, whose names "
        "start with '.', are not served): every request gets 404"]
    assert str(lint(rules)[0]).startswith(f"{tree / 'rules.yaml'}:5:")
    monkeypatch.setattr(localfiles, "MAX_FILE", 5)
    big = [str(p) for p in lint(rules) if "MiB" in str(p)]
    assert len(big) == 1 and "respond.file mock.json is 0.0 MiB: condroute serves files up to 0 MiB" in big[0]
