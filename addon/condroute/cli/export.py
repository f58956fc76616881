"""``condroute export --to TARGET FILE [-o OUT] [--allow-partial] [--verify --cases CASES
[--flows DUMP]]``: the rules written for a production gateway, and proved on the real one.

Exit status: 0 exported (and every case verified); 1 the rules do not load, a rule could not be
exported exactly (unless ``--allow-partial``), or a case routed differently; 2 bad command line
(``UsageError``, one sentence).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import RulesError
from ..export import verify as v
from ..export.base import ExportOptions, Exported
from ..export.targets import NAMES, read, target
from ..mitm.flows import flow_request
from .cases import CasesError, load_cases

DESCRIPTION = (
    "Write FILE's routing as TARGET's configuration: envoy (a static bootstrap), nginx (nginx.conf), "
    "haproxy (haproxy.cfg), httproute (Gateway API HTTPRoute YAML) or krakend (KrakenD JSON). Every "
    "rule the target cannot express exactly is reported as FILE:LINE:COLUMN: not exported to TARGET: "
    "why, and the command exits 1 without writing anything unless --allow-partial (then the rest is "
    "written). With --verify: start the real gateway on loopback with recording backends standing in "
    "for every upstream, send every case of --cases (and every request of --flows) through it and "
    "compare where each arrived with condroute's own decision: one line per difference, then "
    "'N passed, N failed'.")
EXAMPLES = (
    "examples:\n"
    "  condroute export --to nginx rules/example.yaml -o /etc/nginx/conf.d/condroute.conf\n"
    "  condroute export --to envoy --verify rules/recipes/header-ab.yaml --cases rules/recipes/header-ab.cases.yaml")


def add_parser(command) -> None:
    x = command("export", "write the rules as Envoy, nginx, HAProxy, HTTPRoute or KrakenD configuration")
    x.add_argument("file", metavar="FILE", help="the rules file")
    x.add_argument("--to", required=True, metavar="TARGET",
                   help=f"the gateway: {', '.join(NAMES)}")
    x.add_argument("-o", "--output", metavar="OUT",
                   help="write the configuration to OUT (other files it needs beside it); default: stdout")
    x.add_argument("--allow-partial", action="store_true",
                   help="write (and verify) what can be exported even when some rules cannot")
    x.add_argument("--upstream", action="append", default=[], metavar="NAME=URL",
                   help="send upstream NAME to URL instead of the file's (production's address for the "
                        "laptop's); repeat for more; --verify decides with it too")
    x.add_argument("--listen", metavar="[HOST:]PORT", default="0.0.0.0:8080",
                   help="where the gateway listens (default 0.0.0.0:8080)")
    x.add_argument("--verify", action="store_true", help="run the export on the real gateway against --cases")
    x.add_argument("--cases", metavar="CASES", help="golden cases (as for condroute check) for --verify")
    x.add_argument("--flows", metavar="DUMP", help="also send every request of a mitmdump -w file (--verify)")
    x.add_argument("--keep", metavar="DIR", help=argparse.SUPPRESS)   # --verify: leave the run's files in DIR
    x.set_defaults(fn=cmd_export)


def _listen(text: str, usage) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise usage(f"--listen takes [HOST:]PORT such as 0.0.0.0:8080, not {text!r}")
    return (host.strip("[]") or "0.0.0.0", int(port))


def cmd_export(args: argparse.Namespace, usage) -> int:
    prog = "condroute export"
    if (args.cases or args.flows) and not args.verify:
        raise usage("--cases and --flows go with --verify")
    if args.verify and not (args.cases or args.flows):
        raise usage("--verify needs --cases CASES (or --flows DUMP) to send through the gateway")
    for opt, path in (("cases", args.cases), ("flows", args.flows)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise usage(f"cannot read the {opt} file {path}: {e.strerror or e}") from None
    if args.to not in NAMES:
        raise usage(f"unknown target {args.to!r}; the targets are {', '.join(NAMES)}")
    host, port = _listen(args.listen, usage)
    replace = {}
    for item in args.upstream:
        name, eq, url = item.partition("=")
        if not eq or not name.strip() or "://" not in url:
            raise usage(f"--upstream takes NAME=URL such as stable=http://shop-api.prod:8080, not {item!r}")
        replace[name.strip()] = url.strip()
    t = target(args.to)
    try:
        compiled, m = read(args.file, replace)
    except ValueError as e:
        raise usage(str(e)) from None
    except RulesError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 1
    if args.verify:
        return _verify(args, t, compiled, m)
    out_dir = os.path.dirname(os.path.abspath(args.output)) if args.output else os.getcwd()
    exp: Exported = t.export(m, ExportOptions(listen_host=host, listen_port=port, workdir=out_dir))
    for r in exp.refused:
        print(r.line(t.name), file=sys.stderr)
    for note in exp.notes:
        print(f"{prog}: note: {note}", file=sys.stderr)
    if exp.refused and not args.allow_partial:
        print(f"{len(exp.refused)} rule part(s) not exported to {t.name}; nothing written "
              "(--allow-partial writes the rest)", file=sys.stderr)
        return 1
    if args.output is None:
        if exp.files:
            raise usage(f"this {t.name} configuration needs {len(exp.files)} more file(s) "
                        f"({', '.join(sorted(exp.files))}): give -o OUT to write them beside it")
        sys.stdout.write(exp.text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(exp.text)
        for name, text in exp.files.items():
            p = os.path.join(out_dir, name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
    except OSError as e:
        print(f"{prog}: cannot write {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    extra = f" and {', '.join(sorted(exp.files))} beside it" if exp.files else ""
    print(f"wrote {args.output}{extra} ({t.name})", file=sys.stderr)
    return 0


def _wires(args: argparse.Namespace, m) -> list[v.Wire] | None:
    wires: list[v.Wire] = []
    if args.cases:
        try:
            cases = load_cases(args.cases)
        except CasesError as e:
            for p in e.problems:
                print(p, file=sys.stderr)
            return None
        wires.extend(v.wire(c.name, f"{args.cases}:{c.line}", c.request, m) for c in cases)
    if args.flows:
        from mitmproxy import io as mio        # only --flows needs mitmproxy
        from mitmproxy.exceptions import FlowReadException
        try:
            with open(args.flows, "rb") as f:
                flows = [fl for fl in mio.FlowReader(f).stream() if getattr(fl, "request", None) is not None]
        except FlowReadException as e:
            print(f"{args.flows}: not a mitmproxy flows file: {e}", file=sys.stderr)
            return None
        for i, fl in enumerate(flows, 1):
            req, _ = flow_request(fl)
            body = fl.request.raw_content or b""
            wires.append(v.wire(f"flow {i}: {req.method} {req.host}{req.path}", f"{args.flows}#{i}", req, m, body))
    return wires


def _verify(args: argparse.Namespace, t, compiled, m) -> int:
    wires = _wires(args, m)
    if wires is None:
        return 1
    if t.document:
        res = t.roundtrip(compiled, m, wires)
        if not res.notes:
            res.notes = list(t.export(m, ExportOptions()).notes)
    else:
        exe, why = t.binary()
        if exe is None:
            print(f"condroute export: cannot verify on {t.name}: {why}", file=sys.stderr)
            return 1
        res = v.run(t, compiled, m, wires, allow_partial=args.allow_partial, keep=args.keep)
    for line in res.refused:
        print(line, file=sys.stderr)
    for note in res.notes:
        print(f"condroute export: note: {note}", file=sys.stderr)
    if res.refused and not args.allow_partial:
        print(f"{len(res.refused)} rule part(s) not exported to {t.name}; not verified "
              "(--allow-partial verifies the rest)", file=sys.stderr)
        return 1
    for line in res.lines:
        print(line)
    if res.skipped:
        print(f"{res.skipped} skipped (decided by a part that was not exported, or https://)")
    print(f"{res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0
