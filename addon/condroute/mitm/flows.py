"""``condroute explain FILE --flows DUMP``: decisions for every request of a ``mitmdump -w`` file.

mitmproxy is imported here only (lazily), so the rest of the CLI runs without it.

A flow saved by a proxy that ran condroute holds the request *as it was forwarded*: for a routed
request scheme, host, port, path and some headers have been rewritten. The addon keeps what it
changed in ``flow.metadata["condroute"]["original"]`` (scheme, host, port, path, Host header, the
original values of the headers it set or removed), and this module puts the request back together
from it. Requests that condroute did not reroute (no route, direct answers, passthrough) were not
changed and are used as saved. A routed flow saved without ``original`` (by an older addon) is
decided as it was forwarded, and marked so.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from .. import render
from ..engine import Decision, decide
from ..explain import decision_data
from ..request import RequestView
from ..compile.runtime import Rules


def flow_request(flow: Any) -> tuple[RequestView, bool]:
    """The request the client sent, as the addon saw it, and whether it was recovered exactly."""
    r = flow.request
    md = flow.metadata.get("condroute") or {}
    peer = None
    conn = getattr(flow, "client_conn", None)
    if conn is not None and conn.peername:
        peer = conn.peername[0]
    # the host the addon decided on: where the request went, or in reverse mode the Host header
    # (README "What is matched")
    reverse = type(getattr(conn, "proxy_mode", None)).__name__ == "ReverseMode"
    scheme, host, port, path_q = r.scheme, r.pretty_host if reverse else r.host, r.port, r.path
    headers = list(r.headers.items(multi=True))
    exact = True
    if md.get("outcome") == "routed":
        orig = md.get("original")
        if isinstance(orig, dict):
            scheme, host, port, path_q = orig["scheme"], orig["host"], orig["port"], orig["path"]
            restore = {k.lower(): (k, v) for k, v in (orig.get("headers") or {}).items()}
            if orig.get("host_header") is not None:
                restore["host"] = ("Host", [orig["host_header"]])
            elif "host" not in restore:
                restore["host"] = ("Host", [])
            headers = [(k, v) for k, v in headers if k.lower() not in restore]
            for name, values in restore.values():
                headers.extend((name, v) for v in values)
        else:
            exact = False
    path, _, qs = path_q.partition("?")
    return RequestView(r.method, scheme, host, port, path, qs, headers, peer), exact


def restore_request(flow: Any) -> bool:
    """Put a rerouted flow's request back as the client sent it (from ``metadata["condroute"]["original"]``),
    so that a replay is decided again from it; False when the flow carries no original to restore."""
    md = flow.metadata.get("condroute") or {}
    orig = md.get("original")
    if md.get("outcome") != "routed" or not isinstance(orig, dict):
        return False
    r = flow.request
    r.scheme, r.host, r.port, r.path = orig["scheme"], orig["host"], orig["port"], orig["path"]
    if orig.get("host_header") is not None:
        r.host_header = orig["host_header"]
    elif r.is_http2 or r.is_http3:
        r.authority = ""
    else:
        r.headers.pop("Host", None)
    for name, values in (orig.get("headers") or {}).items():
        r.headers.set_all(name, list(values))
    return True


def live_header(flow: Any) -> str | None:
    """What the live proxy decided, in X-Condroute form; None when the flow carries nothing."""
    md = flow.metadata.get("condroute")
    if isinstance(md, dict) and md.get("header"):
        return md["header"]
    return None


def live_tries(flow: Any) -> list[str]:
    """What the live proxy did beyond the decision, one line each: the requests condroute sent
    itself and retried (``tries``), the upstreams it failed over from (``failed_over``), and why it
    answered when it gave up (``retry_reason``, a ``failover: false`` backend's ``reason``)."""
    md = flow.metadata.get("condroute")
    if not isinstance(md, dict):
        return []
    out = []
    if md.get("tries"):
        out.append("tried " + render.tries_text(md["tries"]))
    for f in md.get("failed_over") or []:
        if isinstance(f, dict):
            n = f.get("attempts", 1)
            out.append(f"failed over from upstream {f.get('upstream')} ({f.get('address')}): {f.get('error')}"
                       + (f" ({n} attempts)" if n and n > 1 else ""))
    for key in ("retry_reason",):
        if md.get(key):
            out.append(f"gave up: {md[key]}")
    if md.get("outcome") == "unavailable" and md.get("reason"):
        out.append(f"answered {md.get('status')}: {md['reason']}")
    return out


def _agrees(d: Decision, live: str | None) -> bool:
    # the addon stores nothing when no route owns a request: a missing record means passthrough
    return d.header_value() == (live or "passthrough")


def _coverage_keys(rules: Rules) -> list[str]:
    return [f"{r.name}/{b.name}" for r in rules.routes for b in r.backends]


def _outcome_key(d: Decision) -> str:
    if d.backend is not None:
        return f"{d.route}/{d.backend}"
    if d.route is None:
        return "(no route: passthrough)"
    return f"{d.route} (no backend: {'answered ' + str(d.status) if d.status else 'passthrough'})"


def explain_flows(rules: Rules, dump: str, as_json: bool) -> int:
    from mitmproxy import exceptions, http, io

    results: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    skipped_other = 0
    try:
        with open(dump, "rb") as f:
            for flow in io.FlowReader(f).stream():
                if not isinstance(flow, http.HTTPFlow):
                    skipped_other += 1
                    continue
                req, exact = flow_request(flow)
                d = decide(rules, req, explain=True)
                live = live_header(flow)
                counts[_outcome_key(d)] += 1
                md = flow.metadata.get("condroute")
                results.append({"index": len(results) + 1, "decision": decision_data(rules, d, req), "d": d,
                                "live": live, "agrees": _agrees(d, live), "exact": exact,
                                "tries": md.get("tries") if isinstance(md, dict) else None,
                                "live_lines": live_tries(flow)})
    except exceptions.FlowReadException as e:
        print(f"{dump}: not a mitmproxy flow file ({e})", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{dump}: cannot read the flows file: {e.strerror or e}", file=sys.stderr)
        return 1
    recorded = any(x["live"] is not None for x in results)   # saved by a proxy running condroute
    keys = _coverage_keys(rules)
    never = [k for k in keys if counts[k] == 0]
    extra = [k for k in counts if k not in keys]
    if as_json:
        out = {
            "rules": rules.file, "flows": dump, "requests": len(results),
            "decisions": [{"index": x["index"], "live": x["live"],
                           "agrees_with_live": x["agrees"] if recorded else None,
                           **({"live_differs_after_upstream_failures": True}
                              if recorded and not x["agrees"] and x["live_lines"] else {}),
                           "original_recovered": x["exact"], "x_condroute": x["d"].header_value(),
                           **({"live_tries": x["tries"]} if x["tries"] else {}),
                           **({"live_notes": x["live_lines"]} if x["live_lines"] else {}),
                           **x["decision"]} for x in results],
            "coverage": {k: counts[k] for k in keys + extra},
            "never_reached": never,
        }
        if skipped_other:
            out["other_flows_skipped"] = skipped_other
        print(json.dumps(out, indent=2))
        return 0
    width = len(str(len(results)))
    origins = {r.name: r.origin or f"{r.file}:{r.line}" for r in rules.routes if r.origin or r.file}
    key_route = {f"{r.name}/{b.name}": r for r in rules.routes for b in r.backends}
    for x in results:
        d: Decision = x["d"]
        line = f"{x['index']:>{width}}  {d.summary()}"
        if d.route in origins:             # an imported rule, named by its source
            line += f"  ({origins[d.route]})"
        if recorded:
            if x["agrees"]:
                line += "  [live: same]"
            else:
                after = ", after upstream failures (below)" if x["live_lines"] else ""
                line += f"  [live: {x['live'] or 'passthrough'}{after}]"
        if not x["exact"]:
            line += "  (decided on the forwarded request: the original was not saved)"
        print(line)
        for note in x["live_lines"]:     # retries, failovers: what the live proxy did beyond deciding
            print(f"{' ' * width}    live: {note}")
    if skipped_other:
        print(f"({skipped_other} non-HTTP flow{'s' * (skipped_other != 1)} skipped)")
    rows = keys + extra
    w = max([len(k) for k in rows] + [len("backend")])
    print()
    print(f"coverage of {len(results)} request{'s' * (len(results) != 1)}:")
    print(f"  {'backend':<{w}}  requests")
    for k in rows:
        r = key_route.get(k)
        src = f"  {origins[r.name]}" if r is not None and r.name in origins else ""
        print(f"  {k:<{w}}  {counts[k]:>8}{src}")
    if never:
        print("never reached: " + ", ".join(never))
    else:
        print("every backend was reached")
    # (a live decision that differs because an upstream failed then — a failover, retries spent, a
    # pinned backend's answer — is no disagreement: the rules decide the same)
    disagree = sum(1 for x in results if not x["agrees"] and not x["live_lines"]) if recorded else 0
    if disagree:
        print(f"{disagree} request{'s' * (disagree != 1)} decided differently from the live proxy "
              "(the rules changed since, or the original request was not saved)")
    return 0
