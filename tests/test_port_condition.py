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
