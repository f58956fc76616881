"""GeoIP conditions and database (issue: identity-aware routing). Placeholder until implemented."""
from __future__ import annotations

from typing import Any

from .compile_ctx import CompileCtx
from .yamlpos import Y


def open_geoip_db(node: Y | None, cc: CompileCtx) -> Any:
    if node is not None:
        cc.error(node, "settings.geoip_db is not supported yet")
    return None


def compile_geo_condition(node: Y, cc: CompileCtx):
    cc.error(node, "geo conditions are not supported yet")
    return None
