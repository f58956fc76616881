"""``scripts/run``: the proxy with a rules file, and stand-ins for its upstreams, in one command.

    python -m condroute.cli.run [RULES] [--demo | --no-demo] [--port N] [-- MITMDUMP ARGS]

RULES defaults to the shipped ``rules/example.yaml``; ``--demo`` (the default for that file only)
starts a stand-in (``condroute.cli.demo``) for every plain-HTTP upstream on this machine. Before
anything starts, the rules file is loaded (its problems, located, exit 1) and every port is checked
(a busy one: one sentence, exit 1). Then mitmdump runs in the foreground with the addon, listening on
127.0.0.1; once it listens, the address it really listens on is printed with ``curl`` commands
built from the rules file (a route's host and path, and what its first conditional backend needs),
each labelled with the backend the rules select for it. Signals go to mitmdump; its exit status is
this command's.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from .. import model
from ..engine import decide
from ..explain import build_request
from ..node import Y
from .demo import StandIn, load_or_report, plan_stand_ins, port_problem, start_stand_ins, stand_in_problems

ROOT = Path(__file__).resolve().parents[3]
ADDON = ROOT / "addon" / "conditional_routing.py"
EXAMPLE = ROOT / "rules" / "example.yaml"
DEFAULT_PORT = 8080
# mitmdump's line once a server listens: "HTTP(S) proxy listening at 127.0.0.1:8080."
LISTEN_RE = re.compile(r"listening at (\*|[\d.]+|\[[0-9a-fA-F:.]+\]):(\d+)")
USAGE = """usage: ./scripts/run [RULES] [--demo | --no-demo] [--port N] [-- MITMDUMP ARGS]
  RULES        a rules file (default: rules/example.yaml)
  --demo       start a stand-in backend (it answers with its name) for every upstream of RULES
               on this machine (default for rules/example.yaml; --no-demo turns it off)
  --port N     the proxy's port on 127.0.0.1 (default 8080; 0: any free one)
  MITMDUMP ARGS go to mitmdump as they are, e.g. -- --set condroute_log=verbose"""


class UsageError(Exception):
    """The command line is wrong: one sentence, exit status 2."""


@dataclass
class Options:
    rules: str | None = None
    demo: bool | None = None
    port: int = DEFAULT_PORT
    mitm_args: list[str] = field(default_factory=list)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise UsageError(f"--port takes a port number (0 to 65535), not {text!r}")
    return int(text)


def parse_args(argv: list[str]) -> Options | None:
    """The options, or None for --help. Anything from ``--`` on, or from the first argument that
    is not one of these options, goes to mitmdump (as in ``./scripts/run RULES --set x=y``)."""
    o = Options()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            o.mitm_args = argv[i + 1:]
            break
        if a in ("-h", "--help"):
            return None
        if a in ("--demo", "--no-demo"):
            o.demo = a == "--demo"
        elif a == "--port":
            if i + 1 >= len(argv):
                raise UsageError("--port needs a port number, as in --port 8081")
            o.port = _port(argv[i + 1])
            i += 1
        elif a.startswith("--port="):
            o.port = _port(a.partition("=")[2])
        elif a.startswith("-") or o.rules is not None:
            o.mitm_args = argv[i:]
            break
        else:
            o.rules = a
        i += 1
    for j, a in enumerate(o.mitm_args):
        if a in ("-p", "--listen-port") or a.startswith("--listen-port="):
            raise UsageError("give the proxy's port as --port N (before --), not as mitmdump's "
                             f"{a.partition('=')[0]}: scripts/run checks it and prints it")
        if a == "--mode" and j + 1 == len(o.mitm_args):
            raise UsageError("mitmdump's --mode needs a value, as in --mode reverse:http://127.0.0.1:9001")
    return o


def _mitm_option(args: list[str], long: str, short: str | None = None) -> str | None:
    """The first value given to a mitmdump option (``--mode X``, ``--mode=X``, ``-m X``)."""
    for j, a in enumerate(args):
        if a in (long, short) and j + 1 < len(args):
            return args[j + 1]
        if a.startswith(long + "="):
            return a.partition("=")[2]
    return None


# -- the hint: curl commands built from the rules file --------------------------------------------
def _value(matcher: Y) -> str | None:
    """A value that a value matcher accepts, when one is easy to write."""
    v = matcher.v
    if isinstance(v, list):
        return _value(v[0]) if v else None
    if isinstance(v, dict):
        for key in ("equals", "in", "prefix", "suffix", "contains"):
            if key in v:
                return _value(v[key])
        if "present" in v and v["present"].v is True:
            return "1"
        return None
    if v is None:
        return None
    return matcher.text if matcher.text is not None else str(v)


def _needs(cond: Y, bits: dict[str, list[tuple[str, str]]]) -> bool:
    """Add to ``bits`` the headers, cookies and query parameters a request needs for ``cond`` to
    hold; False when the condition asks for more than those (a JWT, a client address, CEL...)."""
    if not isinstance(cond.v, dict):
        return False
    ok = True
    for key, node in cond.v.items():
        if key in bits and isinstance(node.v, dict):
            for name, matcher in node.v.items():
                val = _value(matcher)
                if val is None:
                    ok = False
                else:
                    bits[key].append((name, val))
        elif key == "all" and isinstance(node.v, list):
            ok = all([_needs(c, bits) for c in node.v]) and ok
        elif key == "any" and isinstance(node.v, list) and node.v:
            ok = _needs(node.v[0], bits) and ok
        else:
            ok = False
    return ok


def _path(route: model.Route) -> str:
    p = route.path
    if p is None:
        return "/"
    if p.matcher is not None:
        return p.literal_prefix or "/"
    text = p.text[:-2] if p.has_rest else p.text
    return re.sub(r"\{[^/{}]*\}", "1", text) or "/"


def _host(route: model.Route) -> str:
    for h in route.hosts:
        if not h.startswith("*"):
            return h
    for h in route.hosts:
        if h.startswith("*."):
            return "www" + h[1:]
    return "app.example"     # any host will do (.example never resolves: only the route's upstream answers)


def _outcome(d) -> str:
    if d.outcome == "routed":
        return f"backend {d.backend} (upstream {d.upstream})"
    if d.outcome == "respond":
        return f"backend {d.backend}, which answers {d.status} itself"
    if d.outcome == "passthrough":
        return "no route: passed through to the host itself"
    if d.outcome == "no_match":
        return f"route {d.route}: no backend holds, {d.status}"
    return d.outcome


def hints(rules, m: model.Rules, host: str, port: int, mode: str | None) -> list[str]:
    """``curl`` commands for the first route: one that meets its first conditional backend's
    condition (when that can be written with headers, cookies and query parameters) and a plain
    one; each with the backend the rules select for it (decided by the engine, as the proxy will)."""
    proxy = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    mode = mode or "regular"
    if mode.startswith("reverse:"):
        target = urlsplit(mode.partition(":")[2].split("@")[0])
        via, origin = [], f"{target.scheme}://{target.netloc}"
    elif mode == "regular" or mode.startswith("upstream:"):
        via, origin = ["-x", f"http://{proxy}"], None
    elif mode == "socks5":
        via, origin = ["-x", f"socks5h://{proxy}"], None
    else:
        return []
    route = next((r for r in m.routes if r.backends), None)
    if route is None:
        return []
    wanted = []
    first = next((b for b in route.backends if b.when is not None and not b.fallback), None)
    if first is not None and not isinstance(first.when, model.Never):
        when = first.when.inner if isinstance(first.when, model.VisibleHeaders) else first.when
        wanted.append(when)
    wanted.append(None)
    methods = sorted(route.methods or ())
    method = "GET" if not methods or "GET" in methods else methods[0]
    out, seen = [], set()
    for when in wanted:
        bits: dict[str, list[tuple[str, str]]] = {"header": [], "cookie": [], "query": []}
        if route.conditions is not None and not _needs(route.conditions, bits):
            return out
        if when is not None and not _needs(when, bits):
            continue
        path = _path(route)
        if bits["query"]:
            path += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in bits["query"])
        cookies = [f"{k}={v}" for k, v in bits["cookie"]]
        try:
            req = build_request((origin or f"http://{_host(route)}") + path, method, bits["header"], cookies)
        except ValueError:
            continue
        d = decide(rules, req)
        label = _outcome(d)
        if label in seen:
            continue
        seen.add(label)
        cmd = ["curl", *via]
        if method != "GET":
            cmd += ["-X", method]
        for k, v in bits["header"]:
            cmd += ["-H", f"{k}: {v}"]
        if cookies:
            cmd += ["--cookie", "; ".join(cookies)]
        cmd.append((f"http://{proxy}" if origin else f"http://{_host(route)}") + path)
        out.append(f"try:  {shlex.join(cmd)}    # -> {label}")
    return out


# -- start-up -------------------------------------------------------------------------------------
def _nothing_listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


def _shown(path: str) -> str:
    """A path as the user would type it from here."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def _fail(lines: list[str], status: int) -> int:
    for line in lines:
        print(f"scripts/run: {line}", file=sys.stderr)
    return status


def _port_problems(o: Options, rules_file: str, stand_ins: list[StandIn]) -> list[str]:
    """One sentence for each port that the proxy or a stand-in could not listen on."""
    listen_host = _mitm_option(o.mitm_args, "--listen-host")
    if listen_host is None:
        listen_host = "127.0.0.1"
    problems = []
    if o.port:
        why = port_problem(listen_host or "0.0.0.0", o.port)
        if why:
            problems.append(f"port {o.port} on {listen_host or 'every address'}, where the proxy would listen, "
                            f"{why}: stop that, or choose another port with --port N")
        for s in stand_ins:
            if s.port == o.port and listen_host in ("", s.host):
                problems.append(f"port {o.port} is the proxy's and also upstream {s.name}'s in {rules_file}: "
                                "choose another port for the proxy with --port N")
    return problems + stand_in_problems(stand_ins, rules_file,
                                        "stop that, or leave out --demo if it is the backend you want")


def _run_proxy(o: Options, rules_file: str, rules, m: model.Rules) -> int:
    """mitmdump in the foreground, its output passed on; once it listens, where, and the hints."""
    mitmdump = Path(sys.executable).with_name("mitmdump")
    cmd = [str(mitmdump), "--listen-host", "127.0.0.1", "--listen-port", str(o.port), "-s", str(ADDON),
           "--set", f"condroute_rules={rules_file}", "--set", "condroute_debug_header=true", *o.mitm_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, errors="replace")

    def forward(signum, _frame) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    announced = False
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        if not announced and (lm := LISTEN_RE.search(line)):
            announced = True
            host = lm.group(1).strip("[]")
            if host in ("*", "0.0.0.0", "::"):   # every address: this machine's own is one of them
                host = "127.0.0.1"
            port = int(lm.group(2))
            shown = f"[{host}]" if ":" in host else host
            print(f"condroute: the proxy listens on http://{shown}:{port}, routing by {rules_file} "
                  f"({rules.summary()})")
            for h in hints(rules, m, host, port, _mitm_option(o.mitm_args, "--mode", "-m")):
                print(h)
        sys.stdout.flush()
    code = proc.wait()
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    try:
        o = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        return _fail([f"{e} (./scripts/run --help)"], 2)
    if o is None:
        print(USAGE)
        return 0
    rules_file = o.rules or _shown(str(EXAMPLE))
    if not os.path.isfile(rules_file):
        return _fail([f"no such rules file: {rules_file}"], 2)
    loaded = load_or_report(rules_file)
    if loaded is None:
        return 1
    rules, m = loaded
    demo = o.demo if o.demo is not None else Path(rules_file).resolve() == EXAMPLE
    local, notes = plan_stand_ins(m)
    problems = _port_problems(o, rules_file, local if demo else [])
    if problems:
        return _fail(problems, 1)
    if demo:
        for n in notes:
            print(n, flush=True)
        start_stand_ins(local)
    else:
        for s in local:
            if _nothing_listens(s.host, s.port):
                print(f"nothing listens on {s.host}:{s.port} (upstream {s.name}): requests sent there will answer "
                      "502; --demo starts a stand-in", flush=True)
    return _run_proxy(o, rules_file, rules, m)


def _main() -> int:
    try:
        return main()
    except KeyboardInterrupt:    # Ctrl-C before mitmdump started: nothing to stop
        return 130


if __name__ == "__main__":
    sys.exit(_main())
