"""Conditions an importer needs that the rules format cannot write: one that never holds (and
why), one that sees only some request headers (KrakenD's ``input_headers``), with the headers a
token check sets from claims instead of the client's (``propagate_claims``), and one that holds
when a route's token check answers 401/403. Not kinds: a rules file cannot name them; the model's
:class:`~condroute.model.Never`, :class:`~condroute.model.VisibleHeaders` and
:class:`~condroute.model.TokenRejected` compile to them."""
from __future__ import annotations

from typing import Any, Callable

from ..httptext import canonical_header
from ..load.ctx import CompileCtx
from ..model import TokenRejected, VisibleHeaders
from ..node import Y
from ..request import RequestView
from .base import Cond
from .jwtvalidator import TokenRejectedCond, Validator, compile_token_check


class NeverCond(Cond):
    """A condition that cannot hold (a header KrakenD would not see)."""

    def __init__(self, text: str, reason: str):
        self.text = text
        self.reason = reason

    def fail(self, req: RequestView, env: Any) -> str | None:
        return self.reason


class _VisibleView(RequestView):
    """The request as a KrakenD backend conditional sees it: only the declared headers. The client
    IP is the real request's (KrakenD's router determines it before any header filtering)."""

    def client_ip(self, trusted):  # type: ignore[override]
        return self.__dict__["_orig"].client_ip(trusted)


class VisibleHeadersCond(Cond):
    """Evaluates ``inner`` against the request with only the ``allowed`` headers (lower-case; None:
    all). With a ``validator``, the headers it propagates from claims are never the client's: the
    client's values are dropped, and the token's are added when it is valid."""

    def __init__(self, inner: Cond, allowed: frozenset[str] | None, hidden: tuple[str, ...] = (),
                 validator: Validator | None = None):
        self.inner = inner
        self.allowed = allowed
        self.hidden = hidden        # headers the condition reads that are not declared
        self.validator = validator
        self.text = inner.text
        self._memo = ("krakend_visible:" + (",".join(sorted(allowed)) if allowed is not None else "*")
                      + (f":{validator.memo_key}" if validator is not None else ""))

    def view(self, req: RequestView) -> RequestView:
        allowed, val = self.allowed, self.validator
        drop = val.names if val is not None else frozenset()

        def make() -> RequestView:
            # header_map, not req.headers: the addon hands the engine a one-shot iterator of headers
            hs = [(k, v) for k, vals in req.header_map.items()
                  if (allowed is None or k in allowed) and k not in drop for v in vals]
            if val is not None:
                hs.extend((k, v) for k, v in val.headers(req) if allowed is None or k in allowed)
            v = _VisibleView(req.method, req.scheme, req.host, req.port, req.path, req.query_string,
                             hs, req.peer, req.jwt_token)
            v.__dict__["_orig"] = req
            return v
        v = req.memo(self._memo, make)
        v.params, v.rest = req.params, req.rest
        return v

    def fail(self, req: RequestView, env: Any) -> str | None:
        r = self.inner.fail(self.view(req), env)
        if r is not None and self.hidden:
            sent = [canonical_header(n) for n in self.hidden if req.header_map.get(n)]
            if sent:
                r += (f" ({', '.join(sent)} {'was' if len(sent) == 1 else 'were'} sent but "
                      f"{'is' if len(sent) == 1 else 'are'} not in the endpoint's input_headers)")
        return r


def headers_read(cond: Cond) -> frozenset[str]:
    """The request headers (lower-case) a compiled condition reads, as far as it says."""
    read = getattr(cond, "headers_read", None)     # a CEL policy says which headers it reads
    return frozenset(read()) if read is not None else frozenset()


def compile_visible(w: VisibleHeaders | TokenRejected, cc: CompileCtx,
                    compile_condition: Callable[..., Cond | None]) -> Cond | None:
    """Compiles a :class:`VisibleHeaders` (and a :class:`TokenRejected`: the compiler hands this
    function every importer-only condition)."""
    if isinstance(w, TokenRejected):
        return TokenRejectedCond(compile_token_check(w.check, cc), w.status)
    cond = compile_condition(w.inner, cc, "backend/conditional")
    if cond is None:
        return None
    validator = compile_token_check(w.token, cc) if w.token is not None else None
    hidden = sorted(n for n in headers_read(cond) if w.headers is not None and n not in w.headers)
    if hidden:
        shown = ", ".join(canonical_header(n) for n in hidden)
        one = len(hidden) == 1
        at: Y = next(iter(w.inner.v.values())) if isinstance(w.inner.v, dict) and w.inner.v else w.inner
        cc.warn(at, f"{w.label}: the policy reads the header{'' if one else 's'} {shown}, which "
                    f"{'is' if one else 'are'} not in the endpoint's input_headers: KrakenD "
                    f"does not pass {'it' if one else 'them'} on, so the policy sees "
                    f"{'it' if one else 'them'} as missing")
    return VisibleHeadersCond(cond, w.headers, tuple(hidden), validator)
