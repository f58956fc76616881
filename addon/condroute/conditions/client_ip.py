"""``client_ip: CIDR or [CIDRs]``: the client's address (through settings.trusted_proxies)."""
from __future__ import annotations

from typing import Any

from ..load.common import parse_cidrs
from ..load.ctx import CompileCtx
from ..node import Y
from ..request import IPNet, RequestView, ip_text
from .base import Cond, Kind, SubCompiler

_SCHEMA = {
    "description": "a CIDR (10.0.0.0/8, ::1/128) or a list of them",
    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
}


class CidrCond(Cond):
    def __init__(self, nets: list[IPNet]):
        self.nets = nets
        self.text = "client IP in " + ", ".join(str(n) for n in nets)
        self._not_in = " is not in " + ", ".join(str(n) for n in nets)
        # (version, network, mask) as integers: ipaddress's own `in` costs more than all the rest
        self._ints = tuple((n.version, int(n.network_address), int(n.netmask)) for n in nets)

    def fail(self, req: RequestView, env: Any) -> str | None:
        ip = req.client_ip(env.settings.trusted_proxies)
        if ip is None:
            return "client IP is unknown"
        version, value = ip._version, ip._ip    # what ipaddress's own properties return, without the calls
        for v, net, mask in self._ints:
            if v == version and value & mask == net:
                return None
        return "client IP " + ip_text(ip) + self._not_in


def compile_client_ip(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    nets = parse_cidrs(node, cc, "client_ip")
    return cc.share(("cidr", tuple(nets)), lambda nets=nets: CidrCond(nets)) if nets else None


KINDS = [Kind("client_ip", 50, compile_client_ip, _SCHEMA, "the client's IP address")]
