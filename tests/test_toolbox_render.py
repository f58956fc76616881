"""sni and throttle as every rendering of a decision says them: the log line, the comment, the
metadata (to_dict) and `condroute explain` (table and JSON); a backend without them says nothing."""
from __future__ import annotations

import json

from condroute import render
from condroute.cli.main import main as condroute_main
from condroute.engine import decide
from condroute.explain import build_request
from condroute.rules import load_rules_text

RULES = """\
version: 1
routes:
  - name: r
    backends:
      - {name: shaped, when: {header: {X-S: "1"}}, upstream: "https://127.0.0.1:9443", sni: api.example.test,
         throttle: {kbps: 400}}
      - {name: kept, when: {header: {X-S: "2"}}, upstream: "https://127.0.0.1:9443", sni: preserve}
      - {name: plain, upstream: "https://127.0.0.1:9443"}
"""


def _decide(headers: dict):
    rules = load_rules_text(RULES, "r.yaml")
    return decide(rules, build_request("http://a.test/x", headers=tuple(headers.items())))


def test_sni_and_throttle_in_the_log_line_comment_and_metadata():
    d = _decide({"X-S": "1"})
    assert render.outcome_text(d).endswith(", sni api.example.test, throttled to 400 kbps")
    assert "| sni api.example.test, throttled to 400 kbps" in render.comment(d)
    md = render.to_dict(d)
    assert (md["sni"], md["throttle_kbps"]) == ("api.example.test", 400.0)
    kept = _decide({"X-S": "2"})
    assert render.outcome_text(kept).endswith(", sni preserved (the client's)")
    assert "throttle_kbps" not in render.to_dict(kept)
    plain = _decide({})
    assert "sni" not in render.outcome_text(plain) and "sni" not in render.to_dict(plain)
    assert "throttle" not in render.comment(plain)


def test_explain_shows_them(tmp_path, capsys):
    f = tmp_path / "r.yaml"
    f.write_text(RULES)
    assert condroute_main(["explain", str(f), "http://a.test/x", "-H", "X-S: 1"]) == 0
    out = capsys.readouterr().out
    assert "sni       api.example.test (the TLS server name sent to the upstream" in out
    assert "throttle  the response reaches the client at 400 kbps (50000 bytes/s)" in out
    assert condroute_main(["explain", "--json", str(f), "http://a.test/x", "-H", "X-S: 1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["sni"], data["throttle_kbps"]) == ("api.example.test", 400.0)
    assert condroute_main(["explain", str(f), "http://a.test/x"]) == 0
    out = capsys.readouterr().out
    assert "sni " not in out and "throttle" not in out
