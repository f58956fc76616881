"""Instructions per request of mitmdump, counted by valgrind: deterministic where CPU seconds on a
shared machine vary by +-20% (see scripts/bench). Run: .venv/bin/python scripts/bench_instructions.py

Each configuration runs twice under callgrind, answering N1 and N2 requests on one keep-alive
connection; (total(N2) - total(N1)) / (N2 - N1) cancels start-up and shut-down. Takes minutes.
"""
from __future__ import annotations

import argparse
import http.client
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ADDON, MITMDUMP, gen_rules  # also puts addon/ on sys.path
from condroute.cli.demo import start_echo

EMPTY = "class Empty:\n    def requestheaders(self, flow):\n        pass\n\naddons = [Empty()]\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def total_instructions(args: list[str], n: int, port: int, tmp: Path) -> int:
    python = str(Path(MITMDUMP).with_name("python"))
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.{port}.out", python,
                          MITMDUMP, "-q", "--listen-host", "127.0.0.1", "-p", str(port), *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 1800   # 100 map_remote filters take minutes to parse under valgrind
    while True:   # start-up under valgrind takes a while: wait until it answers
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            c.request("GET", "/warm-up")
            c.getresponse().read()
            break
        except OSError:
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError("mitmdump under valgrind did not start") from None
            time.sleep(1)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(n):
        c.request("GET", "/svc99/42", headers={"X-Ab-Test": "A", "Cookie": "ab=A; uid=7"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}")
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=600)[1]
    m = re.search(r"Collected : (\d+)", err)
    if not m:
        raise RuntimeError("no instruction count from callgrind:\n" + err[-2000:])
    return int(m.group(1))


def configs(tmp: Path, burl: str) -> dict[str, list[str]]:
    (tmp / "r100.yaml").write_text(gen_rules(100, upstream=burl))
    (tmp / "empty.py").write_text(EMPTY)
    mr = []
    for i in range(100):
        mr += ["--map-remote", f"|~u /svc{i}/|/svc{i}/|/svc{i}/"]
    return {
        "plain mitmdump": [],
        "an empty one-hook script": ["-s", str(tmp / "empty.py")],
        "condroute, no rules": ["-s", ADDON],
        "condroute, 100 routes": ["-s", ADDON, "--set", f"condroute_rules={tmp / 'r100.yaml'}",
                                  "--set", "condroute_log=off"],
        "map_remote, 100 specs": mr,
    }


def section(n1: int = 100, n2: int = 300, indent: str = "   ", only: str | None = None) -> dict[str, float] | None:
    """Measure every configuration; print and return instructions per request."""
    if not shutil.which("valgrind"):
        print(f"{indent}(not measured: valgrind is needed, e.g. apt-get install valgrind)")
        return None
    tmp = Path(tempfile.mkdtemp(prefix="condroute-cg-"))
    backend = start_echo("bench-backend")
    burl = f"http://127.0.0.1:{backend.server_address[1]}"
    base, out = None, {}
    try:
        for name, args in configs(tmp, burl).items():
            if only and name != "plain mitmdump" and only not in name:
                continue
            x1 = total_instructions(["--mode", f"reverse:{burl}", *args], n1, free_port(), tmp)
            x2 = total_instructions(["--mode", f"reverse:{burl}", *args], n2, free_port(), tmp)
            per = out[name] = (x2 - x1) / (n2 - n1)
            base = base or per
            print(f"{indent}{name:<26}{per / 1e6:7.2f} M   {per / base:.3f}x plain", flush=True)
        if "map_remote, 100 specs" not in out or "condroute, no rules" not in out:
            return out
        c, m = out["condroute, 100 routes"], out["map_remote, 100 specs"]
        print(f"{indent}condroute / map_remote: {c / m:.3f}x;  what 100 routes add to condroute without "
              f"rules: {(c - out['condroute, no rules']) / base * 100:.1f}% of plain")
    finally:
        backend.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n1", type=int, default=100)
    ap.add_argument("--n2", type=int, default=300)
    ap.add_argument("--only", metavar="TEXT", help="measure plain mitmdump and the configurations whose name "
                                                   "contains TEXT (e.g. '100 routes')")
    a = ap.parse_args()
    print(f"instructions per request (callgrind; ({a.n2} - {a.n1} requests) / {a.n2 - a.n1}), reverse mode, "
          "one keep-alive connection")
    return 0 if section(a.n1, a.n2, only=a.only) is not None else 2


if __name__ == "__main__":
    sys.exit(main())
