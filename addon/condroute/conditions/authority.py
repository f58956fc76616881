"""``authority: MATCHER``: the request's authority, ``host[:port]`` as a client writes it in the
Host header (HTTP/2 ``:authority``): the port is left out when it is the scheme's default, an IPv6
host is in brackets. Istio's ``authority`` match reads it (``reviews:9080``); ``host`` compares the
host alone. Built from the host and the port the client asked for, so a client that writes the
default port explicitly (``shop.example:80``) is read without it."""
from __future__ import annotations

from ..httptext import authority
from ..load.ctx import CompileCtx
from ..node import Y
from .base import MATCHER_SCHEMA, Cond, Kind, SubCompiler, single_value


def compile_authority(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return single_value("authority", lambda r: authority(r.scheme, r.host, r.dest_port), node, cc)


KINDS = [Kind("authority", 85, compile_authority, MATCHER_SCHEMA,
              "the request's authority: host[:port], the port left out when it is the scheme's default")]
