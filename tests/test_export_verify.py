"""The `condroute export --verify` harness (export/verify.py) and the export command's command line,
without any real gateway: a stand-in gateway (a small Python forwarder started as a process) shows
that the harness passes what routes as condroute does and names each difference of what does not."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from condroute.cli.main import main
from condroute.engine import decide
from condroute.explain import build_request
from condroute.export import verify as v
from condroute.export.base import ExportOptions, Exported, Target
from condroute.export.targets import read

RULES = textwrap.dedent("""\
    version: 1
    upstreams:
      a: http://127.0.0.1:9001
      b: http://127.0.0.1:9002/base
    routes:
      - name: shop
        match: {host: shop.example}
        backends:
          - name: to-b
            when: {header: {X-Ab: B}}
            upstream: b
            set_headers: {X-Variant: B}
            remove_headers: [X-Debug]
          - name: block
            when: {header: {X-Ab: block}}
            respond: {status: 403, body: "no\\n", headers: {X-Why: blocked}}
          - name: to-a
            fallback: true
            upstream: a
""")


def rules_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(RULES)
    return str(p)


def answer_from(label: str, target: str, headers: list[tuple[str, str]], status: int = 200) -> v.Answer:
    body = json.dumps({"upstream": label, "method": "GET", "target": target,
                       "headers": [list(h) for h in headers]}).encode()
    return v.Answer(status, [(v.RECORDED_BY, label)], body)


def setup(tmp_path, url: str, headers=()):
    compiled, m = read(rules_file(tmp_path))
    w = v.wire("case", "c.yaml:1", build_request(url, "GET", list(headers)), m)
    d = decide(compiled, w.view)
    origins = {name: up.origin for name, up in m.upstreams.items()}
    return compiled, m, w, d, origins


# -- compare ---------------------------------------------------------------------------------------
def test_an_arrival_as_condroute_decides_has_no_difference(tmp_path):
    compiled, m, w, d, origins = setup(tmp_path, "http://shop.example/cart?x=1", [("X-Ab", "B"), ("X-Debug", "1")])
    got = answer_from("b", "/base/cart?x=1", [("Host", "127.0.0.1:9002"), ("X-Ab", "B"), ("X-Variant", "B"),
                                              ("X-Forwarded-For", "127.0.0.1"), (v.CASE_HEADER, "1")])
    assert v.compare(d, w, got, origins, compiled, "gw") == []


@pytest.mark.parametrize("arrival, wanted", [
    (("a", "/base/cart?x=1", [("Host", "127.0.0.1:9002"), ("X-Ab", "B"), ("X-Variant", "B")]),
     ["upstream: condroute b, gw a"]),
    (("b", "/cart?x=1", [("Host", "127.0.0.1:9002"), ("X-Ab", "B"), ("X-Variant", "B")]),
     ["path: condroute /base/cart?x=1, gw /cart?x=1"]),
    (("b", "/base/cart?x=1", [("Host", "shop.example"), ("X-Ab", "B"), ("X-Variant", "B")]),
     ["header host: condroute 127.0.0.1:9002, gw shop.example"]),
    (("b", "/base/cart?x=1", [("Host", "127.0.0.1:9002"), ("X-Ab", "B"), ("X-Variant", "B"), ("X-Debug", "1")]),
     ["header x-debug: condroute absent, gw 1"]),
    (("b", "/base/cart?x=1", [("Host", "127.0.0.1:9002"), ("X-Ab", "B")]),
     ["header x-variant: condroute B, gw absent"]),
    (("b", "/base/cart?x=1", [("Host", "127.0.0.1:9002"), ("X-Ab", "B"), ("X-Variant", "B"), ("X-Added", "1")]),
     ["header x-added: condroute absent, gw 1"]),
])
def test_each_difference_of_an_arrival_is_named(tmp_path, arrival, wanted):
    compiled, m, w, d, origins = setup(tmp_path, "http://shop.example/cart?x=1", [("X-Ab", "B"), ("X-Debug", "1")])
    assert v.compare(d, w, answer_from(*arrival), origins, compiled, "gw") == wanted


def test_repeated_header_fields_folded_into_one_are_the_same(tmp_path):
    compiled, m, w, d, origins = setup(tmp_path, "http://shop.example/", [("X-Ab", "B"), ("X-Ab", "B")])
    folded = answer_from("b", "/base/", [("Host", "127.0.0.1:9002"), ("X-Ab", "B,B"), ("X-Variant", "B")])
    assert v.compare(d, w, folded, origins, compiled, "gw") == []
    other = answer_from("b", "/base/", [("Host", "127.0.0.1:9002"), ("X-Ab", "B"), ("X-Variant", "B")])
    assert v.compare(d, w, other, origins, compiled, "gw") == ["header x-ab: condroute [B, B], gw B"]


def test_a_split_arm_is_compared_with_its_own_base_path_and_host(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent("""\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001/one", b: "http://127.0.0.1:9002/two"}
        routes:
          - name: r
            backends:
              - name: s
                split: {by: "cookie:uid", weights: {a: 50, b: 50}}
        """))
    compiled, m = read(str(p))
    origins = {name: up.origin for name, up in m.upstreams.items()}
    w = v.wire("c", "x:1", build_request("http://shop.example/x", cookies=["uid=7"]), m)
    d = decide(compiled, w.view)
    other = "b" if d.upstream == "a" else "a"
    up = m.upstreams[other]
    arrived = answer_from(other, f"{up.base_path}/x", [("Host", up.authority), ("Cookie", "uid=7")])
    assert v.compare(d, w, arrived, origins, compiled, "gw") == []
    wrong = answer_from(other, f"{m.upstreams[d.upstream].base_path}/x", [("Host", up.authority), ("Cookie", "uid=7")])
    assert v.compare(d, w, wrong, origins, compiled, "gw") == [
        f"path: condroute {up.base_path}/x, gw {m.upstreams[d.upstream].base_path}/x"]


def test_a_direct_answer_is_compared_by_status_body_and_headers(tmp_path):
    compiled, m, w, d, origins = setup(tmp_path, "http://shop.example/", [("X-Ab", "block")])
    assert d.outcome == "respond"
    good = v.Answer(403, [("X-Why", "blocked")], b"no\n")
    assert v.compare(d, w, good, origins, compiled, "gw") == []
    bad = v.Answer(404, [], b"nope")
    assert v.compare(d, w, bad, origins, compiled, "gw") == [
        "status: condroute 403, gw 404", "body: condroute 'no\\n', gw 'nope'",
        "response header X-Why: condroute 'blocked', gw None"]
    forwarded = answer_from("a", "/", [("Host", "127.0.0.1:9001")])
    assert v.compare(d, w, forwarded, origins, compiled, "gw") == ["condroute answers 403, gw sent it to a"]


def test_an_answer_to_head_has_no_body_to_compare(tmp_path):
    compiled, m = read(rules_file(tmp_path))
    w = v.wire("c", "x:1", build_request("http://shop.example/", "HEAD", [("X-Ab", "block")]), m)
    d = decide(compiled, w.view)
    assert v.compare(d, w, v.Answer(403, [("X-Why", "blocked")], b""), {}, compiled, "gw") == []
    assert v.compare(d, w, v.Answer(200, [("X-Why", "blocked")], b""), {}, compiled, "gw") == [
        "status: condroute 403, gw 200"]


def test_no_route_is_the_gateways_own_404(tmp_path):
    compiled, m, w, d, origins = setup(tmp_path, "http://other.example/")
    assert d.outcome == "passthrough"
    assert v.compare(d, w, v.Answer(404, [], b"no route\n"), origins, compiled, "gw") == []
    assert v.compare(d, w, v.Answer(200, [], b""), origins, compiled, "gw") == [
        "status: condroute passes it through (no route) (404 from the gateway), gw 200"]


def test_the_token_goes_where_settings_jwt_from_says(tmp_path):
    p = tmp_path / "j.yaml"
    p.write_text(RULES.replace("routes:", "settings: {jwt: {from: 'cookie:tok', verify: false}}\nroutes:"))
    compiled, m = read(str(p))
    w = v.wire("c", "x:1", build_request("http://shop.example/", jwt="T0K"), m)
    assert ("Cookie", "tok=T0K") in w.headers
    assert w.view.jwt_token is None and ("Cookie", "tok=T0K") in list(w.view.headers)
    compiled2, m2 = read(rules_file(tmp_path))
    w2 = v.wire("c", "x:1", build_request("http://shop.example/", jwt="T0K"), m2)
    assert ("Authorization", "Bearer T0K") in w2.headers


def test_a_case_without_a_client_address_comes_from_loopback(tmp_path):
    compiled, m, w, d, origins = setup(tmp_path, "http://shop.example/")
    assert w.client_ip == "127.0.0.1" and w.view.peer == "127.0.0.1"


# -- the recording backend ---------------------------------------------------------------------------
def test_the_recording_backend_answers_with_what_it_received(tmp_path):
    compiled, m, w, d, origins = setup(tmp_path, "http://shop.example/x?y=1", [("X-Ab", "B")])
    rec = v.Recorder("b")
    try:
        a = v.send(rec.port, w, 7)
    finally:
        rec.close()
    got = a.arrival
    assert got["upstream"] == "b" and got["target"] == "/x?y=1" and got["method"] == "GET"
    assert ["X-Ab", "B"] in got["headers"] and [v.CASE_HEADER, "7"] in got["headers"]
    assert [v.CLIENT_HEADER, "127.0.0.1"] in got["headers"]
    assert rec.arrivals == [got]


# -- a whole run against a stand-in gateway -------------------------------------------------------------
FORWARDER = textwrap.dedent("""\
    import http.client, json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    conf = json.load(open(sys.argv[1]))
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_GET(self):
            host, port = conf["to"]
            c = http.client.HTTPConnection(host, port)
            c.putrequest("GET", self.path, skip_host=True, skip_accept_encoding=True)
            for k, val in self.headers.items():
                c.putheader(k, conf["host"] if k.lower() == "host" else val)
            c.endheaders()
            r = c.getresponse(); body = r.read()
            self.send_response(r.status)
            for k, val in r.getheaders():
                if k.lower() not in ("connection", "transfer-encoding"):
                    self.send_header(k, val)
            self.end_headers(); self.wfile.write(body)
    ThreadingHTTPServer(("127.0.0.1", conf["port"]), H).serve_forever()
""")


class AlwaysA(Target):
    """A 'gateway' that sends everything to upstream a, with a's Host: right for the fallback only."""
    name = "always-a"
    config_name = "conf.json"

    def export(self, rules, opts: ExportOptions) -> Exported:
        up = rules.upstreams["a"]
        return Exported(json.dumps({"port": opts.listen_port, "to": list(opts.addresses[up.origin]),
                                    "host": up.authority}), files={"fwd.py": FORWARDER})

    def binary(self):
        return sys.executable, ""

    def check(self, workdir):
        return None if os.path.exists(os.path.join(workdir, "conf.json")) else "no conf.json"

    def start(self, workdir, opts):
        return subprocess.Popen([sys.executable, "fwd.py", "conf.json"], cwd=workdir, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_a_run_passes_what_agrees_and_names_what_does_not(tmp_path):
    compiled, m = read(rules_file(tmp_path))
    reqs = [("fallback", build_request("http://shop.example/p")),
            ("header b", build_request("http://shop.example/p", headers=[("X-Ab", "B")]))]
    wires = [v.wire(n, f"cases:{i}", r, m) for i, (n, r) in enumerate(reqs, 1)]
    keep = tmp_path / "run"
    keep.mkdir()
    res = v.run(AlwaysA(), compiled, m, wires, keep=str(keep))
    assert (res.passed, res.failed) == (1, 1)
    assert res.lines == ["FAIL  header b (cases:2): upstream: condroute b, always-a a"]


@pytest.mark.slow
def test_a_gateway_that_never_listens_is_reported_and_stopped(tmp_path, monkeypatch):
    class Mute(AlwaysA):
        def start(self, workdir, opts):
            return subprocess.Popen([sys.executable, "-c", "import sys; print('bad config', file=sys.stderr); sys.exit(3)"],
                                    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    compiled, m = read(rules_file(tmp_path))
    res = v.run(Mute(), compiled, m, [])
    assert res.failed == 1 and res.lines == ["the gateway exited with status 3: bad config"]


# -- the command line ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["export", "--to", "frob", "r.yaml"], "condroute export: unknown target 'frob'; the targets are"),
    (["export", "r.yaml"], "condroute export: missing --to"),
    (["export", "--to", "{t}", "--verify", "r.yaml"], "condroute export: --verify needs --cases CASES"),
    (["export", "--to", "{t}", "--cases", "c.yaml", "r.yaml"], "condroute export: --cases and --flows go with --verify"),
    (["export", "--to", "{t}", "--listen", "x", "r.yaml"], "condroute export: --listen takes [HOST:]PORT"),
    (["export", "--to", "{t}", "--verify", "--cases", "missing.yaml", "r.yaml"],
     "condroute export: cannot read the cases file missing.yaml"),
])
def test_command_line_mistakes_are_one_sentence_and_exit_2(argv, message, capsys, monkeypatch, tmp_path):
    from condroute.export.targets import NAMES
    if not NAMES:
        pytest.skip("no export target module yet")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(RULES)
    (tmp_path / "c.yaml").write_text("- request: {url: 'http://shop.example/'}\n  expect: {backend: to-a}\n")
    assert main([a.replace("{t}", NAMES[0]) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert "Traceback" not in err


def test_a_rules_file_that_does_not_load_is_reported_located(capsys, tmp_path):
    from condroute.export.targets import NAMES
    if not NAMES:
        pytest.skip("no export target module yet")
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\nroutes:\n  - name: x\n    backends: [{name: b, upstream: nowhere}]\n")
    assert main(["export", "--to", NAMES[0], str(p)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{p}:4:") and "nowhere" in err



def test_upstream_overrides_replace_the_address_in_the_model_and_in_the_decisions(tmp_path):
    compiled, m = read(rules_file(tmp_path), {"b": "https://shop-b.prod.svc/v2"})
    assert (m.upstreams["b"].scheme, m.upstreams["b"].authority, m.upstreams["b"].base_path) == \
        ("https", "shop-b.prod.svc", "/v2")
    backend_b = m.routes[0].backends[0]
    assert backend_b.upstream.host == "shop-b.prod.svc"      # the backends' references too
    d = decide(compiled, build_request("http://shop.example/x", headers=[("X-Ab", "B")]))
    assert d.url == "https://shop-b.prod.svc/v2/x"
    with pytest.raises(ValueError, match="has no upstream 'c' to replace \\(its upstreams: a, b\\)"):
        read(rules_file(tmp_path), {"c": "http://x"})


@pytest.mark.parametrize("value", ["b", "b=", "=http://x", "b=svc:80"])
def test_a_bad_upstream_override_is_one_sentence(value, capsys, tmp_path):
    from condroute.export.targets import NAMES
    if not NAMES:
        pytest.skip("no export target module yet")
    assert main(["export", "--to", NAMES[0], rules_file(tmp_path), "--upstream", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("condroute export: --upstream takes NAME=URL such as stable=http://shop-api.prod:8080")


def write_flows(path, requests):
    from mitmproxy import io as mio
    from mitmproxy.test import tflow
    with open(path, "wb") as f:
        w = mio.FlowWriter(f)
        for method, host, p, headers in requests:
            fl = tflow.tflow(resp=True)
            fl.request.method, fl.request.scheme, fl.request.host, fl.request.port = method, "http", host, 80
            fl.request.path = p
            fl.request.headers.clear()
            fl.request.headers["Host"] = host
            for k, val in headers:
                fl.request.headers.add(k, val)
            w.add(fl)


@pytest.mark.slow
def test_flows_of_a_mitmdump_file_are_sent_through_the_gateway_too(tmp_path, capsys):
    from condroute.export.targets import NAMES, target
    if "nginx" not in NAMES or target("nginx").binary()[0] is None:
        pytest.skip("nginx is not installed (pip install 'condroute[gateways]')")
    dump = tmp_path / "traffic.mitm"
    write_flows(dump, [("GET", "shop.example", "/cart?x=1", [("X-Ab", "B")]),
                       ("GET", "shop.example", "/", [("X-Ab", "block")]),
                       ("POST", "other.example", "/", [])])
    assert main(["export", "--to", "nginx", "--verify", rules_file(tmp_path), "--flows", str(dump)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "3 passed, 0 failed"


def test_flows_become_requests_as_the_client_sent_them(tmp_path):
    import argparse
    from condroute.cli.export import _wires
    dump = tmp_path / "traffic.mitm"
    write_flows(dump, [("GET", "shop.example", "/cart?x=1", [("X-Ab", "B")])])
    compiled, m = read(rules_file(tmp_path))
    (w,) = _wires(argparse.Namespace(cases=None, flows=str(dump)), m)
    assert (w.method, w.target, w.where) == ("GET", "/cart?x=1", f"{dump}#1")
    assert ("X-Ab", "B") in w.headers and decide(compiled, w.view).backend == "to-b"


@pytest.mark.slow
def test_an_https_case_is_skipped_with_its_reason(tmp_path):
    compiled, m = read(rules_file(tmp_path))
    wires = [v.wire("tls", "cases:1", build_request("https://shop.example/p"), m),
             v.wire("plain", "cases:2", build_request("http://shop.example/p"), m)]
    res = v.run(AlwaysA(), compiled, m, wires)
    assert (res.passed, res.failed, res.skipped) == (1, 0, 1)
    assert res.lines == ["skip  tls (cases:1): an https:// request; the verifier speaks plain HTTP to the gateway"]


def test_only_cases_decided_by_a_route_with_a_refused_part_are_skipped(tmp_path):
    compiled, m = read(rules_file(tmp_path))
    f = m.file
    def touched(url, headers, refused):
        return v._touches_refused(compiled, decide(compiled, build_request(url, headers=headers)), refused)
    assert touched("http://shop.example/", [("X-Ab", "B")], {(f, 11)})          # to-b's when (line 11)
    assert touched("http://shop.example/", [], {(f, 11)})                       # the fallback: same route
    assert not touched("http://other.example/", [], {(f, 11)})                  # no route decides nothing
    assert not touched("http://shop.example/", [], {(f, 2)})                    # the upstreams, not a route
    assert not touched("http://shop.example/", [], {("elsewhere.yaml", 11)})


@pytest.mark.slow
def test_ctrl_c_during_a_run_stops_the_gateway_and_the_recorders(tmp_path, monkeypatch):
    started = []

    class Recorded(AlwaysA):
        def start(self, workdir, opts):
            proc = super().start(workdir, opts)
            started.append(proc)
            return proc

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    compiled, m = read(rules_file(tmp_path))
    monkeypatch.setattr(v, "send", interrupted)
    closed, close = [], v.Recorder.close
    monkeypatch.setattr(v.Recorder, "close", lambda self: closed.append(self.port) or close(self))
    with pytest.raises(KeyboardInterrupt):
        v.run(Recorded(), compiled, m, [v.wire("c", "x:1", build_request("http://shop.example/"), m)])
    (proc,) = started
    assert proc.poll() is not None            # stopped, not left running
    assert len(closed) == 2                   # both recording backends


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys, tmp_path):
    import condroute.cli.export as cli_export
    from condroute.export.targets import NAMES
    if not NAMES:
        pytest.skip("no export target module yet")

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_export, "read", interrupted)
    assert main(["export", "--to", NAMES[0], rules_file(tmp_path)]) == 130
    assert capsys.readouterr().err == "condroute: interrupted\n"


def test_allow_partial_writes_the_rest_and_exits_0(tmp_path, capsys):
    from condroute.export.targets import NAMES
    if "nginx" not in NAMES:
        pytest.skip("no nginx export")
    p = tmp_path / "g.yaml"
    p.write_text(RULES.replace("when: {header: {X-Ab: block}}", "when: {cel: 'size(request.path) > 100'}"))
    out = tmp_path / "out" / "nginx.conf"
    out.parent.mkdir()
    assert main(["export", "--to", "nginx", str(p), "-o", str(out)]) == 1
    assert not out.exists()                                   # nothing written without --allow-partial
    err = capsys.readouterr().err
    assert f"{p}:15:16: not exported to nginx: cel" in err
    assert main(["export", "--to", "nginx", str(p), "-o", str(out), "--allow-partial"]) == 0
    assert out.exists() and "to-b" in out.read_text()


def test_non_ascii_header_values_go_and_come_back_as_utf_8(tmp_path):
    compiled, m = read(rules_file(tmp_path))
    w = v.wire("c", "x:1", build_request("http://shop.example/", headers=[("X-Name", "été 🙂")]), m)
    rec = v.Recorder("line\nbreak")
    try:
        a = v.send(rec.port, w, 1)
    finally:
        rec.close()
    assert ["X-Name", "été 🙂"] in a.arrival["headers"]
    assert a.arrival["upstream"] == "line\nbreak"                      # the name in the body, as written
    assert a.header(v.RECORDED_BY) == "line\\nbreak"                    # the header stays one line


@pytest.mark.slow
def test_a_request_that_cannot_be_written_is_a_failure_line_not_a_traceback(tmp_path):
    compiled, m = read(rules_file(tmp_path))
    wires = [v.wire("space", "cases:1", build_request("http://shop.example/a b"), m)]
    res = v.run(AlwaysA(), compiled, m, wires)
    assert res.failed == 1 and res.lines[0].startswith("FAIL  space (cases:1): cannot send this request: ")
