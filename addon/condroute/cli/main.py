"""The condroute command line: validate, explain, check, export, schema.

Every command runs the same pure engine as the mitmproxy addon (``engine.decide``); nothing here
touches the network. Exit status: 0 fine, 1 the data is wrong (a rules file that does not load,
a bad cases file, a failed case), 2 the command line is wrong (one plain sentence on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap

from ..engine import decide
from ..errors import Problem, RulesError
from ..explain import build_request
from ..httptext import TOKEN
from ..mitm.flows import explain_flows
from ..render import decision_data, render_decision
from ..rules import Rules, load_rules
from . import export as export_cli
from .cases import CasesError, load_cases, run_case
from .lint import lint
from .schema import schema_json


class UsageError(Exception):
    """The command line is wrong: one plain sentence, exit status 2."""

    def __init__(self, message: str, prog: str = "condroute"):
        super().__init__(message)
        self.prog = prog


# -- argument parsing: one sentence on error, no usage dump ---------------------------------------
_REWRITES = (
    (re.compile(r"^the following arguments are required: (.*)$"),
     lambda m: f"missing {m.group(1).replace(', ', ' and ')}"),
    (re.compile(r"^unrecognized arguments: (.*)$"), lambda m: f"unknown argument {m.group(1)}"),
    (re.compile(r"^argument \S+: invalid choice: '(.*?)' \(choose from (.*)\)$"),
     lambda m: f"unknown command {m.group(1)!r}; the commands are {m.group(2).replace(chr(39), '')}"),
    (re.compile(r"^argument (\S+?)(?:/\S+)?: expected one argument$"), lambda m: f"{m.group(1)} needs a value"),
    (re.compile(r"^argument (\S+?)(?:/\S+)?: (.*)$"), lambda m: f"{m.group(1)}: {m.group(2)}"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        for rx, fn in _REWRITES:
            m = rx.match(message)
            if m:
                message = fn(m)
                break
        raise UsageError(f"{self.prog}: {message}", self.prog)


def _load(file: str) -> Rules | None:
    """Load a rules file; on failure print its located problems to stderr and return None."""
    try:
        return load_rules(file)
    except RulesError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return None


def _warning(p: Problem) -> str:
    return f"{p.file}:{p.line}:{p.col}: warning: {p.message}"


# -- validate -------------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for file in args.files:
        rules = _load(file)
        if rules is None:
            status = 1
            continue
        warnings = sorted([*rules.warnings, *lint(rules)], key=lambda p: (p.line, p.col))
        for w in warnings:
            print(_warning(w), file=sys.stderr)
        n = len(warnings)
        tail = f"; {n} warning{'s' * (n != 1)}" if n else ""
        print(f"{file}: OK: {rules.summary()}{tail}")
        if n and args.strict:
            status = 1
    return status


EXPLAIN = "condroute explain"


def _explain_usage(msg: str) -> UsageError:
    return UsageError(f"{EXPLAIN}: {msg}", EXPLAIN)


def parse_header_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not TOKEN.match(name):
        raise _explain_usage(f"-H {text!r} is not a header: write it as 'Name: value'")
    return name, value.strip()


# -- explain --------------------------------------------------------------------------------------
def cmd_explain(args: argparse.Namespace) -> int:
    if args.flows is not None:
        if args.url is not None:
            raise _explain_usage("give either a URL or --flows DUMP, not both")
        for opt, val in (("--method", args.method), ("-H", args.header), ("--cookie", args.cookie),
                         ("--client-ip", args.client_ip), ("--jwt", args.jwt)):
            if val:
                raise _explain_usage(f"{opt} describes one request and does not go with --flows")
        try:
            with open(args.flows, "rb"):
                pass
        except OSError as e:
            raise _explain_usage(f"cannot read the flows file {args.flows}: {e.strerror or e}") from None
        rules = _load(args.file)
        if rules is None:
            return 1
        return explain_flows(rules, args.flows, args.json)
    if args.url is None:
        raise _explain_usage("missing URL (or --flows DUMP)")
    headers = [parse_header_arg(h) for h in args.header]
    for c in args.cookie:
        if "=" not in c:
            raise _explain_usage(f"--cookie {c!r} is not a cookie: write it as 'name=value'")
    try:
        req = build_request(args.url, (args.method or "GET").upper(), headers, args.cookie, args.client_ip, args.jwt)
    except ValueError as e:
        raise _explain_usage(str(e)) from None
    rules = _load(args.file)
    if rules is None:
        return 1
    d = decide(rules, req, explain=True)
    if args.json:
        print(json.dumps(decision_data(rules, d, req), indent=2))
    else:
        print("\n".join(render_decision(rules, d, req)))
    return 0


# -- check ----------------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    try:
        with open(args.cases, "rb"):
            pass
    except OSError as e:
        raise UsageError(f"condroute check: cannot read the cases file {args.cases}: {e.strerror or e}",
                         "condroute check") from None
    rules = _load(args.file)
    if rules is None:
        return 1
    try:
        cases = load_cases(args.cases)
    except CasesError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 1
    passed = failed = 0
    for case in cases:
        diffs = run_case(rules, case)
        if diffs:
            failed += 1
            print(f"FAIL  {case.name} ({args.cases}:{case.line}): {'; '.join(diffs)}")
        else:
            passed += 1
            print(f"pass  {case.name}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


# -- schema ---------------------------------------------------------------------------------------
def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_json())
    return 0


# -- the parser -----------------------------------------------------------------------------------
EPILOG = """\
exit status: 0 fine; 1 a rules or cases file is wrong, or a check failed; 2 bad command line.
Run 'condroute COMMAND --help' for a command's options."""


def _wrap(text: str) -> str:
    """Wrap each paragraph to 79 columns; lines that start with spaces are kept as written."""
    out = []
    for para in text.split("\n"):
        out.append(para if para.startswith(" ") else textwrap.fill(para, 79))
    return "\n".join(out)


DESCRIPTIONS = {
    "condroute": "condroute rules, without a proxy: validate a rules file, explain a decision, check golden "
                 "cases, print the JSON Schema.",
    "validate": "Load each FILE as the addon would. Exit 0 with a one-line summary; exit 1 with "
                "FILE:LINE:COLUMN: message lines. Warnings (exit 0): backends and routes that can never be "
                "selected, splits whose weights are all 0, header or cookie names spelled with different case, "
                "upstreams no backend uses.",
    "explain": "Run the addon's engine on one request (no network): the owning route and the routes passed "
               "over, each backend tried with why it held or was skipped, the upstream, the final URL, the "
               "path rewrite, the headers set, removed and added, mirrors and a redirect's Location. With --flows DUMP (a file written by mitmdump -w): the decision for "
               "every saved request and how many requests each backend would have taken.",
    "check": "CASES is a YAML (or JSON) list of {name, request, expect}. request: {method, url, headers, "
             "cookies, client_ip, jwt} (all but url optional). expect: any of route, backend, upstream, path, "
             "url, status, outcome, headers, location; each one given must equal the decision (null: nothing "
             "there); headers: {NAME: VALUE | [V1, V2] | null} are the request headers as forwarded upstream, "
             "location a redirect's Location. Prints a line "
             "per case and 'N passed, N failed'; exit 1 when any case failed.",
    "export": export_cli.DESCRIPTION,
    "schema": "Print the JSON Schema (draft 2020-12) of the rules file. Save it and point your editor's YAML "
              "language server at it with a first line\n"
              "  # yaml-language-server: $schema=./condroute.schema.json",
}
EXAMPLES = {
    "validate": "example:\n  condroute validate rules/example.yaml",
    "explain": "examples:\n"
               "  condroute explain rules/example.yaml http://shop.example/cart -H 'X-Ab-Test: B'\n"
               "  condroute explain rules/example.yaml --method POST http://shop.example/ --cookie ab=B --json\n"
               "  condroute explain rules/example.yaml --flows traffic.mitm",
    "check": "example cases file:\n"
             "  - name: variant B by header\n"
             "    request: {url: \"http://shop.example/cart\", headers: {X-Ab-Test: B}}\n"
             "    expect: {route: shop-ab-test, backend: variant-b-by-header, upstream: variant-b}",
    "export": export_cli.EXAMPLES,
    "schema": "example:\n  condroute schema > condroute.schema.json",
}


def build_parser() -> _Parser:
    fmt = argparse.RawDescriptionHelpFormatter
    ap = _Parser(prog="condroute", allow_abbrev=False, formatter_class=fmt, epilog=EPILOG,
                 description=_wrap(DESCRIPTIONS["condroute"]))
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", title="commands")

    def command(name: str, help: str) -> _Parser:
        return sub.add_parser(name, help=help, allow_abbrev=False, formatter_class=fmt,
                              description=_wrap(DESCRIPTIONS[name]), epilog=EXAMPLES[name])

    v = command("validate", "check that a rules file loads, and warn about dead rules")
    v.add_argument("files", nargs="+", metavar="FILE", help="a rules file (YAML, JSON or KrakenD)")
    v.add_argument("--strict", action="store_true", help="exit 1 when there are warnings, too")
    v.set_defaults(fn=cmd_validate)

    e = command("explain", "the decision for one request, or for every request of a mitmdump file")
    e.add_argument("file", metavar="FILE", help="the rules file")
    e.add_argument("url", metavar="URL", nargs="?", help="the request URL, e.g. http://shop.example/cart?x=1")
    e.add_argument("--method", "-X", metavar="M", help="the request method (default GET)")
    e.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="a request header; repeat for more")
    e.add_argument("--cookie", "-b", action="append", default=[], metavar="'NAME=VALUE'",
                   help="a cookie (sent in the Cookie header); repeat for more")
    e.add_argument("--client-ip", metavar="IP", help="the address the request comes from (the proxy's peer)")
    e.add_argument("--jwt", metavar="TOKEN", help="the JWT that jwt conditions and jwt: splits read")
    e.add_argument("--flows", metavar="DUMP", help="explain every request saved in a mitmdump -w file instead")
    e.add_argument("--json", action="store_true", help="print the decision as JSON")
    e.set_defaults(fn=cmd_explain)

    c = command("check", "run golden cases against the rules (for CI)")
    c.add_argument("file", metavar="FILE", help="the rules file")
    c.add_argument("cases", metavar="CASES", help="the golden cases file")
    c.set_defaults(fn=cmd_check)

    export_cli.add_parser(command)

    s = command("schema", "print the JSON Schema of the rules file (for editors)")
    s.set_defaults(fn=cmd_schema)
    ap.set_defaults(commands=sub.choices)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        commands = ap.get_default("commands")
        if argv and argv[0] in commands:
            # intermixed, so that options may stand between FILE and URL (argparse alone cannot)
            args, extra = commands[argv[0]].parse_known_intermixed_args(argv[1:])
            args.cmd = argv[0]
        else:
            args, extra = ap.parse_known_args(argv)
        if extra:
            prog = f"condroute {args.cmd}" if getattr(args, "cmd", None) else "condroute"
            raise UsageError(f"{prog}: unknown argument {extra[0]}", prog)
        if getattr(args, "fn", None) is None:
            raise UsageError("condroute: name a command: validate, explain, check, export or schema")
        if args.fn is export_cli.cmd_export:
            return args.fn(args, lambda msg: UsageError(f"condroute export: {msg}", "condroute export"))
        return args.fn(args)
    except UsageError as e:
        msg = str(e)
        print(msg if msg.endswith(".") else msg + ".", file=sys.stderr)
        print(f"Try '{e.prog} --help'.", file=sys.stderr)
        return 2
    except SystemExit as e:   # --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt:   # Ctrl-C (export --verify has stopped what it started on the way out)
        print("condroute: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # condroute explain ... | head
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
