"""scripts/run (condroute.cli.run, condroute.cli.demo --rules) and the install stamp of scripts/_venv.sh.

The slow tests run ./scripts/run itself, with VENV pointing at the venv running these tests (its
install stamp serves, so nothing is installed), on ports checked free."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from condroute.cli import demo, run
from helpers import Proxy, ROOT, free_port

RUN = ROOT / "scripts" / "run"
VENV = Path(sys.executable).parent.parent




@contextlib.contextmanager
def busy_port():
    """A port this process listens on (and accepts nothing), for as long as the block runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_until(cond, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


class RunScript(Proxy):
    """./scripts/run as a subprocess, its output read (and waited for) as helpers.Proxy reads mitmdump's."""

    def __init__(self, args: list[str]):
        env = {**os.environ, "VENV": str(VENV), "PYTHON": sys.executable}
        self.cmd = [str(RUN), *args]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, cwd=str(ROOT))
        self.lines, self._cond, self.port = [], threading.Condition(), None
        threading.Thread(target=self._read, daemon=True).start()


def run_to_exit(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "VENV": str(VENV), "PYTHON": sys.executable}
    return subprocess.run([str(RUN), *args], capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT))


DEMO_RULES = """\
version: 1
upstreams:
  variant-a: http://127.0.0.1:{a}
  variant-b: http://127.0.0.1:{b}
  elsewhere: http://192.0.2.10:8080
routes:
  - name: shop
    match: {{host: shop.example}}
    backends:
      - name: b-by-header
        when: {{header: {{X-Ab-Test: B}}}}
        upstream: variant-b
      - name: a
        fallback: true
        upstream: variant-a
  - name: api-to-local-build
    match: {{host: api.dev.example}}
    backends:
      - name: local
        upstream: http://localhost:{c}
        set_headers: {{X-Forwarded-Proto: https}}
"""


def curl(cmd: list[str], *extra: str) -> dict:
    out = subprocess.run([*cmd, "-s", "--max-time", "10", *extra], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, (cmd, out.stderr)
    return json.loads(out.stdout)


# -- a busy port: one sentence, exit 1, nothing started --------------------------------------------
@pytest.mark.slow
def test_a_busy_proxy_port_is_one_sentence_and_nothing_starts(rules_file):
    a, b, c = free_port(), free_port(), free_port()
    rules = rules_file(DEMO_RULES.format(a=a, b=b, c=c))
    with busy_port() as port:
        r = run_to_exit([str(rules), "--demo", "--port", str(port)])
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"port {port} on 127.0.0.1, where the proxy would listen, is already in use by pid {os.getpid()}" in lines[0]
    assert "--port N" in lines[0]
    assert "listening" not in r.stdout    # neither a stand-in nor mitmdump
    assert all(refused(p) for p in (a, b, c))


@pytest.mark.slow
def test_a_busy_stand_in_port_names_the_upstream_and_nothing_starts(rules_file):
    b, c, proxy_port = free_port(), free_port(), free_port()
    with busy_port() as a:
        rules = rules_file(DEMO_RULES.format(a=a, b=b, c=c))
        r = run_to_exit([str(rules), "--demo", "--port", str(proxy_port)])
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"scripts/run: 127.0.0.1:{a}, where the stand-in for upstream variant-a of {rules} "
                               f"would listen, is already in use by pid {os.getpid()} (")
    assert lines[0].endswith("): stop that, or leave out --demo if it is the backend you want")
    assert "listening" not in r.stdout
    assert refused(b) and refused(c) and refused(proxy_port)


@pytest.mark.slow
def test_a_rules_file_that_does_not_load_is_located_and_nothing_starts(rules_file):
    rules = rules_file("version: 1\nroutes:\n  - name: x\n    backends: [{name: y, upstream: nowhere}]\n")
    r = run_to_exit([str(rules), "--demo", "--port", str(free_port())])
    assert r.returncode == 1
    assert f"{rules}:4:" in r.stderr and "unknown upstream 'nowhere'" in r.stderr
    assert "Traceback" not in r.stderr and "listening" not in r.stdout


# -- --demo: stand-ins for every upstream on this machine, the printed curls work --------------------
@pytest.mark.slow
def test_demo_stands_in_for_every_local_upstream_and_the_printed_curls_work(rules_file, tmp_path):
    a, b, c = free_port(), free_port(), free_port()
    rules = rules_file(DEMO_RULES.format(a=a, b=b, c=c))
    p = RunScript([str(rules), "--demo", "--port", "0", "--", "--set", f"confdir={tmp_path}"])
    try:
        p.wait_for(r"try:.*# -> backend a ", timeout=30)
        out = p.output()
        assert "upstream elsewhere (http://192.0.2.10:8080) is not on this machine: not stood in" in out
        for name, port in (("variant-a", a), ("variant-b", b), (f"http://localhost:{c}", c)):
            assert f"stand-in for upstream {name} listening on http://127.0.0.1:{port}" in out
        m = p.wait_for(r"the proxy listens on http://127\.0\.0\.1:(\d+), routing by ")
        port = int(m.group(1))
        assert port != 0
        tries = [line for line in p.lines if line.startswith("try:  ")]
        assert len(tries) == 2, out
        for line, backend, upstream in zip(tries, ("b-by-header", "a"), ("variant-b", "variant-a")):
            cmd, _, label = line[len("try:  "):].partition("    # -> ")
            assert label == f"backend {backend} (upstream {upstream})"
            args = shlex.split(cmd)
            assert args[:3] == ["curl", "-x", f"http://127.0.0.1:{port}"]
            assert curl(args)["backend"] == upstream
        assert "X-Ab-Test: B" in tries[0] and "X-Ab-Test" not in tries[1]
        # the curl of rules/local-build.yaml's comment: HTTPS, intercepted, sent to the local build
        got = curl(["curl", "-x", f"http://127.0.0.1:{port}", "--cacert", str(tmp_path / "mitmproxy-ca-cert.pem"),
                    "https://api.dev.example/users/7"])
        assert got["backend"] == f"http://localhost:{c}"
        assert got["path"] == "/users/7" and got["headers"]["X-Forwarded-Proto"] == "https"
    finally:
        p.stop()
    assert p.proc.returncode == 0, p.output()
    wait_until(lambda: all(refused(x) for x in (a, b, c, port)), "the proxy and the stand-ins have stopped")


@pytest.mark.slow
def test_without_demo_a_local_upstream_with_no_listener_is_pointed_out(rules_file):
    a, b, c = free_port(), free_port(), free_port()
    rules = rules_file(DEMO_RULES.format(a=a, b=b, c=c))
    p = RunScript([str(rules), "--port", "0"])
    try:
        p.wait_for("the proxy listens on", timeout=30)
        out = p.output()
        assert (f"nothing listens on 127.0.0.1:{a} (upstream variant-a): requests sent there will answer 502; "
                "--demo starts a stand-in") in out
        assert "stand-in for" not in out and refused(a)
    finally:
        p.stop()


# -- the command line, the plan and the hint (no processes) ----------------------------------------
def test_todays_forms_and_the_new_options_parse():
    assert run.parse_args([]) == run.Options()
    assert run.parse_args(["r.yaml"]) == run.Options(rules="r.yaml")
    assert run.parse_args(["r.yaml", "--", "--set", "x=y"]) == run.Options(rules="r.yaml", mitm_args=["--set", "x=y"])
    assert run.parse_args(["--", "-v"]) == run.Options(mitm_args=["-v"])
    assert run.parse_args(["r.yaml", "--set", "x=y"]) == run.Options(rules="r.yaml", mitm_args=["--set", "x=y"])
    assert run.parse_args(["--demo", "r.yaml", "--port", "9000"]) == run.Options(rules="r.yaml", demo=True, port=9000)
    assert run.parse_args(["--no-demo", "--port=0"]) == run.Options(demo=False, port=0)
    assert run.parse_args(["--help"]) is None
    for bad, said in ((["--port", "x"], "--port takes a port number"), (["--port"], "--port needs a port number"),
                      (["--port", "70000"], "0 to 65535"), (["r.yaml", "--", "-p", "1"], "give the proxy's port as --port N"),
                      (["--", "--listen-port=1"], "--listen-port: scripts/run checks it")):
        with pytest.raises(run.UsageError, match=said):
            run.parse_args(bad)


def test_the_plan_stands_in_for_plain_http_upstreams_on_this_machine(rules_file):
    rules = rules_file("""\
        version: 1
        upstreams:
          a: http://127.0.0.1:9101
          also-a: http://127.0.0.1:9101/base
          b: http://localhost:9102
          tls: https://127.0.0.1:9443
          remote: http://api.example.com
        routes:
          - name: r
            backends:
              - {name: s, split: {by: "cookie:u", weights: {a: 1, b: 1}}}
              - {name: inline, when: {header: {x: "1"}}, upstream: "http://[::1]:9103"}
              - {name: f, fallback: true, upstream: remote}
        """)
    _, m = demo.load_both(str(rules))
    stand_ins, notes = demo.plan_stand_ins(m)
    assert stand_ins == [demo.StandIn(("a", "also-a"), "127.0.0.1", 9101), demo.StandIn(("b",), "127.0.0.1", 9102),
                         demo.StandIn(("http://[::1]:9103",), "::1", 9103)]
    assert stand_ins[2].url == "http://[::1]:9103"
    assert notes == ["upstream tls (https://127.0.0.1:9443) is HTTPS: not stood in (a stand-in answers plain HTTP)",
                     "upstream remote (http://api.example.com) is not on this machine: not stood in"]


def hints_for(rules_file, text: str, mode: str | None = None) -> list[str]:
    rules, m = demo.load_both(str(rules_file(text)))
    return run.hints(rules, m, "127.0.0.1", 8123, mode)


def test_the_hint_meets_the_first_conditional_backend_and_the_fallback(rules_file):
    assert hints_for(rules_file, (ROOT / "rules" / "example.yaml").read_text()) == [
        "try:  curl -x http://127.0.0.1:8123 -H 'X-Ab-Test: B' http://shop.example/"
        "    # -> backend variant-b-by-header (upstream variant-b)",
        "try:  curl -x http://127.0.0.1:8123 http://shop.example/    # -> backend variant-a (upstream variant-a)"]


def test_the_hint_writes_cookies_queries_methods_and_paths(rules_file):
    text = """\
        version: 1
        routes:
          - name: r
            match: {host: "*.shop.example", methods: [POST], path: "/cart/{id}/*", header: {X-Team: {in: [red]}}}
            backends:
              - name: beta
                when: {all: [{cookie: {beta: "1"}}, {query: {v: {prefix: "2"}}}]}
                upstream: http://127.0.0.1:9001
              - {name: rest, upstream: http://127.0.0.1:9002}
        """
    assert hints_for(rules_file, text) == [
        "try:  curl -x http://127.0.0.1:8123 -X POST -H 'X-Team: red' --cookie beta=1 "
        "'http://www.shop.example/cart/1?v=2'    # -> backend beta (upstream http://127.0.0.1:9001)",
        "try:  curl -x http://127.0.0.1:8123 -X POST -H 'X-Team: red' http://www.shop.example/cart/1"
        "    # -> backend rest (upstream http://127.0.0.1:9002)"]


def test_a_condition_curl_cannot_meet_gets_only_the_plain_hint_and_reverse_mode_goes_direct(rules_file):
    text = """\
        version: 1
        routes:
          - name: r
            backends:
              - {name: office, when: {client_ip: 10.0.0.0/8}, upstream: http://127.0.0.1:9001}
              - {name: other, fallback: true, respond: {status: 403, body: no}}
        """
    assert hints_for(rules_file, text) == [
        "try:  curl -x http://127.0.0.1:8123 http://app.example/    # -> backend other, which answers 403 itself"]
    assert hints_for(rules_file, text, "reverse:http://127.0.0.1:9001") == [
        "try:  curl http://127.0.0.1:8123/    # -> backend other, which answers 403 itself"]
    assert hints_for(rules_file, text, "transparent") == []


def test_a_busy_port_names_who_holds_it():
    with busy_port() as port:
        why = demo.port_problem("127.0.0.1", port)
    assert why is not None and why.startswith(f"is already in use by pid {os.getpid()} (")
    assert demo.port_problem("127.0.0.1", port) is None


# -- the install stamp: more extras serve a request for fewer ----------------------------------------
def venv_sh(call: str) -> str:
    r = subprocess.run(["bash", "-c", f"set -euo pipefail; . scripts/_venv.sh; {call}"], capture_output=True,
                       text=True, cwd=str(ROOT), timeout=20)
    return f"{r.returncode}:{r.stdout.strip()}"


@pytest.mark.slow
@pytest.mark.parametrize("have,want,serves,union", [
    (".", ".", True, "."),
    (".[test]", ".", True, ".[test]"),              # scripts/test then scripts/run: no reinstall
    (".", ".[test]", False, ".[test]"),             # scripts/run then scripts/test: the extras are missing
    (".[test]", ".[test]", True, ".[test]"),
    (".[Test,fast_cel]", ".[fast-cel]", True, ".[fast-cel,test]"),   # names compared as pip normalises them
    (".[test]", ".[fast-cel]", False, ".[fast-cel,test]"),          # install both: the next switch is free
    ("", ".", False, "."),                          # nothing installed yet
    ("/elsewhere[test]", ".", False, "."),
])
def test_an_install_with_more_extras_serves_a_request_for_fewer(have, want, serves, union):
    assert venv_sh(f"spec_satisfies '{have}' '{want}' && echo yes || echo no") == f"0:{'yes' if serves else 'no'}"
    assert venv_sh(f"spec_union '{have}' '{want}'") == f"0:{union}"


@pytest.mark.slow
def test_ensure_venv_installs_only_when_the_stamp_does_not_serve(tmp_path):
    """ensure_venv against a stand-in venv whose python records what pip was asked to install."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/pip-calls\n')
    py.chmod(0o755)
    calls = tmp_path / "pip-calls"

    def ensure(spec: str) -> list[str]:
        before = calls.read_text().splitlines() if calls.exists() else []
        r = venv_sh(f"ensure_venv python3 '{venv}' '{spec}'")
        assert r.startswith("0:"), r
        after = calls.read_text().splitlines() if calls.exists() else []
        return [c.rsplit(" ", 1)[1] for c in after[len(before):]]

    assert ensure(".") == ["."]
    assert ensure(".") == []
    assert ensure(".[test]") == [".[test]"]
    assert ensure(".") == []                       # the churn this stopped: run, test, run, test...
    assert ensure(".[test]") == []
    stamp = venv / ".condroute-installed"
    have = stamp.read_text().split()[0]
    assert have == ".[test]"
    stamp.write_text(f"{have} 0 0\n")              # as if pyproject.toml had changed since
    assert ensure(".") == [".[test]"]              # reinstalled, keeping the test extras
    assert ensure(".") == []


# -- Chromium for the browser tests: installed by scripts/test when missing and apt-get can ----------
FAKE_APT = """#!/bin/sh
echo "$*" >> {calls}
case "$1" in
  update) exit 0 ;;
  install) n=$(grep -c '^install' {calls}); if [ "$n" -ge {works_at} ]; then touch {browser}; chmod +x {browser}; exit 0; fi
           echo "E: Unable to locate package chromium" >&2; exit 100 ;;
esac
"""


def ensure_chromium(tmp_path: Path, uid: int, works_at: int | None) -> tuple[str, list[str], Path]:
    """ensure_chromium for a browser path in tmp_path, with PATH holding only a fake `id`, a fake
    `apt-get` (none when works_at is None; else its install works from that call on) and the tools the
    function uses. Returns (output, apt-get calls, browser path)."""
    bin_, browser, calls = tmp_path / "bin", tmp_path / "chromium", tmp_path / "apt-calls"
    bin_.mkdir()
    for tool in ("mktemp", "grep", "tail", "rm", "touch", "chmod"):
        (bin_ / tool).symlink_to(shutil.which(tool))
    fakes = {"id": f"#!/bin/sh\necho {uid}\n"}
    if works_at is not None:
        fakes["apt-get"] = FAKE_APT.format(calls=calls, works_at=works_at, browser=browser)
    for name, text in fakes.items():
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    r = subprocess.run(["/bin/bash", "-c", f"set -euo pipefail; . scripts/_venv.sh; ensure_chromium {browser}"],
                       capture_output=True, text=True, cwd=str(ROOT), env={"PATH": str(bin_)}, timeout=20)
    assert r.returncode == 0 and r.stderr == "", r
    return r.stdout, calls.read_text().splitlines() if calls.exists() else [], browser


INSTALLING = "installing Debian's chromium package for the browser tests (once; about a minute)"
INSTALL = "install -y -q --no-install-recommends chromium"


@pytest.mark.slow
def test_chromium_is_installed_once_when_missing_and_apt_get_can(tmp_path):
    out, calls, browser = ensure_chromium(tmp_path, 0, works_at=1)
    assert out.splitlines() == [INSTALLING] and calls == [INSTALL] and os.access(browser, os.X_OK)
    again = subprocess.run(["/bin/bash", "-c", f". scripts/_venv.sh; ensure_chromium {browser}"],
                           capture_output=True, text=True, cwd=str(ROOT), timeout=20)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")     # there: quiet, no apt-get


@pytest.mark.slow
def test_stale_package_lists_are_updated_before_a_second_try(tmp_path):
    out, calls, browser = ensure_chromium(tmp_path, 0, works_at=2)
    assert out.splitlines() == [INSTALLING] and calls == [INSTALL, "update -q", INSTALL] and browser.exists()


@pytest.mark.slow
@pytest.mark.parametrize("uid,works_at,said", [
    (1000, 1, "no {b} and not root, so not installing it: the browser tests will be skipped "
              "(sudo apt-get install chromium)"),
    (0, None, "no {b} and no apt-get to install it with: the browser tests will be skipped"),
    (0, 99, "installing chromium failed (E: Unable to locate package chromium): the browser tests will be skipped"),
])
def test_when_chromium_cannot_be_installed_one_line_says_so_and_the_set_up_goes_on(tmp_path, uid, works_at, said):
    out, calls, browser = ensure_chromium(tmp_path, uid, works_at)
    lines = out.splitlines()
    assert lines[-1] == said.format(b=browser)
    assert lines[:-1] == ([INSTALLING] if works_at == 99 else [])
    assert calls == ([INSTALL, "update -q", INSTALL] if works_at == 99 else [])
    assert not browser.exists()


def test_the_demo_command_says_what_is_wrong_in_one_line(rules_file, capsys):
    assert demo.main(["--rules"]) == 2
    assert demo.main(["--rules", "a.yaml", "b.yaml"]) == 2
    assert demo.main(["variant-a=127.0.0.1"]) == 2
    remote = rules_file("version: 1\nroutes: [{name: r, backends: [{name: b, upstream: 'http://api.example.com'}]}]\n")
    assert demo.main([f"--rules={remote}"]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "demo: --rules takes one rules file, as in --rules rules/local-build.yaml"] * 2 + [
        "demo: 'variant-a=127.0.0.1' is not NAME=HOST:PORT (as in variant-a=127.0.0.1:9001)",
        f"demo: {remote} has no plain-HTTP upstream on this machine to stand in for"]
    assert out == "upstream http://api.example.com is not on this machine: not stood in\n"
