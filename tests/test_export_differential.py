"""Differential: generated rule sets (inside what every gateway target exports exactly) and generated
requests, condroute's decision against the real gateway running the export — zero differences.

Each example exports one generated rules file, starts the gateway once (export/verify.py) and sends
every generated request through it. The examples are derandomized so that CI is repeatable;
``CONDROUTE_DIFF_EXAMPLES=200`` (and ``CONDROUTE_DIFF_SEED``) explores further by hand."""
from __future__ import annotations

import os

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from condroute.explain import build_request
from condroute.export import verify as v
from condroute.export.targets import NAMES, read, target

pytestmark = pytest.mark.slow

GATEWAYS = [n for n in ("nginx", "haproxy", "envoy") if n in NAMES]
EXAMPLES = int(os.environ.get("CONDROUTE_DIFF_EXAMPLES", "8"))

HOSTS = ["shop.example", "api.example", "a.shop.example"]
WORDS = ["B", "b", "beta", "Beta-1", "x.y", "10", "eu-north", "a b"]
HEADERS = ["X-Ab", "X-Tenant", "User-Agent"]
COOKIES = ["ab", "uid", "Ab"]
QUERY = ["tenant", "v"]
PATHS = ["/", "/cart", "/api/v1/x", "/api", "/users/7", "/users/7/orders", "/apix"]

word = st.sampled_from(WORDS)


def matcher():
    simple = st.one_of(
        word,
        st.lists(word, min_size=1, max_size=3, unique=True),
        st.builds(lambda w: {"equals": w}, word),
        st.builds(lambda w, ic: {"prefix": w[:2], "ignore_case": ic}, word, st.booleans()),
        st.builds(lambda w: {"suffix": w[-2:]}, word),
        st.builds(lambda w: {"contains": w[1:3] or w}, word),
        st.builds(lambda w, ic: {"equals": w, "ignore_case": ic}, word, st.booleans()),
        st.builds(lambda w: {"regex": f"^{w[:1]}"}, st.sampled_from(["B", "b", "e", "1"])),
        st.builds(lambda p: {"present": p}, st.booleans()),
    )
    return st.one_of(simple, st.builds(lambda m: {"not": m}, simple))


def atom():
    return st.one_of(
        st.builds(lambda n, m: {"header": {n: m}}, st.sampled_from(HEADERS), matcher()),
        st.builds(lambda n, m: {"cookie": {n: m}}, st.sampled_from(COOKIES), matcher()),
        st.builds(lambda n, m: {"query": {n: m}}, st.sampled_from(QUERY), matcher()),
    )


condition = st.recursive(atom(), lambda inner: st.one_of(
    st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda x: {"not": x}, inner),
), max_leaves=4)


@st.composite
def backend(draw, i: int, params: tuple[str, ...], rest: bool):
    b: dict = {"name": f"b{i}"}
    if draw(st.booleans()):
        b["when"] = draw(condition)
    kind = draw(st.sampled_from(["upstream", "upstream", "upstream", "respond"]))
    if kind == "respond":
        b["respond"] = {"status": draw(st.sampled_from([200, 403, 418])), "body": f"answer {i}\n"}
        return b
    b["upstream"] = draw(st.sampled_from(["a", "b", "c"]))
    templates = ["/fixed", "/v2{path}"] + [f"/p/{{{p}}}" for p in params] + (["/r/{rest}"] if rest else [])
    if draw(st.booleans()):
        b["path"] = draw(st.sampled_from(templates))
    if draw(st.booleans()):
        b["set_headers"] = {"X-Variant": draw(st.sampled_from(["A", "B"]))}
    if draw(st.booleans()):
        b["remove_headers"] = [draw(st.sampled_from(HEADERS))]
    if draw(st.booleans()):
        b["preserve_host"] = True
    return b


@st.composite
def route(draw, i: int):
    r: dict = {"name": f"r{i}"}
    match: dict = {}
    params: tuple[str, ...] = ()
    rest = False
    if draw(st.booleans()):
        match["host"] = draw(st.sampled_from(HOSTS + ["*.shop.example", ["api.example", "shop.example"]]))
    p = draw(st.sampled_from([None, "/users/{id}", "/api/*", "/cart", "/users/{id}/orders"]))
    if p is not None:
        match["path"] = p
        params = ("id",) if "{id}" in p else ()
        rest = p.endswith("/*")
    if draw(st.booleans()):
        match["methods"] = draw(st.sampled_from([["GET"], ["POST", "PUT"]]))
    if draw(st.integers(0, 3)) == 0:
        match.update(draw(atom()))
    if match:
        r["match"] = match
    n = draw(st.integers(1, 3))
    backs = [draw(backend(j, params, rest)) for j in range(n)]
    if draw(st.booleans()):
        fb = draw(backend(n, params, rest))
        fb.pop("when", None)
        fb["fallback"] = True
        backs.append(fb)
    r["backends"] = backs
    return r


@st.composite
def rules_text(draw):
    doc = {"version": 1,
           "upstreams": {"a": "http://127.0.0.1:9001", "b": "http://127.0.0.1:9002/base", "c": "http://127.0.0.1:9003"},
           "routes": [draw(route(i)) for i in range(draw(st.integers(1, 4)))]}
    if draw(st.booleans()):
        doc["settings"] = {"on_no_match": "error"}
    return yaml.safe_dump(doc, sort_keys=False)


@st.composite
def request(draw):
    headers = [(n, draw(word)) for n in draw(st.lists(st.sampled_from(HEADERS), max_size=3))]
    cookies = [f"{n}={draw(word).replace(' ', '')}" for n in draw(st.lists(st.sampled_from(COOKIES), max_size=2, unique=True))]
    q = draw(st.lists(st.sampled_from(QUERY), max_size=2))
    query = "&".join(f"{n}={draw(word).replace(' ', '+')}" for n in q)
    url = f"http://{draw(st.sampled_from(HOSTS + ['other.example']))}{draw(st.sampled_from(PATHS))}"
    return build_request(url + (f"?{query}" if query else ""), draw(st.sampled_from(["GET", "POST", "PUT"])),
                         headers, cookies)


@pytest.mark.parametrize("gateway", GATEWAYS)
@settings(max_examples=EXAMPLES, deadline=None, derandomize="CONDROUTE_DIFF_SEED" not in os.environ,
          suppress_health_check=list(HealthCheck), database=None,
          phases=[Phase.explicit, Phase.generate])   # no shrinking: each example starts a gateway
@given(text=rules_text(), requests=st.lists(request(), min_size=8, max_size=16))
def test_the_gateway_routes_every_request_as_condroute_does(gateway, text, requests, tmp_path_factory):
    t = target(gateway)
    exe, why = t.binary()
    if exe is None:
        pytest.skip(why)
    path = tmp_path_factory.mktemp("diff") / "rules.yaml"
    path.write_text(text)
    compiled, m = read(str(path))
    wires = [v.wire(f"request {i}: {r.describe()}", f"#{i}", r, m) for i, r in enumerate(requests, 1)]
    # what a target refuses (located) is left out; what it exports must route exactly as condroute
    res = v.run(t, compiled, m, wires, allow_partial=True)
    assert res.failed == 0, text + "\n" + "\n".join(res.lines)
    assert res.passed + res.skipped == len(wires)
    SEEN[gateway] = SEEN.get(gateway, 0) + res.passed


SEEN: dict[str, int] = {}


@pytest.mark.parametrize("gateway", GATEWAYS)
def test_the_differential_run_compared_requests_on_every_gateway(gateway):
    """Refusals must not hollow the test above out: most generated requests were compared."""
    if gateway not in SEEN:
        pytest.skip("the differential test did not run for this gateway (deselected, or no binary)")
    assert SEEN[gateway] >= EXAMPLES * 4
