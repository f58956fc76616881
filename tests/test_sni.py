"""sni: the engine's decision, the name each upstream connection is given (connections.py) in
mitmproxy's harness, the hooks registered only while the rules need them, and the lint warnings.
End to end with a TLS backend: test_sni_e2e.py."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mitmproxy import connection, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow

from condroute.cli.lint import lint
from condroute.engine import decide
from condroute.errors import RulesError
from condroute.mitm.addon import ConditionalRouting
from condroute.mitm.connections import RELAY_HOST, Connections, Relay, needs, preserved_name
from condroute.mitm.health import Health
from condroute.request import RequestView
from condroute.rules import load_rules, load_rules_text

RULES = """
    version: 1
    routes:
      - name: api
        match: {host: api.test}
        backends:
          - {name: named, when: {path: /n}, upstream: "https://10.0.0.5:8443", sni: api.example.test}
          - {name: kept, when: {path: /k}, upstream: "https://10.0.0.5:8443", sni: preserve}
          - {name: none, upstream: "https://10.0.0.6:8443"}
    """


def rules(text: str = RULES):
    return load_rules_text(textwrap.dedent(text), "t.yaml")


def req(url: str) -> RequestView:
    return RequestView.from_url(url, method="GET", headers=[], peer="127.0.0.1")


# -- engine ---------------------------------------------------------------------------------------------
def test_decision_carries_the_backends_sni():
    r = rules()
    d = decide(r, req("http://api.test/n"))
    assert (d.backend, d.sni, d.throttle, d.host) == ("named", "api.example.test", None, "10.0.0.5")
    assert decide(r, req("http://api.test/k")).sni == "preserve"
    d = decide(r, req("http://api.test/other"))
    assert (d.backend, d.sni) == ("none", None)


def test_sni_is_refused_for_http_upstreams_and_respond_backends():
    with pytest.raises(RulesError) as e:
        rules("""
            version: 1
            routes:
              - name: r
                backends: [{name: b, upstream: "http://10.0.0.5", sni: x.test}]
            """)
    assert "https" in str(e.value)
    with pytest.raises(RulesError) as e:
        rules("""
            version: 1
            routes:
              - name: r
                backends: [{name: b, respond: {status: 200}, sni: x.test}]
            """)
    assert "respond backend has none" in str(e.value)


def test_needs():
    assert needs(None) == (False, False)
    assert needs(rules()) == (True, False)
    assert needs(rules(RULES.replace("sni: preserve", "throttle: {kbps: 8}"))) == (True, True)
    plain = rules("""
        version: 1
        routes:
          - name: r
            backends: [{name: b, upstream: "https://10.0.0.5"}]
        """)
    assert needs(plain) == (False, False)


def test_preserved_name():
    assert preserved_name("client.test", "other.test") == "client.test"     # the client's TLS name first
    assert preserved_name(None, "Shop.Test.") == "shop.test"                 # else the host it asked for
    assert preserved_name(None, "192.0.2.1") is None                         # never an IP: mitmproxy's default
    assert preserved_name(None, "[::1]") is None
    assert preserved_name(None, None) is None


# -- the name an upstream connection gets -----------------------------------------------------------------
def _hook_data(client: connection.Client, host: str, port: int) -> ServerConnectionHookData:
    server = connection.Server(address=(host, port))
    server.sni = host          # what HttpLayer.get_connection sets
    return ServerConnectionHookData(server=server, client=client)


def _routed_flow(url: str, client_sni: str | None = None) -> http.HTTPFlow:
    f = tflow.tflow(req=http.Request.make("GET", url))
    f.client_conn.sni = client_sni
    return f


def test_connections_name_the_connection_of_the_client_that_asked():
    c = Connections(Health(), lambda: 3.0)
    r = rules()
    f = _routed_flow("http://api.test/n")
    d = decide(r, req("http://api.test/n"))
    f.request.host, f.request.port = d.host, d.port          # as apply() rewrites it
    assert c.routed(f, d, "api.test") is None                # not throttled
    other = tflow.tflow().client_conn                        # another client connection: not its name
    data = _hook_data(other, "10.0.0.5", 8443)
    c.server_connect(data)
    assert data.server.sni == "10.0.0.5"
    data = _hook_data(f.client_conn, "10.0.0.5", 8443)
    c.server_connect(data)
    assert data.server.sni == "api.example.test"
    again = _hook_data(f.client_conn, "10.0.0.5", 8443)       # taken once: a later connection is the next flow's
    c.server_connect(again)
    assert again.server.sni == "10.0.0.5"


@pytest.mark.parametrize("client_sni, host, want", [
    ("client.test", "api.test", "client.test"),
    (None, "api.test", "api.test"),
    (None, "192.0.2.1", "10.0.0.5"),            # nothing to preserve: mitmproxy's default stays
])
def test_preserve(client_sni, host, want):
    c = Connections(Health(), lambda: 3.0)
    f = _routed_flow(f"http://{host}/k", client_sni)
    d = decide(rules(), req("http://api.test/k"))
    f.request.host, f.request.port = d.host, d.port
    c.routed(f, d, host)
    data = _hook_data(f.client_conn, "10.0.0.5", 8443)
    c.server_connect(data)
    assert data.server.sni == want


def test_names_not_taken_are_bounded(monkeypatch):
    import condroute.mitm.connections as conns
    monkeypatch.setattr(conns, "MAX_NAMES", 3)
    c = Connections(Health(), lambda: 3.0)
    d = decide(rules(), req("http://api.test/n"))
    for _ in range(5):
        f = _routed_flow("http://api.test/n")
        f.request.host, f.request.port = d.host, d.port
        c.routed(f, d, "api.test")
    assert len(c.names) == 3


def test_a_flow_that_needs_another_name_on_an_open_connection_gets_its_own():
    """mitmproxy would reuse the client connection's open connection to that address: the flow goes
    through a relay that only forwards, one per address and name."""
    c = Connections(Health(), lambda: 3.0)
    r = rules()
    d_named = decide(r, req("http://api.test/n"))
    f = _routed_flow("http://api.test/n")
    f.request.host, f.request.port = d_named.host, d_named.port
    c.routed(f, d_named, "api.test")
    server = connection.Server(address=("10.0.0.5", 8443))
    server.sni, server.tls = "10.0.0.5", True
    c.server_connect(ServerConnectionHookData(server=server, client=f.client_conn))
    assert server.sni == "api.example.test" and len(c.open) == 1
    # the same client connection, the same address, another name (preserve: the client's host)
    d_kept = decide(r, req("http://api.test/k"))
    g = _routed_flow("http://api.test/k")
    g.client_conn = f.client_conn
    g.request.host, g.request.port = d_kept.host, d_kept.port
    c.relays.clear()
    relay = object.__new__(Relay)            # (no event loop here: a stand-in listener)
    relay.port, relay.closed = 40001, False
    c.relays[("10.0.0.5", 8443, None, "api.test")] = relay
    c.routed(g, d_kept, "api.test")
    assert (g.request.host, g.request.port) == (RELAY_HOST, 40001)
    assert c.names[(f.client_conn.id, RELAY_HOST, 40001)] == "api.test"
    # the same name again: the open connection serves
    h = _routed_flow("http://api.test/n")
    h.client_conn = f.client_conn
    h.request.host, h.request.port = d_named.host, d_named.port
    c.routed(h, d_named, "api.test")
    assert (h.request.host, h.request.port) == ("10.0.0.5", 8443)
    # closed: forgotten (only by the connection that opened it)
    stranger = connection.Server(address=("10.0.0.5", 8443))
    c.server_disconnected(ServerConnectionHookData(server=stranger, client=f.client_conn))
    assert len(c.open) == 1
    c.server_disconnected(ServerConnectionHookData(server=server, client=f.client_conn))
    assert c.open == {}


def test_names_of_open_connections_are_bounded(monkeypatch):
    import condroute.mitm.connections as conns
    monkeypatch.setattr(conns, "MAX_NAMES", 3)
    c = Connections(Health(), lambda: 3.0)
    for _ in range(5):
        server = connection.Server(address=("10.0.0.5", 8443))
        server.tls = True
        c.server_connect(ServerConnectionHookData(server=server, client=tflow.tflow().client_conn))
    assert len(c.open) == 3


async def test_a_connection_that_failed_to_open_is_forgotten(harness):
    harness.configure_rules(RULES)
    f = tflow.tflow()
    server = connection.Server(address=("10.0.0.5", 8443))
    server.tls = True
    data = ServerConnectionHookData(server=server, client=f.client_conn)
    harness.server_connect(data)
    assert len(harness.conns.open) == 1
    server.error = "connection refused"
    harness.server_connect_error(data)
    assert harness.conns.open == {}


# -- in mitmproxy's harness -------------------------------------------------------------------------------
@pytest.fixture
def harness(tmp_path: Path):
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        def configure(text: str, name: str = "rules.yaml") -> None:
            p = tmp_path / name
            p.write_text(textwrap.dedent(text))
            tctx.configure(addon, condroute_rules=str(p))
        addon.configure_rules = configure  # type: ignore[attr-defined]
        addon.tctx = tctx  # type: ignore[attr-defined]
        yield addon


async def test_server_connect_is_registered_only_while_a_backend_has_sni(harness):
    harness.configure_rules("""
        version: 1
        routes:
          - name: r
            backends: [{name: b, upstream: "https://10.0.0.5"}]
        """)
    assert harness.server_connect is None and harness.responseheaders is None
    harness.configure_rules(RULES, "sni.yaml")
    assert callable(harness.server_connect)
    assert harness.responseheaders is None          # sni alone streams nothing
    harness.configure_rules("""
        version: 1
        routes:
          - name: r
            backends: [{name: b, upstream: "https://10.0.0.5"}]
        """, "plain.yaml")
    assert harness.server_connect is None


async def test_a_routed_flow_names_its_upstream_connection(harness):
    harness.configure_rules(RULES)
    f = tflow.tflow(req=http.Request.make("GET", "http://api.test/n", headers={"Host": "api.test"}))
    f.request.authority = ""
    await harness.tctx.cycle(harness, f)
    assert (f.request.scheme, f.request.host, f.request.port) == ("https", "10.0.0.5", 8443)
    assert f.request.headers["Host"] == "10.0.0.5:8443"
    assert "throttled" not in f.metadata["condroute"]
    data = _hook_data(f.client_conn, "10.0.0.5", 8443)
    harness.server_connect(data)
    assert data.server.sni == "api.example.test"


# -- lint ---------------------------------------------------------------------------------------------------
def _lint(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "l.yaml"
    p.write_text(textwrap.dedent(text))
    return [f"{w.line}:{w.col} {w.message}" for w in lint(load_rules(str(p)))]


def test_lint_sni_that_is_the_upstreams_own_name(tmp_path):
    found = _lint(tmp_path, """\
        version: 1
        routes:
          - name: r
            backends:
              - {name: b, upstream: "https://api.example.test:8443", sni: api.example.test}
        """)
    assert len(found) == 1 and found[0].startswith("5:67 ") and "own host name" in found[0], found


def test_lint_is_quiet_about_names_it_handles(tmp_path):
    # several names for one address (each gets connections of its own), preserve, a name for an IP
    assert _lint(tmp_path, """\
        version: 1
        routes:
          - name: r
            backends:
              - {name: a, when: {path: /a}, upstream: "https://10.0.0.5", sni: a.test}
              - {name: b, when: {path: /b}, upstream: "https://10.0.0.5", sni: b.test}
              - {name: c, when: {path: /c}, upstream: "https://a.test", sni: preserve}
              - {name: d, upstream: "https://10.0.0.5"}
        """) == []
