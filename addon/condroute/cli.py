"""The condroute command line: validate, explain, check, schema."""
from __future__ import annotations

import argparse
import sys

from .errors import RulesError
from .rules import load_rules


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        rules = load_rules(args.file)
    except RulesError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 1
    for w in rules.warnings:
        print(f"{w} (warning)", file=sys.stderr)
    print(f"{args.file}: OK: {rules.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="condroute", description="condroute rules: validate, explain, check.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check that a rules file loads")
    v.add_argument("file")
    v.set_defaults(fn=cmd_validate)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
