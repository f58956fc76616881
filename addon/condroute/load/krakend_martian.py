"""KrakenD ``modifier/martian`` (google/martian through krakend-martian) on a backend → the
backend's ``set_headers`` / ``remove_headers``.

The request-scope header operations are run in order over a symbolic header map:
``header.Modifier`` sets, ``header.Blacklist`` removes, ``fifo.Group`` runs its modifiers in order
(no ``scope`` means request and response). What cannot be known before the request is there
(``header.Append``/``Copy``/``Id``, a filter's conditional modifiers), response-scope parts and
other modifiers (body, cookie, url, querystring...) are located warnings, never silently dropped.
KrakenD runs a backend without any modifier when the value does not hold exactly one: so does
condroute, with a warning."""
from __future__ import annotations

from ..node import Y
from .common import REQUEST_HEADERS_KEPT
from .ctx import CompileCtx

MARTIAN = ("modifier/martian", "github.com/devopsfaith/krakend-martian")
_UNKNOWN = object()


def _meta(key: str) -> bool:
    return key[:1] in ("@", "$", "_", "#")


def martian_node(extra: Y | None) -> Y | None:
    if extra is None or not isinstance(extra.v, dict):
        return None
    return next((extra.v[k] for k in MARTIAN if k in extra.v), None)


class _Run:
    def __init__(self, cc: CompileCtx, label: str):
        self.cc = cc
        self.label = label
        self.state: dict[str, tuple[str, object]] = {}    # lower name -> (name as written, value | None | _UNKNOWN)

    def one(self, node: Y) -> None:
        """A mapping that must hold exactly one modifier."""
        cc = self.cc
        if not isinstance(node.v, dict):
            cc.warn(node, f"{self.label}: a martian modifier must be a mapping; not applied")
            return
        keys = [k for k in node.v if not _meta(k)]
        if len(keys) != 1:
            cc.warn(node, f"{self.label}: KrakenD ignores this modifier/martian: it must hold exactly one "
                          f"modifier (use fifo.Group for several), not {len(keys)}; condroute applies none of it")
            return
        self.apply(node, keys[0], node.v[keys[0]])

    def apply(self, parent: Y, name: str, body: Y) -> None:
        cc, label = self.cc, self.label
        if not isinstance(body.v, dict):
            cc.warn(body, f"{label}: {name} must be a mapping; not applied")
            return
        b = body.v
        scope = b.get("scope")
        scopes = [s.v for s in scope.v] if scope is not None and isinstance(scope.v, list) else ["request", "response"]
        request = "request" in scopes
        if "response" in scopes and name in ("header.Blacklist", "header.Modifier"):
            # (other modifiers get one warning of their own below)
            cc.warn(parent, f"{label}: {name}'s response scope is not applied: condroute does not change "
                            f"responses", key=name)
        if name == "header.Modifier":
            hn, hv = b.get("name"), b.get("value")
            if hn is None or not isinstance(hn.v, str) or hv is None or hv.text is None:
                cc.warn(parent, f"{label}: header.Modifier needs name and value; not applied", key=name)
            elif request and self.kept(parent, name, hn.v):
                self.state[hn.v.lower()] = (hn.v, hv.text)
        elif name == "header.Blacklist":
            names = b.get("names")
            if names is None or not isinstance(names.v, list):
                cc.warn(parent, f"{label}: header.Blacklist needs names (a list); not applied", key=name)
            elif request:
                for n in names.v:
                    if isinstance(n.v, str) and n.v and self.kept(parent, name, n.v):
                        self.state[n.v.lower()] = (n.v, None)
        elif name == "fifo.Group":
            mods = b.get("modifiers")
            if mods is None or not isinstance(mods.v, list):
                cc.warn(parent, f"{label}: fifo.Group needs modifiers (a list); not applied", key=name)
                return
            if request:
                for m in mods.v:
                    self.one(m)
            else:
                cc.warn(parent, f"{label}: fifo.Group has only the response scope: not applied (condroute "
                                "does not change responses)", key=name)
        elif name in ("header.Append", "header.Copy", "header.Id"):
            target = b.get("to") if name == "header.Copy" else b.get("name")
            tname = target.v if target is not None and isinstance(target.v, str) else \
                ("X-Krakend-Id" if name == "header.Id" else "")
            if request and tname:
                self.state[tname.lower()] = (tname, _UNKNOWN)
            cc.warn(parent, f"{label}: {name} is not applied: the value it gives depends on the request",
                    key=name)
        elif name.endswith(".Filter") or name.endswith(".RegexFilter"):
            cc.warn(parent, f"{label}: {name} is a conditional modifier: not applied", key=name)
        else:
            cc.warn(parent, f"{label}: {name} is not applied: condroute applies header.Modifier, "
                            "header.Blacklist and fifo.Group of them", key=name)

    def kept(self, parent: Y, name: str, header: str) -> bool:
        why = REQUEST_HEADERS_KEPT.get(header.lower())
        if why is None:
            return True
        self.cc.warn(parent, f"{self.label}: {name} on {header} is not applied: {header} {why}", key=name)
        return False


def martian_headers(node: Y, cc: CompileCtx, label: str) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(set_headers, remove_headers) for a backend's martian configuration."""
    run = _Run(cc, label)
    run.one(node)
    sets = tuple((n, v) for n, v in run.state.values() if isinstance(v, str))
    removes = tuple(n for n, v in run.state.values() if v is None)
    return sets, removes
