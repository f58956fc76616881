"""One Istio ``HTTPMatchRequest`` (a match block of a VirtualService http rule) → what a model
Route matches on: a path matcher, methods, and a condition mapping in the rules format.

Istio/Envoy semantics kept (see load/istio.py for the sources):

* ``uri``: ``exact`` the whole path, ``prefix`` a plain string prefix (``/static`` matches
  ``/staticfoo``), ``regex`` RE2 matching the whole path; ``ignoreUriCase`` for exact and prefix only;
* ``headers``: exact/prefix case-sensitive, regex a full match, ``{}`` or ``regex: "*"`` presence;
  ``@request.auth.claims.X`` (or ``[a][b]``) a JWT claim; ``:authority``, ``:method``, ``:scheme``
  the pseudo-headers;
* ``withoutHeaders``: NOT the match, a missing header read as "" (Envoy's
  ``treat_missing_header_as_empty``), a presence test inverted to absence;
* ``queryParams``: the *first* value of the parameter (Envoy), decoded; ``{}`` presence;
* ``method``, ``authority`` (the host as the client wrote it, with its port when not the
  scheme's default), ``scheme``, ``port``;
* ``sourceLabels``, ``sourceNamespace``, ``gateways`` select which proxies get the rule, not
  requests: a located warning, and the block applies to every request.

Every generated condition node is positioned at the Istio key it comes from, so that a bad regex
is reported at its line in the VirtualService file."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import re2

from ..model import RoutePath
from ..node import Y
from .ctx import CompileCtx, kind

MATCH_KEYS = ("authority", "gateways", "headers", "ignoreUriCase", "method", "name", "port", "queryParams",
              "scheme", "sourceLabels", "sourceNamespace", "statPrefix", "uri", "withoutHeaders")
STRING_MATCH_KEYS = ("exact", "prefix", "regex")
SELECTORS = ("sourceLabels", "sourceNamespace", "gateways")
PRESENT = object()          # a StringMatch that tests presence only
_CLAIM = re.compile(r"@request\.auth\.claims(?:\.(?P<dotted>.+)|(?P<brackets>(?:\[[^\[\]]+\])+))\Z")


@dataclass
class BlockMatch:
    """What one match block matches on, and the uri match a rewrite or redirect needs."""
    path: RoutePath | None = None
    methods: frozenset[str] | None = None
    conditions: Y | None = None
    uri_kind: str | None = None        # exact | prefix | regex | None (no uri match)
    uri_value: str = ""
    catch_all: bool = False


def ynode(v: Any, at: Y) -> Y:
    """A generated node positioned where ``at`` was written (mappings: every key there too)."""
    if isinstance(v, dict):
        return Y(v, at.line, at.col, {k: (n.line, n.col) for k, n in v.items()})
    return Y(v, at.line, at.col)


def snake_hint(key: str, known: tuple[str, ...]) -> str:
    """" (did you mean prefixRewrite?)" for a snake_case spelling of a known camelCase key."""
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
    return f" (did you mean {camel}? Kubernetes reads the camelCase name and would drop {key})" \
        if camel != key and camel in known else ""


def check_keys(node: Y, known: tuple[str, ...], what: str, cc: CompileCtx) -> bool:
    ok = True
    for k in node.v:
        if k not in known:
            ok = False
            cc.error_key(node, k, f"unknown key {k!r} in {what}{snake_hint(k, known)}; expected one of: "
                                  f"{', '.join(known)}")
    return ok


def full_regex(pattern: str) -> str:
    """Envoy's safe_regex matches the whole value: anchored (RE2's ``$`` is the end of the text)."""
    return f"^(?:{pattern})$"


def string_match(node: Y | None, cc: CompileCtx, what: str, presence: bool = False,
                 ignore_case: bool = False) -> Any:
    """An Istio StringMatch as a condroute MATCHER node, PRESENT for a presence test (headers and
    query parameters: ``{}``, an empty value, ``regex: "*"``), or None after a located error."""
    if node is None or node.v is None or (isinstance(node.v, dict) and not node.v):
        if presence:
            return PRESENT
        cc.error(node, f"{what}: a match (exact, prefix or regex) is missing here") if node is not None else None
        return None
    if not isinstance(node.v, dict):
        cc.error(node, f"{what} must be a mapping with one of exact, prefix, regex, not {kind(node.v)}")
        return None
    if not check_keys(node, STRING_MATCH_KEYS, what, cc):
        return None
    if len(node.v) > 1:
        cc.error(node, f"{what}: use one of exact, prefix, regex (Istio refuses {' and '.join(node.v)} together)")
        return None
    (form, vn), = node.v.items()
    text = vn.text
    if text is None and vn.v is None and form == "exact":
        text = ""                   # `exact:` with nothing: the empty value (proto3's default)
    if text is None or isinstance(vn.v, (dict, list)):
        cc.error(vn, f"{what}: {form} must be text, not {kind(vn.v)}")
        return None
    if form == "regex":
        if text == "*" and presence:
            return PRESENT
        if not text:
            cc.error(vn, f"{what}: an empty regex (Istio refuses it)")
            return None
        why = regex_problem(text)
        if why is not None:
            cc.error(vn, f"{what}: bad regular expression {text!r}: {why} (RE2 syntax, as Envoy's: no "
                         f"backreferences or lookaround)")
            return None
        return ynode({"regex": ynode(full_regex(text), vn)}, node)
    if form == "prefix":
        if not text:
            cc.error(vn, f"{what}: an empty prefix (Istio refuses it)")
            return None
        m = {"prefix": ynode(text, vn)}
    elif not ignore_case:
        return ynode(text, vn)
    else:
        m = {"equals": ynode(text, vn)}
    if ignore_case:
        m["ignore_case"] = ynode(True, vn)
    return ynode(m, node)


def _re2(pattern: str) -> Any:
    opts = re2.Options()
    opts.log_errors = False
    return re2.compile(pattern, options=opts)


def regex_problem(pattern: str) -> str | None:
    """Why RE2 refuses ``pattern`` (None when it compiles)."""
    try:
        _re2(pattern)
    except re2.error as e:
        return e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
    return None


def holds_on_empty(m: Y) -> bool:
    """Whether a MATCHER built by :func:`string_match` holds on the value "" (what Envoy tests
    for a withoutHeaders header that is missing)."""
    if not isinstance(m.v, dict):
        return m.text == ""
    if "prefix" in m.v:
        return m.v["prefix"].text == ""
    if "equals" in m.v:
        return m.v["equals"].text == ""
    try:
        return _re2(m.v["regex"].text or "").fullmatch("") is not None
    except re2.error:
        return False            # the compiler reports the bad regex, at its line


def _cel_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def cel_match(value_expr: str, m: Y) -> str:
    """A CEL test of ``value_expr`` (a string) against a MATCHER built by :func:`string_match`."""
    if not isinstance(m.v, dict):
        return f"{value_expr} == {_cel_string(m.text or '')}"
    if "prefix" in m.v:
        return f"{value_expr}.startsWith({_cel_string(m.v['prefix'].text or '')})"
    return f"{value_expr}.matches({_cel_string(m.v['regex'].text or '')})"


def _claim(name: str) -> str | None:
    m = _CLAIM.match(name)
    if m is None:
        return None
    if m.group("dotted"):
        return m.group("dotted")
    return ".".join(re.findall(r"\[([^\[\]]+)\]", m.group("brackets")))


class MatchReader:
    """Reads match blocks for one VirtualService file (``cc``); ``label`` names the rule in messages."""

    def __init__(self, cc: CompileCtx):
        self.cc = cc

    def block(self, node: Y, label: str) -> BlockMatch | None:
        cc = self.cc
        if not cc.expect_map(node, f"a match block of {label}"):
            return None
        if not node.v:
            cc.error(node, f"{label}: an empty match block (Istio refuses it: leave `match` out for a rule "
                           f"that matches every request)")
            return None
        if not check_keys(node, MATCH_KEYS, f"a match block of {label}", cc):
            return None
        v = node.v
        out = BlockMatch()
        ic = False
        if "ignoreUriCase" in v:
            icn = v["ignoreUriCase"]
            if not isinstance(icn.v, bool):
                cc.error(icn, f"{label}: ignoreUriCase must be true or false, not {kind(icn.v)}")
            ic = icn.v is True
        parts: list[tuple[str, Y]] = []     # condition key, value
        cel: list[tuple[str, Y]] = []       # CEL tests, ANDed into one `cel` condition
        before = len(cc.problems)
        if "uri" in v:
            self._uri(v["uri"], ic, label, out)
        for sel in SELECTORS:
            if sel in v:
                cc.warn(node, f"{label}: {sel} selects which workloads or gateways get this rule, not which "
                              f"requests; condroute applies the rule to every request", key=sel)
        if "headers" in v:
            self._headers(v["headers"], label, parts, cel, out, negate=False)
        if "withoutHeaders" in v:
            self._headers(v["withoutHeaders"], label, parts, cel, out, negate=True)
        if "queryParams" in v:
            self._query(v["queryParams"], label, cel)
        if "method" in v:
            self._method(v["method"], f"{label}: method", parts, out)
        if "authority" in v:
            m = string_match(v["authority"], cc, f"{label}: authority")
            if m is not None:
                parts.append(("authority", m))
        if "scheme" in v:
            m = string_match(v["scheme"], cc, f"{label}: scheme")
            if m is not None:
                cel.append((cel_match("request.scheme", m), v["scheme"]))
        if "port" in v:
            pn = v["port"]
            if isinstance(pn.v, bool) or not isinstance(pn.v, int) or not 1 <= pn.v <= 65535:
                cc.error(pn, f"{label}: port must be a port number from 1 to 65535, not {kind(pn.v)}")
            else:
                parts.append(("port", pn))
        if len(cc.problems) > before:
            return None
        if cel:
            parts.append(("cel", ynode(" && ".join(t for t, _ in cel), cel[0][1])))
        out.conditions = _conditions(parts, node)
        out.catch_all = out.conditions is None and out.methods is None and (
            out.uri_kind is None or (out.uri_kind == "prefix" and out.uri_value == "/")
            or (out.uri_kind == "regex" and out.uri_value == ".*"))
        return out

    # -- the parts ----------------------------------------------------------------------------
    def _uri(self, node: Y, ic: bool, label: str, out: BlockMatch) -> None:
        m = string_match(node, self.cc, f"{label}: uri", ignore_case=ic)
        if m is None:
            return
        (form, vn), = node.v.items()
        text = vn.text or ""
        if form in ("exact", "prefix") and not text.startswith("/"):
            self.cc.error(vn, f"{label}: uri {form} {text!r} must start with '/' (request paths do)")
            return
        out.uri_kind, out.uri_value = form, text
        lp = ""
        if not ic and form in ("exact", "prefix") and "/" in text[1:]:
            lp = "/" + text[1:].split("/", 1)[0]        # a whole first segment: the route index may key on it
        elif not ic and form == "exact" and len(text) > 1:
            lp = text
        shown = f"{form} {text}" + (" (ignoring case)" if ic and form != "regex" else "")
        out.path = RoutePath(text=shown, literal_prefix=lp, matcher=m)

    def _method(self, node: Y, what: str, parts: list, out: BlockMatch) -> None:
        m = string_match(node, self.cc, what)
        if m is None:
            return
        if not isinstance(m.v, dict) and m.text and m.text == m.text.upper():
            out.methods = frozenset({m.text})
        else:
            parts.append(("method", m))

    def _headers(self, node: Y, label: str, parts: list, cel: list, out: BlockMatch, negate: bool) -> None:
        cc = self.cc
        key = "withoutHeaders" if negate else "headers"
        if not cc.expect_map(node, f"{label}: {key}"):
            return
        plain: dict[str, Y] = {}
        for name, sn in node.v.items():
            at = Y(None, *(node.key_pos or {}).get(name, (sn.line, sn.col)))
            what = f"{label}: {key} {name}"
            low = name.lower()
            claim = _claim(name) if name.startswith("@") else None
            if name.startswith("@") and claim is None:
                cc.error(at, f"{what}: only @request.auth.claims.NAME (or [a][b]) can be matched here")
                continue
            if low in (":path",):
                cc.error(at, f"{what}: matching :path in headers is not supported; use uri")
                continue
            if low.startswith(":") and low not in (":authority", ":method", ":scheme"):
                cc.error(at, f"{what}: {name} is not a request pseudo-header (:authority, :method, :scheme)")
                continue
            m = string_match(sn, cc, what, presence=True)
            if m is None:
                continue
            if claim is not None:
                self._claim_part(claim, m, sn, at, what, negate, parts)
                continue
            if low in (":method", ":authority", ":scheme") and m is not PRESENT:
                if negate:
                    cc.error(at, f"{what}: withoutHeaders on a pseudo-header is not supported")
                elif low == ":method":
                    self._method(sn, what, parts, out)
                elif low == ":authority":
                    parts.append(("authority", m))
                else:
                    cel.append((cel_match("request.scheme", m), sn))
                continue
            if low.startswith(":"):
                if negate:          # a request always has its pseudo-headers
                    parts.append(("cel", ynode("false", at)))
                continue
            if not negate:
                plain[name] = ynode({"present": ynode(True, at)}, at) if m is PRESENT else m
            elif m is PRESENT:      # withoutHeaders {h: {}}: the header is absent
                parts.append(("header", ynode({name: ynode({"present": ynode(False, at)}, at)}, at)))
            elif not holds_on_empty(m):      # missing → "" does not match → holds
                parts.append(("not", ynode({"header": ynode({name: m}, at)}, at)))
            else:                   # missing → "" matches → does not hold: present and not matching
                parts.append(("header", ynode({name: ynode({"present": ynode(True, at), "not": m}, at)}, at)))
        if plain:
            parts.append(("header", ynode(plain, node)))

    def _claim_part(self, claim: str, m: Any, sn: Y, at: Y, what: str, negate: bool, parts: list) -> None:
        cc = self.cc
        imp = cc.importer
        if imp is None or getattr(imp.settings, "jwt", None) is None:
            cc.error(at, f"{what}: a JWT claim match needs settings.jwt in the importing condroute file "
                         f"(Istio reads claims only from tokens a RequestAuthentication verified: say there how "
                         f"condroute verifies them)")
            return
        mm = ynode({"present": ynode(True, at)}, at) if m is PRESENT else m
        cond = ynode({"jwt": ynode({claim: mm}, at)}, at)
        if negate:
            parts.append(("not", cond))
        else:
            parts.append(("jwt", cond.v["jwt"]))

    def _query(self, node: Y, label: str, cel: list) -> None:
        cc = self.cc
        if not cc.expect_map(node, f"{label}: queryParams"):
            return
        for name, sn in node.v.items():
            m = string_match(sn, cc, f"{label}: queryParams {name}", presence=True)
            if m is None:
                continue
            q = _cel_string(name)
            test = f"hasQuery({q})" if m is PRESENT else f"(hasQuery({q}) && {cel_match(f'getQuery({q})', m)})"
            cel.append((test, sn))


def _conditions(parts: list[tuple[str, Y]], at: Y) -> Y | None:
    """One condition mapping when each key appears once (and may stand in a route's match), else
    ``all: [...]``."""
    if not parts:
        return None
    keys = [k for k, _ in parts]
    if len(set(keys)) == len(keys) and "method" not in keys:
        return ynode(dict(parts), at)
    return ynode({"all": ynode([ynode({k: n}, n) for k, n in parts], at)}, at)
