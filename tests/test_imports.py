"""`imports:` (rules-format "Imports"): other files' routes after the importing file's own, each
file's problems located in it, service names through the importing file's upstreams, and the hot
reload watching every imported file. The importers themselves have their own tests
(test_import_httproute*, test_import_istio*, test_krakend_*)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from condroute.engine import decide
from condroute.errors import RulesError
from condroute.load import services
from condroute.load.ctx import CompileCtx, Importer
from condroute.load.yamlpos import Docs, parse_text
from condroute.node import Y
from condroute.request import RequestView
from condroute.rules import load_rules, load_rules_text

KRAKEND = """{"version": 3, "endpoints": [
  {"endpoint": "/k/{id}", "method": "GET",
   "backend": [{"host": ["http://127.0.0.1:%d"], "url_pattern": "/kd/{id}"}]}
]}
"""

MAIN = """version: 1
upstreams:
  local: http://127.0.0.1:9001
  reviews/v2: http://127.0.0.1:9002
routes:
  - name: mine
    match: {path: /k/mine}
    backends: [{name: b, upstream: local}]
imports: [sub/k.json]
"""


def write(tmp_path: Path, krakend_port: int = 9100) -> Path:
    (tmp_path / "sub").mkdir(exist_ok=True)
    (tmp_path / "sub" / "k.json").write_text(KRAKEND % krakend_port)
    main = tmp_path / "main.yaml"
    main.write_text(MAIN)
    return main


def routed(rules, url: str) -> tuple[str | None, int | None]:
    d = decide(rules, RequestView.from_url(url))
    return d.route, d.port


def test_imported_routes_come_after_the_files_own_and_route(tmp_path):
    rules = load_rules(str(write(tmp_path)))
    assert [r.name for r in rules.routes] == ["mine", "GET /k/{id}"]
    assert routed(rules, "http://x/k/mine") == ("mine", 9001)       # the file's own route first
    assert routed(rules, "http://x/k/7") == ("GET /k/{id}", 9100)
    assert rules.routes[1].file == str(tmp_path / "sub" / "k.json")
    assert [p for p, _ in rules.imports] == [str(tmp_path / "sub" / "k.json")]


def test_a_problem_in_an_imported_file_is_located_in_that_file(tmp_path):
    main = write(tmp_path)
    (tmp_path / "sub" / "k.json").write_text('{"version": 3, "endpoints": [\n {"endpoint": "/k", '
                                             '"backend": [{"host": ["ftp://h"]}]}]}')
    with pytest.raises(RulesError) as ei:
        load_rules(str(main))
    assert all(p.file == str(tmp_path / "sub" / "k.json") for p in ei.value.problems), ei.value
    assert ei.value.problems[0].line == 2
    assert ei.value.imported == ((str(tmp_path / "sub" / "k.json"), ei.value.imported[0][1]),)


@pytest.mark.parametrize("imports, message", [
    ("[nope.json]", "2:11: imports nope.json: cannot read the file: No such file or directory"),
    ("[main.yaml]", "2:11: imports main.yaml: a file cannot import itself"),
    ("[other.yaml]", "2:11: imports other.yaml: a condroute rules file: its routes can go in this file"),
    ("[sub/k.json, ./sub/k.json]", "2:23: imports ./sub/k.json: already imported at line 2"),
    ("[plain.txt]", "2:11: imports plain.txt: not an HTTPRoute or VirtualService manifest, nor a KrakenD"),
    ("sub/k.json", "2:10: imports must be a list, not a string"),
    ("[sub]", "2:11: imports sub: is a directory, not a regular file"),
])
def test_bad_imports_are_located_in_the_importing_file(tmp_path, imports, message):
    write(tmp_path)
    (tmp_path / "other.yaml").write_text("version: 1\nroutes: []\n")
    (tmp_path / "plain.txt").write_text("just: text\n")
    main = tmp_path / "main.yaml"
    main.write_text(f"version: 1\nimports: {imports}\n")
    with pytest.raises(RulesError) as ei:
        load_rules(str(main))
    assert f"{main}:{message}" in str(ei.value), str(ei.value)


def test_route_names_must_be_unique_across_imported_files(tmp_path):
    main = write(tmp_path)
    main.write_text(MAIN.replace("name: mine", "name: GET /k/{id}"))
    with pytest.raises(RulesError) as ei:
        load_rules(str(main))
    p = ei.value.problems[0]
    assert (p.file, p.line) == (str(tmp_path / "sub" / "k.json"), 2)
    assert "route name 'GET /k/{id}' is already used by main.yaml:6" in p.message


def test_upstream_names_may_name_a_service_and_subset_but_not_a_url():
    ok = load_rules_text("version: 1\nupstreams: {reviews/v2: 'http://127.0.0.1:1', 'svc:8080': 'http://127.0.0.1:2'}\n"
                         "routes: [{name: r, backends: [{name: b, upstream: reviews/v2}]}]\n", "f.yaml")
    assert ok.routes[0].backends[0].upstream.port == 1
    with pytest.raises(RulesError) as ei:
        load_rules_text("version: 1\nupstreams: {'http://x': 'http://127.0.0.1:1'}\nroutes: []\n", "f.yaml")
    assert "f.yaml:2:13: upstream name 'http://x' must be a name" in str(ei.value)


def test_service_names_resolve_in_order_or_list_every_name_to_define():
    cc = CompileCtx("routes.yaml")
    up = load_rules_text("version: 1\nupstreams: {web.shop: 'http://127.0.0.1:7'}\nroutes: []\n", "m.yaml").upstreams
    cc.upstreams.update(up)
    node = Y("x", 4, 9)
    assert services.resolve(cc, node, ["web:80", "web.shop", "web"], "backendRef web").port == 7
    assert services.resolve(cc, node, ["api:80", "api.shop", "api"], "backendRef api") is None
    assert str(cc.problems[-1]) == ("routes.yaml:4:9: backendRef api does not resolve to an upstream: import this "
                                    "file from a condroute file (`imports: [routes.yaml]`) whose upstreams define "
                                    "one of api:80, api.shop, api")
    cc.importer = Importer("/x/main.yaml", None)
    services.resolve(cc, node, ["api"], "backendRef api")
    assert cc.problems[-1].message.endswith("define one of api in the upstreams of main.yaml")


def test_a_stream_of_documents_is_kept_whole_and_empty_documents_are_dropped():
    root = parse_text("---\na: 1\n---\n---\nb: 2\n", "f.yaml")
    assert isinstance(root, Docs)
    assert [d.v["a" if i == 0 else "b"].v for i, d in enumerate(root.v)] == [1, 2]
    assert root.starts == [(1, 1), (4, 1)]
    assert not isinstance(parse_text("---\na: 1\n---\n", "f.yaml"), Docs)


def test_a_manifest_file_of_other_kinds_only_is_refused_and_names_them():
    with pytest.raises(RulesError) as ei:
        load_rules_text("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n"
                        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service}\n", "k.yaml")
    assert "k.yaml:1:1: no HTTPRoute or VirtualService in this file: nothing to route" in str(ei.value)
    with pytest.raises(RulesError) as ei:
        load_rules_text("apiVersion: gateway.networking.k8s.io/v1alpha1\nkind: HTTPRoute\n", "k.yaml")
    assert "k.yaml:1:13: HTTPRoute gateway.networking.k8s.io/v1alpha1 is not read" in str(ei.value)
    with pytest.raises(RulesError) as ei:
        load_rules_text("apiVersion: v1\nkind: Service\n---\n- a\n", "k.yaml")
    assert "k.yaml:4:1: document 2 is not a Kubernetes object" in str(ei.value)


# -- the hot reload watches imported files --------------------------------------------------------

def flow(path: str) -> http.HTTPFlow:
    return tflow.tflow(req=http.Request.make("GET", f"http://x.example{path}"))


def age(path: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


async def test_an_edited_imported_file_reloads_a_broken_one_keeps_the_rules_and_a_fix_reloads(addon, tmp_path, clock):
    main = write(tmp_path, 9100)
    k = tmp_path / "sub" / "k.json"
    age(main), age(k)
    addon.tctx.configure(addon, condroute_rules=str(main))
    gen = addon.generation
    assert addon.check_reload() is False                  # nothing changed
    k.write_text(KRAKEND % 9200)                           # the imported file changes, not main.yaml
    age(k)
    assert addon.check_reload() is False                  # first seen: settling
    assert addon.check_reload() is True
    assert addon.generation == gen + 1
    await addon.tctx.cycle(addon, f := flow("/k/1"))
    assert f.request.port == 9200
    k.write_text("{ broken")                               # a bad edit: the last good rules stay
    age(k)
    assert addon.check_reload() is False
    assert addon.check_reload() is False
    assert addon.generation == gen + 1 and "k.json:1:" in addon.last_error
    await addon.tctx.cycle(addon, f := flow("/k/1"))
    assert f.request.port == 9200
    assert addon.check_reload() is False                  # a failed version is not loaded again
    k.write_text(KRAKEND % 9300)                           # fixed
    age(k)
    assert addon.check_reload() is False
    assert addon.check_reload() is True
    await addon.tctx.cycle(addon, f := flow("/k/1"))
    assert f.request.port == 9300


def test_validate_locates_a_shadowed_imported_route_in_its_own_file(tmp_path, capsys):
    from condroute.cli.main import main
    (tmp_path / "h.yaml").write_text("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
                                     "metadata: {name: r}\nspec:\n  hostnames: [x.example]\n  rules:\n"
                                     "  - backendRefs: [{name: a, port: 80}]\n")
    main_file = tmp_path / "m.yaml"
    main_file.write_text("version: 1\nupstreams: {a: 'http://127.0.0.1:1'}\nroutes:\n"
                         "  - {name: all, backends: [{name: b, upstream: a}]}\nimports: [h.yaml]\n")
    assert main(["validate", str(main_file)]) == 0
    err = capsys.readouterr().err
    assert (f"{tmp_path / 'h.yaml'}:7:1: warning: route 'r#1' can never own a request: the earlier route 'all' "
            f"(m.yaml:4) comes first") in err, err


def test_an_httproute_loaded_directly_forwards_to_cluster_dns_names_and_says_how_to_map_them(tmp_path):
    f = tmp_path / "h.yaml"
    f.write_text("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: web}\n"
                 "spec:\n  hostnames: [x.example]\n  rules:\n  - backendRefs: [{name: api, port: 8080}]\n"
                 "  - matches: [{path: {value: /b}}]\n    backendRefs: [{name: b, port: 80}]\n")
    rules = load_rules(str(f))
    d = decide(rules, RequestView.from_url("http://x.example/a"))
    assert (d.host, d.port, d.upstream) == ("api.web.svc.cluster.local", 8080, "api.web.svc.cluster.local:8080")
    assert decide(rules, RequestView.from_url("http://x.example/b")).host == "b.web.svc.cluster.local"
    dns = [w for w in rules.warnings if "cluster DNS names" in w.message]
    assert len(dns) == 1 and (dns[0].line, dns[0].col) == (7, 26), dns
    assert "import the file from a condroute file whose upstreams define one of api:8080, api.web, api" in dns[0].message


def test_a_virtualservice_loaded_directly_reaches_services_by_dns_but_subsets_must_be_mapped(tmp_path):
    f = tmp_path / "vs.yaml"
    f.write_text("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\n"
                 "spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, port: {number: 9080}}\n")
    rules = load_rules(str(f))
    d = decide(rules, RequestView.from_url("http://reviews/r/1"))
    assert (d.host, d.port) == ("reviews.shop.svc.cluster.local", 9080)
    f.write_text(f.read_text().replace("{host: reviews, port: {number: 9080}}", "{host: reviews, subset: v2}"))
    with pytest.raises(RulesError) as ei:
        load_rules(str(f))
    assert "vs.yaml:8:27: destination reviews subset v2 does not resolve to an upstream" in str(ei.value)


def test_an_imported_krakend_endpoint_where_no_backend_holds_answers_502_as_krakend_does(tmp_path):
    (tmp_path / "k.json").write_text(
        '{"version": 3, "endpoints": [{"endpoint": "/c", "input_headers": ["X-V"], "backend": [\n'
        ' {"host": ["http://127.0.0.1:9100"], "url_pattern": "/c",\n'
        '  "extra_config": {"backend/conditional": {"strategy": "header", "name": "X-V", "value": "b"}}}]}]}')
    main_file = tmp_path / "m.yaml"
    main_file.write_text("version: 1\nimports: [k.json]\n")           # on_no_match: passthrough (default)
    rules = load_rules(str(main_file))
    d = decide(rules, RequestView.from_url("http://x/c"))
    assert (d.route, d.outcome, d.status) == ("GET /c", "no_match", 502)
    d = decide(rules, RequestView.from_url("http://x/c", headers=[("X-V", "b")]))
    assert (d.outcome, d.port) == ("routed", 9100)
    assert decide(rules, RequestView.from_url("http://x/other")).outcome == "passthrough"
