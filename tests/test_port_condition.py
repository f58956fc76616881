"""The `port` condition: the destination port the client asked for. Added as one module
(addon/condroute/conditions/port.py) to show how a condition kind is added."""
from __future__ import annotations

import httpx
import pytest

from condroute.cli.schema import build_schema
from condroute.conditions.registry import CONDITION_KEYS, KINDS
from condroute.engine import decide
from condroute.errors import RulesError
from condroute.request import RequestView
from condroute.rules import load_rules_text

RULES = """
version: 1
routes:
  - name: by-port
    backends:
      - {name: admin, when: {port: 8443}, respond: {status: 200, body: admin}}
      - {name: high, when: {port: {ge: 9000, lt: 9100}}, respond: {status: 200, body: high}}
      - {name: either, when: {port: [81, "82"]}, respond: {status: 200, body: either}}
      - {name: other, fallback: true, respond: {status: 200, body: other}}
"""


def pick(rules, url: str) -> tuple[str | None, list]:
    d = decide(rules, RequestView.from_url(url), explain=True)
    return d.backend, d.trail


def test_the_kind_is_registered_and_in_the_schema():
    assert "port" in CONDITION_KEYS
    assert KINDS["port"].in_match
    s = build_schema()
    assert "port" in s["$defs"]["condition"]["properties"]
    assert "port" in s["$defs"]["route"]["properties"]["match"]["properties"]


@pytest.mark.parametrize("url, backend", [
    ("http://a.example:8443/", "admin"),
    ("https://a.example:8443/x", "admin"),
    ("http://a.example:9000/", "high"),
    ("http://a.example:9099/", "high"),
    ("http://a.example:9100/", "other"),
    ("http://a.example:81/", "either"),
    ("http://a.example:82/", "either"),
    ("http://a.example/", "other"),          # 80, the scheme's default
    ("https://a.example/", "other"),         # 443
])
def test_port_selects_the_backend(url, backend):
    assert pick(load_rules_text(RULES), url)[0] == backend


def test_a_failed_port_condition_is_a_reason_not_an_error():
    backend, trail = pick(load_rules_text(RULES), "http://a.example:8080/")
    assert backend == "other"
    reasons = {name: reason for name, held, reason, _fb in trail if not held}
    assert reasons["admin"] == 'port is "8080", wanted "8443"'
    assert "8080" in reasons["high"]


def test_port_in_a_route_match():
    rules = load_rules_text("""
version: 1
routes:
  - name: tls-only
    match: {path: /pay/*, port: 443}
    backends: [{name: ok, respond: {status: 200}}]
""")
    assert decide(rules, RequestView.from_url("https://shop.example/pay/1")).route == "tls-only"
    assert decide(rules, RequestView.from_url("http://shop.example/pay/1")).route is None


def test_the_adapter_can_say_which_port_was_asked_for():
    v = RequestView.from_url("http://a.example:9001/")
    assert v.dest_port == 9001
    v.asked_port = 8443         # reverse mode: the Host header's port
    assert v.dest_port == 8443
    assert decide(load_rules_text(RULES), v).backend == "admin"


@pytest.mark.parametrize("value, where", [
    ("http", "7:22"), ("0", "7:22"), ("65536", "7:22"), ("[80, x]", "7:27"), ("-1", "7:22"), ("80.5", "7:22"),
])
def test_a_bad_port_is_a_located_error(value, where):
    text = f"""
version: 1
routes:
  - name: r
    backends:
      - name: a
        when: {{port: {value}}}
        respond: {{status: 200}}
"""
    with pytest.raises(RulesError) as e:
        load_rules_text(text, "p.yaml")
    msg = str(e.value)
    assert msg.startswith(f"p.yaml:{where}: port must be a port number from 1 to 65535"), msg


@pytest.mark.slow
def test_port_routes_through_a_real_mitmdump(echo, rules_file, proxy):
    a, b = echo("svc-a"), echo("svc-b")
    a_port = int(a.rsplit(":", 1)[1])
    rules = rules_file(f"""
        version: 1
        routes:
          - name: by-port
            backends:
              - {{name: to-b, when: {{port: {a_port}}}, upstream: "{b}"}}
    """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=10) as c:
        # the client asks for svc-a's port: the rule sends it to svc-b
        r = c.get(f"{a}/x")
        assert r.json()["backend"] == "svc-b"
        assert r.headers["X-Condroute"] == "by-port/to-b -> " + b
        # another port: no backend holds, the request goes where it was going
        r = c.get(f"{b}/y")
        assert r.json()["backend"] == "svc-b"
        assert r.headers["X-Condroute"] == "passthrough"


# -- through the addon, with mitmproxy's own test harness ------------------------------------------
PORT_RULES = """
version: 1
routes:
  - name: by-port
    backends:
      - {name: admin, when: {port: 8443}, respond: {status: 201, body: admin}}
      - {name: plain, when: {port: 80}, respond: {status: 202, body: plain}}
"""


def _flow(host: str, port: int, fields, mode: str, authority: bytes = b"", h2: bool = False, tls: bool = False):
    from mitmproxy import http
    from mitmproxy.proxy.mode_specs import ProxyMode
    from mitmproxy.test import tflow
    f = tflow.tflow()
    f.request = http.Request(host, port, b"GET", b"http", authority, b"/", b"HTTP/2.0" if h2 else b"HTTP/1.1",
                             http.Headers(fields), b"", None, 0, 0)
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    f.client_conn.timestamp_tls_setup = f.client_conn.timestamp_tls_setup or 1.0 if tls else None
    f.server_conn.address = (host, port) if mode.startswith("reverse") else None
    return f


@pytest.fixture
def port_addon(tmp_path):
    from mitmproxy.test import taddons

    from condroute.mitm.addon import ConditionalRouting
    p = tmp_path / "ports.yaml"
    p.write_text(PORT_RULES)
    a = ConditionalRouting()
    with taddons.context(a) as tctx:
        tctx.configure(a, condroute_rules=str(p))
        yield a


def _status(f) -> int | None:
    return ((f.metadata.get("condroute") or {}).get("answer") or {}).get("status")


def test_regular_mode_port_is_the_targets(port_addon):
    f = _flow("shop.example", 8443, [(b"Host", b"shop.example:8443")], "regular")
    port_addon.route(f)
    assert _status(f) == 201
    f = _flow("shop.example", 80, [(b"Host", b"shop.example")], "regular")
    port_addon.route(f)
    assert _status(f) == 202


@pytest.mark.parametrize("fields, authority, h2, status", [
    ([(b"Host", b"shop.example:8443")], b"", False, 201),       # the port the client wrote in Host
    ([(b"Host", b"[::1]:8443")], b"", False, 201),
    ([(b"Host", b"shop.example")], b"", False, 202),             # none: the connection's default (80)
    ([], b"shop.example:8443", True, 201),                       # HTTP/2 :authority
    ([(b"Host", b"shop.example:9999")], b"", False, None),      # another port: no backend holds
])
def test_reverse_mode_port_is_the_host_headers(port_addon, fields, authority, h2, status):
    # the target is 10.1.1.1:9001 whatever the client asked for; the rule reads what it asked for
    f = _flow("10.1.1.1", 9001, fields, "reverse:http://10.1.1.1:9001", authority, h2)
    port_addon.route(f)
    assert _status(f) == status


def test_reverse_mode_over_tls_defaults_to_443(port_addon):
    f = _flow("10.1.1.1", 9001, [(b"Host", b"shop.example")], "reverse:https://10.1.1.1:9001", tls=True)
    port_addon.route(f)
    assert _status(f) is None          # 443: neither 8443 nor 80
    f = _flow("10.1.1.1", 9001, [(b"Host", b"shop.example:80")], "reverse:https://10.1.1.1:9001", tls=True)
    port_addon.route(f)
    assert _status(f) == 202
