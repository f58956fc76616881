"""``port: MATCHER``: the destination port the client asked for.

In regular, upstream and transparent modes that is the port of the request's target (the
absolute-form URL or the CONNECT target); in reverse mode, the port of the Host header
(``:authority``) the host is read from, or the scheme's default port when it names none (as
``host``, this needs ``keep_host_header=true``). Written as a number (``port: 8080``), a list
(``port: [80, 8080]``) or a matcher mapping (``port: {ge: 8000, lt: 9000}``)."""
from __future__ import annotations

from ..load.ctx import CompileCtx, kind
from ..node import Y
from .base import Cond, Kind, SubCompiler, single_value


def compile_port(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    items = node.v if isinstance(node.v, list) else [node] if not isinstance(node.v, dict) else []
    ok = True
    for n in items:
        text = n.text
        if text is None or not text.isdigit() or not 1 <= int(text) <= 65535:
            cc.error(n, f"port must be a port number from 1 to 65535, not {kind(n.v)}")
            ok = False
    if not ok:
        return None
    return single_value("port", lambda r: str(r.dest_port), node, cc)


_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_SCHEMA = {"description": "a port number, a list of them, or a matcher mapping such as {ge: 8000}",
           "oneOf": [_PORT, {"type": "array", "items": _PORT, "minItems": 1}, {"$ref": "#/$defs/matcher_object"}]}
KINDS = [Kind("port", 95, compile_port, _SCHEMA, "the destination port the client asked for")]
