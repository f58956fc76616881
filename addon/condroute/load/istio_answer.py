"""An Istio http rule's answers and policies: ``redirect``, ``directResponse``, ``retries`` and
``fault`` (see load/istio_rule.py for what each maps onto)."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from ..model import PathRewrite, Redirect, Respond
from ..node import Y
from .ctx import CompileCtx, kind
from .istio_match import check_keys

REDIRECT_KEYS = ("authority", "derivePort", "port", "prefixRewrite", "redirectCode", "scheme", "uri")
REDIRECT_CODES = (301, 302, 303, 307, 308)
RETRIES_KEYS = ("attempts", "backoff", "perTryTimeout", "retryIgnorePreviousHosts", "retryOn",
                "retryRemoteLocalities")
DIRECT_KEYS = ("body", "status")
MAX_RETRIES = 10
DEFAULT_RETRIES = 2                  # Istio's default retry policy: 2 attempts on connect failure
CONNECT_POLICIES = ("connect-failure", "refused-stream", "reset-before-request")


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


def retries(cc: CompileCtx, node: Y, label: str) -> int:
    if not cc.expect_map(node, f"{label}: retries") or not check_keys(node, RETRIES_KEYS, f"{label}: retries", cc):
        return DEFAULT_RETRIES
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
    if "retryOn" in v and n:
        on = [p.strip() for p in (v["retryOn"].text or "").split(",") if p.strip()]
        other = [p for p in on if p not in CONNECT_POLICIES]
        if other:
            cc.warn(v["retryOn"], f"{label}: retryOn {','.join(other)} is not supported yet: condroute retries "
                                  f"connect failures only (idempotent methods)")
    if "perTryTimeout" in v and n:
        cc.warn(node, f"{label}: perTryTimeout is not supported yet: the rule's timeout (if any) bounds the "
                      f"whole request", key="perTryTimeout")
    return n


def fault(cc: CompileCtx, node: Y, label: str) -> None:
    if not cc.expect_map(node, f"{label}: fault") or not check_keys(node, ("abort", "delay"), f"{label}: fault", cc):
        return
    what = []
    ab = node.v.get("abort")
    if ab is not None and isinstance(ab.v, dict):
        pct = percentage(ab.v.get("percentage"))
        status = ab.v.get("httpStatus")
        grpc = ab.v.get("grpcStatus")
        code = status.v if status is not None else f"gRPC status {grpc.text if grpc is not None else '?'}"
        if pct >= 100:
            what.append(f"Istio would answer {code} to every request this rule matches; condroute routes them")
        else:
            what.append(f"Istio would answer {code} to {pct:g}% of the requests")
    dl = node.v.get("delay")
    if dl is not None and isinstance(dl.v, dict):
        pct = percentage(dl.v.get("percentage"), dl.v.get("percent"))
        fd = dl.v.get("fixedDelay")
        what.append(f"Istio would delay {pct:g}% of the requests by {fd.text if fd is not None else '?'}")
    cc.warn(node, f"{label}: fault is not supported yet; requests are routed without it ({'; '.join(what)})"
            if what else f"{label}: fault is not supported yet; requests are routed without it")


def percentage(node: Y | None, legacy: Y | None = None, default: float = 0.0) -> float:
    """``percentage: {value: N}`` (a double, 0-100); omitted: ``default`` (Istio faults: 0)."""
    if node is not None and isinstance(node.v, dict) and "value" in node.v:
        val = node.v["value"].v
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            return max(0.0, min(100.0, float(val)))
    if node is not None and isinstance(node.v, dict) and not node.v:
        return 0.0
    if legacy is not None and isinstance(legacy.v, int) and not isinstance(legacy.v, bool):
        return float(legacy.v)
    return default
