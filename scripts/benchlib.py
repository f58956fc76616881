"""What the benchmark scripts share: paths, the mitmdump to run and the generated rules files.

Imports go one way: bench.py and bench_instructions.py import this module (and bench.py imports
bench_instructions.py); this module imports neither of them. Importing it puts addon/ on sys.path,
so the condroute package imports after it.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "addon"))

MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))
ADDON = str(ROOT / "addon" / "conditional_routing.py")


def gen_rules(n: int, upstream: str = "http://127.0.0.1:9001", other: str = "http://127.0.0.1:9002") -> str:
    out = ["version: 1", f"upstreams: {{a: '{upstream}', b: '{other}'}}", "routes:"]
    for i in range(n):
        out.append(
            f"  - name: r{i}\n"
            f"    match: {{path: '/svc{i}/{{id}}', methods: [GET, POST]}}\n"
            f"    backends:\n"
            f"      - {{name: by-header, when: {{header: {{X-Ab-Test: B}}}}, upstream: b}}\n"
            f"      - {{name: by-cookie, when: {{cookie: {{ab: B}}}}, upstream: b}}\n"
            f"      - {{name: by-ip, when: {{client_ip: 10.0.0.0/8}}, upstream: b}}\n"
            f"      - {{name: default, fallback: true, upstream: a, path: '/svc{i}/{{id}}'}}")
    return "\n".join(out) + "\n"
