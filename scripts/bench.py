"""condroute benchmark: run through ./scripts/bench. Prints figures measured in this one run.

1. Engine: decide() median/p99 µs for 10, 100, 1,000 routes (header, cookie, path-param and
   client-ip conditions; the matching route last), plus one CEL policy and one verified JWT.
2. End to end: CPU seconds of the mitmdump process per request under the same load, for plain
   mitmdump, mitmdump + condroute (100 routes) and mitmdump + 100 map_remote specs, as ratios.
3. Memory: peak RSS of mitmdump with 10,000 routes vs plain, and the rules' load time.
4. End to end, counted: instructions per request under valgrind for the same configurations (and
   an empty script, the cost of hosting any script), which CPU seconds on a shared machine cannot
   resolve (identical rounds of part 2 differ by up to +-20%).
5. Hot reload: request latency (p50/p99/max) through mitmdump while a 5 MB rules file is reloaded
   (loaded in a worker thread), against the same load with no reload. Target: p99 up < 50 ms.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import ADDON, MITMDUMP, gen_rules  # also puts addon/ on sys.path
from bench_instructions import section as instructions_section
from condroute.cli.demo import start_echo
from condroute.rules import load_rules, load_rules_text
from condroute.engine import decide
from condroute.request import RequestView


def gen_host_rules(n: int) -> str:
    out = ["version: 1", "upstreams: {a: 'http://127.0.0.1:9001', b: 'http://127.0.0.1:9002'}", "routes:"]
    for i in range(n):
        out.append(
            f"  - name: r{i}\n"
            f"    match: {{host: h{i}.example}}\n"
            f"    backends:\n"
            f"      - {{name: by-header, when: {{header: {{X-Ab-Test: B}}}}, upstream: b}}\n"
            f"      - {{name: default, fallback: true, upstream: a}}")
    return "\n".join(out) + "\n"


HEADERS = [("Host", "shop.example"), ("User-Agent", "bench"), ("Accept", "*/*"),
           ("Cookie", "ab=A; uid=7"), ("X-Ab-Test", "A")]


def timed(fn, n: int) -> tuple[float, float]:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        ts.append(time.perf_counter_ns() - t0)
    ts.sort()
    return ts[len(ts) // 2] / 1000, ts[int(len(ts) * 0.99)] / 1000


def engine_section(n_iter: int) -> None:
    print("1. engine: decide() per request, µs (a fresh request view each time)")
    print(f"   {'rules':<34}{'median':>8}{'p99':>8}")
    for n in (10, 100, 1000):
        rules = load_rules_text(gen_rules(n))
        path = f"/svc{n - 1}/42"

        def one(rules=rules, path=path):
            return decide(rules, RequestView("GET", "http", "shop.example", 80, path, "", HEADERS, "127.0.0.1"))

        assert one().backend == "default"
        med, p99 = timed(one, n_iter)
        print(f"   {f'{n} routes, matching route last':<34}{med:8.1f}{p99:8.1f}")
    for n in (100, 1000):
        rules = load_rules_text(gen_host_rules(n))
        host = f"h{n - 1}.example"

        def one(rules=rules, host=host):
            return decide(rules, RequestView("GET", "http", host, 80, "/any/path", "", HEADERS, "127.0.0.1"))

        assert one().backend == "default"
        med, p99 = timed(one, n_iter)
        print(f"   {f'{n} host routes, matching last':<34}{med:8.1f}{p99:8.1f}")
    extra = [
        ("1 CEL policy (4 clauses)", """
version: 1
routes:
  - name: r
    backends:
      - name: policy
        when: {cel: "hasHeader('X-Beta') && req_headers.containsCookie('ab', 'B') && request.method == 'GET' && request.path.startsWith('/svc')"}
        upstream: http://127.0.0.1:9002
      - {name: default, fallback: true, upstream: http://127.0.0.1:9001}
""", HEADERS + [("X-Beta", "1")]),
    ]
    try:
        import jwt as pyjwt
        tok = pyjwt.encode({"sub": "u1", "tier": "gold", "exp": int(time.time()) + 3600}, "s" * 32, algorithm="HS256")
        extra.append(("1 verified JWT (HS256) claim", """
version: 1
settings: {jwt: {verify: {secret: "%s"}}}
routes:
  - name: r
    backends:
      - {name: gold, when: {jwt: {tier: gold}}, upstream: http://127.0.0.1:9002}
      - {name: default, fallback: true, upstream: http://127.0.0.1:9001}
""" % ("s" * 32), HEADERS + [("Authorization", f"Bearer {tok}")]))
    except ImportError:
        pass
    for label, text, headers in extra:
        try:
            rules = load_rules_text(text)
        except Exception as e:  # feature not available in this build
            print(f"   {label:<34}   (not measured: {str(e).splitlines()[0][:60]})")
            continue

        def one(rules=rules, headers=headers):
            return decide(rules, RequestView("GET", "http", "shop.example", 80, "/svc1/2", "", headers, "127.0.0.1"))

        med, p99 = timed(one, max(n_iter // 4, 500))
        print(f"   {label:<34}{med:8.1f}{p99:8.1f}   (selected: {one().backend})")


# -- end to end --------------------------------------------------------------------------------------
# With two or more cores, mitmdump gets a core of its own and the load generator and the echo
# backend share another: otherwise they compete for the same cores and the per-request CPU of
# mitmdump varies by +-20% between identical runs (measured here).
PINNED = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
MITM_CPU, LOAD_CPU = 0, 1


def pin(cpu: int):
    return (lambda: os.sched_setaffinity(0, {cpu})) if PINNED else None


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Mitm:
    def __init__(self, args: list[str], startup_timeout: float = 60, quiet: bool = True):
        self.p = subprocess.Popen([MITMDUMP, "--listen-host", "127.0.0.1", "--listen-port", "0",
                                   *(["-q"] if quiet else []), *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  preexec_fn=pin(MITM_CPU))
        self.t0 = time.perf_counter()
        self.port = None
        # -q hides the "listening at" line: find the port from /proc
        deadline = time.monotonic() + startup_timeout
        while self.port is None and time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError("mitmdump exited: " + (self.p.stdout.read() if self.p.stdout else ""))
            self.port = listening_port(self.p.pid)
            if self.port is None:
                time.sleep(0.05)
        self.startup = time.perf_counter() - self.t0
        if self.port is None:
            raise RuntimeError("mitmdump did not start listening")
        self.lines: list[tuple[float, str]] = []     # (time.monotonic(), line) of its output
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.p.stdout or ():
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def seen(self, pattern: str, timeout: float) -> float:
        """When an output line matching ``pattern`` was printed (waits for it)."""
        rx, deadline, i = re.compile(pattern), time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            while i < len(self.lines):
                if rx.search(self.lines[i][1]):
                    return self.lines[i][0]
                i += 1
            time.sleep(0.01)
        raise RuntimeError(f"mitmdump did not print {pattern!r}:\n" + "\n".join(ln for _, ln in self.lines[-20:]))

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()


def listening_port(pid: int) -> int | None:
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                    return int(parts[1].split(":")[1], 16)
    except OSError:
        return None
    return None


def load(url: str, seconds: float, headers: list[tuple[str, str]]) -> int:
    """Send requests for `seconds`; returns how many completed."""
    if shutil.which("wrk"):
        cmd = ["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency"]
        for k, v in headers:
            cmd += ["-H", f"{k}: {v}"]
        out = subprocess.run(cmd + [url], capture_output=True, text=True).stdout
        m = re.search(r"(\d+) requests in", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            print(f"   !! {errors.group(1)} error responses from {url}")
        return int(m.group(1)) if m else 0
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(url)
    done, stop = [0], time.monotonic() + seconds

    def worker():
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        while time.monotonic() < stop:
            c.request("GET", u.path, headers=dict(headers))
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"status {r.status}")
            done[0] += 1

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return done[0]


def hooks_us_per_flow(rules_path: Path, n: int = 5000) -> float:
    """Every hook condroute has for one routed request (requestheaders, request, responseheaders when
    registered), dispatched by mitmproxy's own addon manager, timed in process on its test flows."""
    import asyncio

    from mitmproxy.addons import proxyserver
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpRequestHook, HttpResponseHeadersHook
    from mitmproxy.test import taddons, tflow

    from condroute.mitm.addon import ConditionalRouting

    async def run() -> float:
        a = ConditionalRouting()
        with taddons.context(a, proxyserver.Proxyserver()) as tctx:
            tctx.configure(a, condroute_rules=str(rules_path), condroute_log="off")
            invoke = tctx.master.addons.invoke_addon_sync
            flows = []
            for _ in range(n):
                f = tflow.tflow(resp=True)
                f.request.path, f.request.host, f.request.port = "/svc99/42", "127.0.0.1", 9001
                f.request.headers["X-Ab-Test"] = "A"
                f.request.headers["Cookie"] = "ab=A; uid=7"
                f.response, f.spare = None, f.response
                flows.append(f)
            t0 = time.perf_counter()
            for f in flows:
                invoke(a, HttpRequestHeadersHook(f))
                invoke(a, HttpRequestHook(f))
                f.response = f.spare
                invoke(a, HttpResponseHeadersHook(f))
            assert flows[0].metadata["condroute"]["backend"] == "default"
            return (time.perf_counter() - t0) / n * 1e6

    return asyncio.run(run())


def e2e_section(seconds: float, rounds: int) -> None:
    if PINNED:
        os.sched_setaffinity(0, {LOAD_CPU})   # this process (echo backend) and wrk, its child
    backend = start_echo("bench-backend")
    burl = f"http://127.0.0.1:{backend.server_address[1]}"
    tmp = Path(tempfile.mkdtemp(prefix="condroute-bench-"))
    rules = tmp / "r100.yaml"
    rules.write_text(gen_rules(100, upstream=burl))
    mr = []
    for i in range(100):
        mr += ["--map-remote", f"|~u /svc{i}/|/svc{i}/|/svc{i}/"]
    configs = {
        "plain mitmdump": [],
        "plain, connection_strategy=lazy": ["--set", "connection_strategy=lazy"],
        "condroute, 100 routes": ["-s", ADDON, "--set", f"condroute_rules={rules}", "--set", "condroute_log=off"],
        "map_remote, 100 specs": mr,
    }
    hdrs = [("X-Ab-Test", "A"), ("Cookie", "ab=A; uid=7")]
    per_req: dict[str, list[float]] = {k: [] for k in configs}
    tool = "wrk -t1 -c8" if shutil.which("wrk") else "built-in generator, 4 connections"
    print(f"\n2. end to end: CPU of the mitmdump process per request (reverse mode, {tool}, "
          f"{seconds:g} s x {rounds} rounds, interleaved{', mitmdump pinned to its own core' if PINNED else ''})")
    for _ in range(rounds):
        for name, args in configs.items():
            m = Mitm(["--mode", f"reverse:{burl}", *args])
            try:
                url = f"http://127.0.0.1:{m.port}/svc99/42"
                load(url, 1, hdrs)  # warm-up
                c0 = cpu_seconds(m.p.pid)
                n = load(url, seconds, hdrs)
                c1 = cpu_seconds(m.p.pid)
                per_req[name].append((c1 - c0) / max(n, 1) * 1e6)
            finally:
                m.stop()
    med = {k: statistics.median(v) for k, v in per_req.items()}
    base = med["plain mitmdump"]
    for k, v in med.items():
        spread = f"rounds {min(per_req[k]):.0f}-{max(per_req[k]):.0f}"
        print(f"   {k:<33}{v:8.0f} µs CPU/request   {v / base:5.3f}x plain   ({spread})")
    print(f"   condroute / map_remote: {med['condroute, 100 routes'] / med['map_remote, 100 specs']:.3f}x")
    print("   (on a shared machine identical rounds differ by up to ±20%: read 2b for condroute's own share)")
    backend.shutdown()
    hooks = hooks_us_per_flow(rules)
    print(f"\n2b. condroute's hooks in process (mitmproxy's taddons, 100 routes, log off): {hooks:.1f} µs per flow"
          f"\n    = {hooks / base * 100:.1f}% of plain mitmdump's {base:.0f} µs CPU per request "
          f"-> {1 + hooks / base:.3f}x plain")

    print("\n3. memory and load time, 10,000 routes")
    big = tmp / "r10000.yaml"
    big.write_text(gen_rules(10000, upstream=burl))
    t0 = time.perf_counter()
    r = load_rules(str(big))
    t_load = time.perf_counter() - t0
    print(f"   load_rules(): {t_load:.2f} s ({r.summary()})")
    peaks = {}
    for name, args in {"plain mitmdump": [], "condroute, 10,000 routes": ["-s", ADDON, "--set", f"condroute_rules={big}"]}.items():
        m = Mitm(["--mode", f"reverse:{burl}", *args])
        peaks[name] = (vm_hwm_mib(m.p.pid), m.startup)
        m.stop()
    for k, (mib, st) in peaks.items():
        print(f"   {k:<26} peak RSS {mib:7.1f} MiB   start-up to listening {st:5.2f} s")
    a, b = peaks["plain mitmdump"], peaks["condroute, 10,000 routes"]
    print(f"   condroute adds {b[0] - a[0]:.1f} MiB ({b[0] / a[0]:.2f}x) and {b[1] - a[1]:.2f} s of start-up")
    shutil.rmtree(tmp, ignore_errors=True)


def latencies(url: str, stop: threading.Event, conns: int = 4) -> list[tuple[float, float, str]]:
    """Requests on ``conns`` keep-alive connections until ``stop``: (end time, seconds, X-Condroute)."""
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(url)
    out: list[tuple[float, float, str]] = []

    def worker():
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        while not stop.is_set():
            t0 = time.monotonic()
            c.request("GET", u.path)
            r = c.getresponse()
            r.read()
            t1 = time.monotonic()
            if r.status != 200:
                raise RuntimeError(f"status {r.status}")
            out.append((t1, t1 - t0, r.getheader("X-Condroute", "")))

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(conns)]
    for t in ts:
        t.start()
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000 if xs else float("nan")


def reload_section(seconds: float) -> None:
    """Part 5: p99 latency while a 5 MB rules file reloads, against no reload, same process."""
    if PINNED:
        os.sched_setaffinity(0, {LOAD_CPU})
    backend = start_echo("bench-backend")
    burl = f"http://127.0.0.1:{backend.server_address[1]}"
    tmp = Path(tempfile.mkdtemp(prefix="condroute-bench-"))
    n = 14_000
    v1 = gen_rules(n, upstream=burl)
    v2 = v1.replace("name: default,", "name: default-v2,")
    path = tmp / "big.yaml"
    path.write_text(v1)
    print(f"\n5. hot reload of a {len(v2) / 1e6:.1f} MB rules file ({n:,} routes) under load "
          f"(reverse mode, 4 keep-alive connections, sequential requests)")
    m = Mitm(["--mode", f"reverse:{burl}", "-s", ADDON, "--set", f"condroute_rules={path}",
              "--set", "condroute_debug_header=true", "--set", "condroute_log=off",
              "--set", "flow_detail=0"], startup_timeout=600, quiet=False)
    try:
        url = f"http://127.0.0.1:{m.port}/svc99/42"
        stop = threading.Event()
        got = latencies(url, stop)
        time.sleep(5)                                   # warm-up (the first collections after the load)
        t_base = time.monotonic()
        time.sleep(seconds)                             # no reload
        t_write = time.monotonic()
        path.write_text(v2)
        t_load = m.seen(r"loading it in the background", 60)
        t_done = m.seen(r"condroute: reloaded ", 600)
        time.sleep(4)
        stop.set()
        time.sleep(0.5)
    finally:
        m.stop()
        backend.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    base = [lat for t, lat, _ in got if t_base <= t < t_write]
    # requests that started after the load began and ended less than 3 s after the new rules were
    # installed (the first collections of the garbage collector after a load fall there)
    during = [lat for t, lat, _ in got if t_load <= t - lat and t <= t_done + 3]
    mixed = {h for t, _, h in got if t > t_done + 0.5}
    print(f"   {'':<30}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for label, xs in ((f"no reload ({seconds:g} s)", base), (f"during the reload ({t_done - t_load:.1f} s + 3)", during)):
        print(f"   {label:<30}{len(xs):9d}{pct(xs, 0.5):9.1f}{pct(xs, 0.99):9.1f}{pct(xs, 1.0):9.1f}")
    slow = max(((lat, t) for t, lat, _ in got if t_load <= t - lat and t <= t_done + 3), default=None)
    if slow:
        print(f"   (the slowest request during the reload started {slow[1] - slow[0] - t_load:.1f} s after "
              f"the load began; the rules were installed at {t_done - t_load:.1f} s)")
    rise = pct(during, 0.99) - pct(base, 0.99)
    print(f"   p99 rises by {rise:.1f} ms during the reload (target: < 50 ms)"
          f"{'' if mixed == {'r99/default-v2 -> a'} else f'   !! after the reload: {mixed}'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (noisier)")
    ap.add_argument("--engine-only", action="store_true", help="only the engine part")
    ap.add_argument("--no-valgrind", action="store_true", help="skip the instruction counts (part 4)")
    ap.add_argument("--reload-only", action="store_true", help="only the hot-reload latency part (5)")
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"mitmproxy {__import__('mitmproxy.version').version.VERSION}")
    if a.reload_only:
        reload_section(5)
        return 0
    engine_section(5000 if a.quick else 20000)
    if not a.engine_only:
        e2e_section(3 if a.quick else 5, 1 if a.quick else 5)
        if not (a.quick or a.no_valgrind):
            print("\n4. end to end, counted: instructions per request under valgrind (callgrind), which do not "
                  "depend on what else the machine runs\n   (reverse mode; (300 - 100 requests) / 200 on one "
                  "keep-alive connection, so start-up cancels out; takes ~15 minutes)")
            instructions_section()
        reload_section(5 if a.quick else 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
