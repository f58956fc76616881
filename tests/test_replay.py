"""Replay (issue 13 item 1): a replayed flow is decided again with the rules in force now, from the
request as the client sent it (metadata["condroute"]["original"]), and its comment and mark are
refreshed. Through mitmproxy's harness, and through a real `mitmdump -C`."""
from __future__ import annotations

import textwrap

import httpx
import pytest
from mitmproxy import io
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute.mitm.addon import REROUTED_MARK, ConditionalRouting
from helpers import ADDON, run_mitmdump_until_exit
from test_addon import make_flow

V1 = """
routes:
  - name: shop
    match: {host: shop.example}
    backends:
      - {name: old, upstream: "http://127.0.0.1:{a}", set_headers: {X-Env: old}, remove_headers: [X-Ab-Test]}
"""
V2 = """
routes:
  - name: shop
    match: {host: shop.example}
    backends:
      - {name: new-b, when: {header: {X-Ab-Test: B}}, upstream: "http://127.0.0.1:{b}/v2"}
      - {name: new-a, upstream: "http://127.0.0.1:{a}"}
"""
NOTHING = """
routes:
  - name: other
    match: {host: other.example}
    backends: [{name: x, upstream: "http://127.0.0.1:1"}]
"""


def write(tmp_path, name: str, text: str, **ports: int) -> str:
    p = tmp_path / name
    body = textwrap.dedent(text)
    for k, v in ports.items():
        body = body.replace("{" + k + "}", str(v))
    p.write_text(body)
    return str(p)


def replay(f):
    """What mitmproxy's client playback does to a flow before it runs it again (ClientPlayback.start_replay
    and the HTTP layer)."""
    f.backup()
    f.is_replay = "request"
    f.response = None
    f.error = None
    f.live = True
    return f


async def test_a_replayed_flow_is_decided_again_from_the_original_request(tmp_path):
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=write(tmp_path, "v1.yaml", V1, a=9001))
        f = make_flow("http://shop.example/cart?x=1", headers={"X-Ab-Test": "B", "X-Env": "client"})
        await tctx.cycle(addon, f)
        assert (f.request.host, f.request.port, f.request.path) == ("127.0.0.1", 9001, "/cart?x=1")
        assert "X-Ab-Test" not in f.request.headers and f.request.headers["X-Env"] == "old"
        assert f.marked == REROUTED_MARK and "old" in f.comment

        tctx.configure(addon, condroute_rules=write(tmp_path, "v2.yaml", V2, a=9001, b=9002))
        await tctx.cycle(addon, replay(f))
        md = f.metadata["condroute"]
        assert md["backend"] == "new-b"
        assert (f.request.host, f.request.port, f.request.path) == ("127.0.0.1", 9002, "/v2/cart?x=1")
        # decided on the client's headers: X-Ab-Test back, X-Env as the client sent it
        assert f.request.headers["X-Ab-Test"] == "B" and f.request.headers["X-Env"] == "client"
        assert md["original"]["host"] == "shop.example" and md["original"]["path"] == "/cart?x=1"
        assert "new-b" in f.comment and "old" not in f.comment      # the comment is the new decision's
        assert f.marked == REROUTED_MARK


async def test_a_replay_that_no_route_owns_now_goes_to_the_original_destination(tmp_path):
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=write(tmp_path, "v1.yaml", V1, a=9001))
        f = make_flow("http://shop.example/cart", headers={"X-Ab-Test": "B"})
        await tctx.cycle(addon, f)
        tctx.configure(addon, condroute_rules=write(tmp_path, "none.yaml", NOTHING))
        await tctx.cycle(addon, replay(f))
        assert "condroute" not in f.metadata and f.comment == "" and f.marked == ""
        assert f.request.pretty_url == "http://shop.example/cart"
        assert f.request.headers["Host"] == "shop.example" and f.request.headers["X-Ab-Test"] == "B"
        assert "X-Env" not in f.request.headers


async def test_the_users_own_mark_is_kept(tmp_path):
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=write(tmp_path, "v1.yaml", V1, a=9001))
        f = make_flow("http://shop.example/cart")
        f.marked = ":star:"
        await tctx.cycle(addon, f)
        assert f.marked == ":star:"
        tctx.configure(addon, condroute_rules=write(tmp_path, "none.yaml", NOTHING))
        await tctx.cycle(addon, replay(f))
        assert f.marked == ":star:"


@pytest.mark.slow
def test_mitmdump_client_replay_reroutes_with_the_new_rules(tmp_path, echo, proxy):
    a, b = echo("a"), echo("b")
    pa, pb = int(a.rsplit(":", 1)[1]), int(b.rsplit(":", 1)[1])
    v1 = write(tmp_path, "v1.yaml", V1, a=pa)
    v2 = write(tmp_path, "v2.yaml", V2, a=pa, b=pb)
    saved, replayed = tmp_path / "saved.flows", tmp_path / "replayed.flows"

    p = proxy(v1, "-w", str(saved))
    r = httpx.get("http://shop.example/cart", headers={"X-Ab-Test": "B"}, proxy=p.url, timeout=10)
    assert r.json()["backend"] == "a" and r.json()["path"] == "/cart"
    p.wait_for("condroute: .*shop/old")
    p.stop()

    done = run_mitmdump_until_exit(["-n", "-C", str(saved), "-s", str(ADDON), "--set", f"condroute_rules={v2}",
                                    "-w", str(replayed)])
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "shop/new-b" in out                       # the decision was made again and logged
    with open(replayed, "rb") as fh:
        (f,) = list(io.FlowReader(fh).stream())
    assert f.response is not None and f.response.headers["X-Backend"] == "b", out
    assert f.response.json()["path"] == "/v2/cart"
    assert f.metadata["condroute"]["backend"] == "new-b" and "new-b" in f.comment
    assert f.marked == REROUTED_MARK
