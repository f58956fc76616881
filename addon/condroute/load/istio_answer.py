"""An Istio http rule's answers and policies: ``redirect``, ``directResponse``, ``retries`` and
``fault`` (see load/istio_rule.py for what each maps onto), and :func:`status_retry_on`, which the
Gateway API importer shares (a list of status codes to retry → condroute's ``retry_on``)."""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from ..model import DEFAULT_RETRY_ON, Fault, PathRewrite, Redirect, Respond
from ..node import Y
from .ctx import CompileCtx, kind
from .istio_match import check_keys
from .krakend import parse_duration

REDIRECT_KEYS = ("authority", "derivePort", "port", "prefixRewrite", "redirectCode", "scheme", "uri")
REDIRECT_CODES = (301, 302, 303, 307, 308)
RETRIES_KEYS = ("attempts", "backoff", "perTryTimeout", "retryIgnorePreviousHosts", "retryOn",
                "retryRemoteLocalities")
DIRECT_KEYS = ("body", "status")
MAX_RETRIES = 10
DEFAULT_RETRIES = 2                  # Istio's default retry policy: 2 attempts on connect failure
# Envoy's x-envoy-retry-on policies condroute's retry_on has, with the same meaning (mitm/retry.py)
SAME_RETRY_ON = ("connect-failure", "reset", "5xx", "gateway-error")
# x-envoy-retry-grpc-on: Istio accepts them in retryOn too
GRPC_RETRY_ON = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
GATEWAY_ERRORS = frozenset({502, 503, 504})
ALL_5XX = frozenset(range(500, 600))
FIRST_BACKOFF, MAX_BACKOFF = 0.05, 1.0   # mitm/upstreams.RETRY_BACKOFF: before the 2nd attempt, doubling
RETRY_BACKOFF_TEXT = "condroute waits 50 ms before the second attempt, doubling up to 1 s"
DELAY_KEYS = ("exponentialDelay", "fixedDelay", "percent", "percentage")
ABORT_KEYS = ("grpcStatus", "http2Error", "httpStatus", "percentage")
ABORT_KINDS = ("httpStatus", "grpcStatus", "http2Error")


def redirect(cc: CompileCtx, node: Y, label: str) -> tuple[Redirect, Y | None] | None:
    if not cc.expect_map(node, f"{label}: redirect") or not check_keys(node, REDIRECT_KEYS, f"{label}: redirect", cc):
        return None
    v = node.v
    if not any(k in v for k in ("uri", "prefixRewrite", "authority", "port", "scheme", "derivePort")):
        cc.error(node, f"{label}: redirect needs uri, prefixRewrite, authority, port or scheme")
        return None
    if "uri" in v and "prefixRewrite" in v:
        cc.error_key(node, "prefixRewrite", f"{label}: use one of redirect uri and prefixRewrite")
        return None
    kw: dict[str, Any] = {"status": 301}
    if "redirectCode" in v:
        c = v["redirectCode"]
        if isinstance(c.v, bool) or c.v not in REDIRECT_CODES:
            cc.error(c, f"{label}: redirectCode must be one of {', '.join(map(str, REDIRECT_CODES))} "
                        f"(what Istio sends), not {kind(c.v)}")
            return None
        kw["status"] = c.v
    if "scheme" in v:
        s = (v["scheme"].text or "").lower()
        if s not in ("http", "https"):
            cc.error(v["scheme"], f"{label}: redirect scheme must be http or https")
            return None
        kw["scheme"] = s
    if "authority" in v:
        a = v["authority"].text
        if not a:
            cc.error(v["authority"], f"{label}: redirect authority must be a host name")
            return None
        kw["host"] = a
        kw["port_from"] = "scheme"           # Envoy drops the request's port with a new host
    if "port" in v:
        p = v["port"]
        if isinstance(p.v, bool) or not isinstance(p.v, int) or not 1 <= p.v <= 65535:
            cc.error(p, f"{label}: redirect port must be a port number, not {kind(p.v)}")
            return None
        kw["port"] = p.v
    elif "derivePort" in v:
        dp = v["derivePort"].text
        if dp not in ("FROM_REQUEST_PORT", "FROM_PROTOCOL_DEFAULT"):
            cc.error(v["derivePort"], f"{label}: derivePort must be FROM_REQUEST_PORT or FROM_PROTOCOL_DEFAULT")
            return None
        kw["port_from"] = "request" if dp == "FROM_REQUEST_PORT" else "scheme"
    if "uri" in v:
        u = v["uri"].text
        if not u or not u.startswith("/"):
            cc.error(v["uri"], f"{label}: redirect uri must be a path starting with '/'")
            return None
        kw["path"] = PathRewrite("full", u)
    prefix = None
    if "prefixRewrite" in v:
        prefix = v["prefixRewrite"]
        if prefix.text is None:
            cc.error(prefix, f"{label}: prefixRewrite must be a path")
            return None
    return Redirect(**kw), prefix


def direct_response(cc: CompileCtx, node: Y, headers: tuple[tuple[str, str], ...], label: str) -> Respond | None:
    if not cc.expect_map(node, f"{label}: directResponse") or \
            not check_keys(node, DIRECT_KEYS, f"{label}: directResponse", cc):
        return None
    st = node.v.get("status")
    if st is None or isinstance(st.v, bool) or not isinstance(st.v, int) or not 200 <= st.v <= 599:
        cc.error(st or node, f"{label}: directResponse needs status, an HTTP status from 200 to 599")
        return None
    body = ""
    bn = node.v.get("body")
    if bn is not None and cc.expect_map(bn, f"{label}: directResponse body") and \
            check_keys(bn, ("bytes", "string"), f"{label}: directResponse body", cc):
        if "string" in bn.v and "bytes" in bn.v:
            cc.error(bn, f"{label}: directResponse body: use one of string and bytes")
            return None
        if "string" in bn.v:
            body = bn.v["string"].text or ""
        elif "bytes" in bn.v:
            raw = bn.v["bytes"].text or ""
            try:
                data = base64.b64decode(raw, validate=True)
                body = data.decode("utf-8")
            except (binascii.Error, ValueError):
                cc.error(bn.v["bytes"], f"{label}: directResponse body bytes is not base64 text that decodes "
                                        f"to UTF-8 (condroute answers with text bodies only)")
                return None
    if body and st.v in (204, 304):
        cc.error(bn, f"{label}: a {st.v} answer cannot have a body")
        return None
    return Respond(st.v, body, headers)




# -- retries ------------------------------------------------------------------------------------------
@dataclass
class RetryPolicy:
    """What an Istio ``retries`` block becomes: ``retries``/``retry_on`` of the backend, and its
    perTryTimeout (the rule's reader weighs it against the rule's ``timeout``)."""
    retries: int
    retry_on: frozenset[str] = DEFAULT_RETRY_ON
    per_try: float | None = None


def status_retry_on(codes: set[int], have: frozenset[str] | set[str]) -> tuple[set[str], str | None]:
    """condroute's ``retry_on`` entries that retry the status ``codes`` (beside those ``have``
    already covers), and what then differs from retrying exactly those codes (None: nothing).

    condroute retries whole classes only: ``5xx`` (500-599) and ``gateway-error`` (502, 503, 504).
    Codes that are all of 500-599 are ``5xx``; codes among 502-504 are ``gateway-error``, which
    retries the other two as well (said); any other code is not retried (said)."""
    covered = ALL_5XX if "5xx" in have else GATEWAY_ERRORS if "gateway-error" in have else frozenset()
    rest = set(codes) - covered
    if not rest:
        return set(), None
    if ALL_5XX <= rest | covered:
        lost = sorted(rest - ALL_5XX)
        return {"5xx"}, (f"{codes_text(lost)} {_are(lost)} not retried (condroute's retry_on names 5xx and "
                         f"gateway-error, not single statuses)" if lost else None)
    gw = rest & GATEWAY_ERRORS
    notes = []
    if gw:
        extra = sorted(GATEWAY_ERRORS - set(codes) - covered)
        if extra:
            notes.append(f"{codes_text(sorted(gw))} {_are(gw)} retried as gateway-error, which retries "
                         f"{codes_text(extra)} too")
    lost = sorted(rest - GATEWAY_ERRORS)
    if lost:
        notes.append(f"{codes_text(lost)} {_are(lost)} not retried (condroute's retry_on names 5xx and "
                     f"gateway-error, not single statuses)")
    return ({"gateway-error"} if gw else set()), ("; ".join(notes) or None)


def worst_case(retries: int, each: float) -> float:
    """The longest ``1 + retries`` attempts of ``each`` seconds take, condroute's waits between them
    included."""
    return round((retries + 1) * each + sum(min(FIRST_BACKOFF * 2 ** i, MAX_BACKOFF) for i in range(retries)), 3)


def codes_text(codes: list[int] | set[int]) -> str:
    """``500``, ``500 and 502``, ``429, 500 and 503``."""
    c = sorted(codes)
    return ", ".join(map(str, c[:-1])) + f" and {c[-1]}" if len(c) > 1 else str(c[0])


def _are(codes: list[int] | set[int]) -> str:
    return "are" if len(codes) > 1 else "is"


def retries(cc: CompileCtx, node: Y, label: str) -> RetryPolicy:
    """Istio ``retries: {attempts, retryOn, perTryTimeout, ...}`` (Envoy's retry_policy, as Istio's
    retry.ConvertPolicy writes it): ``attempts`` → retries (at most condroute's 10; 0 disables
    retries, as in Istio); ``retryOn`` → retry_on where the policies mean the same (connect-failure,
    reset, 5xx, gateway-error; Envoy's reset also retries a connection failure, so it brings
    connect-failure; status codes through :func:`status_retry_on`), a located warning for each
    other; no retryOn → Istio's default policy, of which condroute has connect-failure."""
    if not cc.expect_map(node, f"{label}: retries") or not check_keys(node, RETRIES_KEYS, f"{label}: retries", cc):
        return RetryPolicy(DEFAULT_RETRIES)
    v = node.v
    n = 0
    if "attempts" in v:
        a = v["attempts"]
        if isinstance(a.v, bool) or not isinstance(a.v, int) or a.v < 0:
            cc.error(a, f"{label}: retries attempts must be a whole number >= 0, not {kind(a.v)}")
        elif a.v > MAX_RETRIES:
            cc.warn(a, f"{label}: retries attempts {a.v}: condroute retries at most {MAX_RETRIES} times")
            n = MAX_RETRIES
        else:
            n = a.v
    per_try = None
    if "perTryTimeout" in v:
        per_try = parse_duration(v["perTryTimeout"], cc, f"{label}: retries perTryTimeout")
    if not n:
        return RetryPolicy(0)            # Istio: attempts 0 (or none) disables retries, perTryTimeout with them
    on: frozenset[str] = DEFAULT_RETRY_ON
    if "retryOn" in v:
        got = retry_on(cc, v["retryOn"], label)
        if got is None:
            return RetryPolicy(0, per_try=per_try)
        on = got
    else:
        cc.warn(node, f"{label}: retries without retryOn: Istio retries on connect-failure, refused-stream, "
                      f"unavailable and cancelled (its default retryOn); condroute retries connect failures only "
                      f"(refused-stream is HTTP/2's, unavailable and cancelled are gRPC statuses)", key="attempts")
    if "backoff" in v:
        cc.warn(node, f"{label}: retries backoff {v['backoff'].text} is not imported: {RETRY_BACKOFF_TEXT}",
                key="backoff")
    for k in ("retryIgnorePreviousHosts", "retryRemoteLocalities"):
        if k in v and v[k].v not in (False, None):
            cc.warn(node, f"{label}: retries {k} is not imported: a condroute upstream is one address (there is "
                          f"no other host or locality to retry on)", key=k)
    return RetryPolicy(n, on, per_try)


def retry_on(cc: CompileCtx, node: Y, label: str) -> frozenset[str] | None:
    """Istio's retryOn (comma-separated Envoy policies, gRPC status names and HTTP status codes)
    → condroute's retry_on; None when nothing in it is one condroute retries on (warned)."""
    text = node.text or ""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    codes = {int(p) for p in parts if p.isdigit() and 100 <= int(p) <= 599}
    names = [p for p in parts if not (p.isdigit() and 100 <= int(p) <= 599)]
    have = {p for p in names if p in SAME_RETRY_ON}
    if "reset" in have:
        have.add("connect-failure")      # Envoy's reset retries every reset reason, a connection failure too
    grpc = [p for p in names if p in GRPC_RETRY_ON]
    # retriable-status-codes retries the codes written beside it (Istio adds it for them); alone it
    # retries nothing (Istio's policy has no retriable_status_codes of its own)
    other = [p for p in names if p not in SAME_RETRY_ON and p not in GRPC_RETRY_ON
             and not (p == "retriable-status-codes" and codes)]
    if other:
        cc.warn(node, f"{label}: retryOn {','.join(other)} is not imported: condroute retries on connect-failure, "
                      f"reset, 5xx and gateway-error only")
    if grpc:
        cc.warn(node, f"{label}: retryOn {','.join(grpc)} is not imported: these retry on a gRPC status "
                      f"(x-envoy-retry-grpc-on), which condroute does not read")
    if codes:
        add, note = status_retry_on(codes, have)
        have |= add
        if note:
            cc.warn(node, f"{label}: retryOn {codes_text(codes)}: {note}")
    if not have:
        cc.warn(node, f"{label}: retries are not imported: retryOn {text!r} names nothing condroute retries on "
                      f"(connect-failure, reset, 5xx, gateway-error), so no request is retried")
        return None
    return frozenset(have)


# -- fault --------------------------------------------------------------------------------------------
def fault(cc: CompileCtx, node: Y, label: str) -> Fault | None:
    """Istio ``fault`` (Envoy's fault filter, before the router): ``delay.fixedDelay`` for
    ``percentage`` % of requests, ``abort.httpStatus`` for ``percentage`` % of them, each drawn on
    its own — model.Fault exactly. A ``percentage`` left out is 0%: Istio's translation leaves
    Envoy's percentage unset and Envoy then injects nothing (istio/istio#36303, #39969: the docs
    that said "all requests" were changed). The deprecated integer ``delay.percent`` is read when
    ``percentage`` is absent, as Istio's translation did. grpcStatus/http2Error aborts and
    exponentialDelay are not imported (a located warning each)."""
    if not cc.expect_map(node, f"{label}: fault") or not check_keys(node, ("abort", "delay"), f"{label}: fault", cc):
        return None
    kw: dict[str, Any] = {}
    dl = node.v.get("delay")
    if dl is not None and cc.expect_map(dl, f"{label}: fault delay") and \
            check_keys(dl, DELAY_KEYS, f"{label}: fault delay", cc):
        if "exponentialDelay" in dl.v:
            cc.warn(dl, f"{label}: fault delay exponentialDelay is not imported (Istio does not apply it either)",
                    key="exponentialDelay")
        fd = dl.v.get("fixedDelay")
        if fd is None and "exponentialDelay" not in dl.v:
            cc.error(dl, f"{label}: fault delay needs fixedDelay (a duration such as 5s)")
        elif fd is not None:
            secs = parse_duration(fd, cc, f"{label}: fault delay fixedDelay")
            pct = fault_percentage(cc, dl, label, "delay")
            if secs is not None and pct is not None:
                kw["delay"], kw["delay_percent"] = secs, pct
    ab = node.v.get("abort")
    if ab is not None and cc.expect_map(ab, f"{label}: fault abort") and \
            check_keys(ab, ABORT_KEYS, f"{label}: fault abort", cc):
        kinds = [k for k in ABORT_KINDS if k in ab.v]
        if len(kinds) > 1:
            cc.error_key(ab, kinds[1], f"{label}: fault abort: use one of httpStatus, grpcStatus and http2Error "
                                       f"(Istio refuses {kinds[0]} and {kinds[1]} together)")
        elif not kinds:
            cc.error(ab, f"{label}: fault abort needs httpStatus (an HTTP status from 200 to 599)")
        elif kinds[0] != "httpStatus":
            cc.warn(ab, f"{label}: fault abort {kinds[0]} {ab.v[kinds[0]].text} is not imported: condroute aborts "
                        f"with an HTTP status (httpStatus) only; these requests are forwarded", key=kinds[0])
        else:
            st = ab.v["httpStatus"]
            if isinstance(st.v, bool) or not isinstance(st.v, int) or not 200 <= st.v <= 599:
                cc.error(st, f"{label}: fault abort httpStatus must be an HTTP status from 200 to 599, not {kind(st.v)}")
            else:
                pct = fault_percentage(cc, ab, label, "abort")
                if pct is not None:
                    kw["abort"], kw["abort_percent"] = st.v, pct
    return Fault(**kw) if kw else None


def fault_percentage(cc: CompileCtx, node: Y, label: str, what: str) -> float | None:
    """The share of requests a fault's ``delay``/``abort`` applies to, 0-100; None after an error."""
    p = node.v.get("percentage")
    if p is not None:
        val = p.v.get("value") if isinstance(p.v, dict) else None
        if isinstance(p.v, dict) and not p.v:
            return 0.0                   # {}: proto3's default value
        if val is None or isinstance(val.v, bool) or not isinstance(val.v, (int, float)) or not 0 <= val.v <= 100:
            cc.error(val or p, f"{label}: fault {what} percentage must be {{value: N}} with N from 0 to 100, "
                               f"not {kind(val.v if val is not None else p.v)}")
            return None
        return float(val.v)
    legacy = node.v.get("percent")
    if legacy is not None:
        if isinstance(legacy.v, bool) or not isinstance(legacy.v, int) or not 0 <= legacy.v <= 100:
            cc.error(legacy, f"{label}: fault {what} percent must be a whole number from 0 to 100, not {kind(legacy.v)}")
            return None
        return float(legacy.v)
    verb = "delays" if what == "delay" else "aborts"
    cc.warn(node, f"{label}: fault {what} has no percentage: Istio {verb} no request then (Envoy's default is 0%); "
                  f"write percentage: {{value: 100}} to {verb[:-1]} every request")
    return 0.0


def percentage(node: Y | None, legacy: Y | None = None, default: float = 0.0) -> float:
    """``percentage: {value: N}`` (a double, 0-100); omitted: ``default``."""
    if node is not None and isinstance(node.v, dict) and "value" in node.v:
        val = node.v["value"].v
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            return max(0.0, min(100.0, float(val)))
    if node is not None and isinstance(node.v, dict) and not node.v:
        return 0.0
    if legacy is not None and isinstance(legacy.v, int) and not isinstance(legacy.v, bool):
        return float(legacy.v)
    return default
