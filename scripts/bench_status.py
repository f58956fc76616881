"""What the status page's hit counting costs per request, in instructions counted by valgrind.

Run: .venv/bin/python scripts/bench_status.py   (a few minutes: four runs under valgrind)

A child Python runs a loop of ``decide()`` for the request scripts/bench_instructions.py sends
(100 routes, the last matches after three failed backends), with and without
``Status.record(d)`` after each decision; each variant runs under callgrind for N1 and N2
iterations, and (total(N2) - total(N1)) / (N2 - N1) cancels start-up. record()'s cost is the
difference between the two variants per iteration, compared with the instructions mitmdump spends
on one routed request (README "Performance": 8.16 M with Python 3.11 / mitmproxy 11). The loop
runs long past 50 iterations, so the deque of recent decisions is full and every record() also
drops the oldest decision (freeing it: without the page, that decision would be freed at the
end of its own request instead). Also printed: the time of one /api/status answer (snapshot and
JSON) with 100 routes and 50 recent decisions, which is paid only when the page is asked for.

(An end-to-end comparison through mitmdump cannot resolve this: its counts repeat within 0.6%,
and record() is far below that.)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, gen_rules  # also puts addon/ on sys.path

ROUTED_REQUEST = 8.16e6   # mitmdump + condroute (100 routes), instructions per routed request (README)

CHILD = r"""
import sys
sys.path.insert(0, {addon!r})
from condroute.engine import decide
from condroute.mitm.health import Health
from condroute.mitm.status import Status
from condroute.request import RequestView
from condroute.rules import load_rules_text

rules = load_rules_text(open({rules!r}).read(), "r100.yaml")
HEADERS = [("Host", "shop.example"), ("User-Agent", "bench"), ("Accept", "*/*"),
           ("Cookie", "ab=A; uid=7"), ("X-Ab-Test", "A")]

class Live:
    rules, path, generation, loaded_at, last_error = rules, "r100.yaml", 1, 0.0, None

class Ups:
    health = Health()

status = Status(Live(), Ups())
n, with_record = int(sys.argv[1]), sys.argv[2] == "record"
record = status.record
for _ in range(n):
    d = decide(rules, RequestView("GET", "http", "shop.example", 80, "/svc99/42", "", HEADERS, "127.0.0.1"))
    if with_record:
        record(d)
assert d.outcome == "routed" and d.route == "r99" and d.backend == "default", d
if with_record:
    assert sum(status.hits.values()) == n
"""


def instructions(child: Path, n: int, variant: str, tmp: Path) -> int:
    out = tmp / f"cg.{variant}.{n}.out"
    r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(child),
                        str(n), variant], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"callgrind run failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return int(m.group(1))


def page_time(rules_text: str) -> float:
    """Seconds for one /api/status body (snapshot + JSON), 100 routes and 50 recent decisions."""
    from condroute.engine import decide
    from condroute.mitm.health import Health
    from condroute.mitm.status import Status
    from condroute.request import RequestView
    from condroute.rules import load_rules_text
    rules = load_rules_text(rules_text, "r100.yaml")

    class Live:
        path, generation, loaded_at, last_error = "r100.yaml", 1, time.time(), None

    class Ups:
        health = Health()

    Live.rules = rules
    st = Status(Live(), Ups())
    headers = [("Host", "shop.example"), ("X-Ab-Test", "A")]
    for i in range(100):
        st.record(decide(rules, RequestView("GET", "http", "shop.example", 80, f"/svc{i}/42", "", headers, "127.0.0.1")))
    n, t0 = 50, time.perf_counter()
    for _ in range(n):
        json.dumps(st.snapshot())
    return (time.perf_counter() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n1", type=int, default=1000)
    ap.add_argument("--n2", type=int, default=5000)
    a = ap.parse_args()
    rules_text = gen_rules(100)
    print(f"one /api/status answer (100 routes, 50 recent decisions): {page_time(rules_text) * 1e3:.2f} ms "
          "(only when the page or its JSON is asked for)")
    if not shutil.which("valgrind"):
        print("record() not measured: valgrind is needed (apt-get install valgrind)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="condroute-status-cg-"))
    try:
        (tmp / "r100.yaml").write_text(rules_text)
        child = tmp / "child.py"
        child.write_text(CHILD.format(addon=str(ROOT / "addon"), rules=str(tmp / "r100.yaml")))
        per = {}
        for variant in ("decide", "record"):
            x1 = instructions(child, a.n1, variant, tmp)
            x2 = instructions(child, a.n2, variant, tmp)
            per[variant] = (x2 - x1) / (a.n2 - a.n1)
        cost = per["record"] - per["decide"]
        print(f"instructions per iteration (callgrind; ({a.n2} - {a.n1}) / {a.n2 - a.n1}), Python "
              f"{sys.version.split()[0]}:")
        print(f"   decide()             {per['decide']:10.0f}")
        print(f"   decide() + record()  {per['record']:10.0f}")
        print(f"   record()             {cost:10.0f}   = {cost / ROUTED_REQUEST * 100:.3f}% of a routed request "
              f"through mitmdump ({ROUTED_REQUEST / 1e6:.2f} M; target < 1%)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
