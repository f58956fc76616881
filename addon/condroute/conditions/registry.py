"""The table of condition kinds, and the compiler of a condition mapping that reads it.

Every module of this package that defines ``KINDS`` (a list of :class:`~.base.Kind`) is a
condition kind: adding a kind is adding one module here (and its tests). ``compile_condition``,
``condroute schema`` and the loaders' messages all read :data:`KINDS`."""
from __future__ import annotations

import importlib
import pkgutil

from ..load.ctx import CompileCtx, kind
from ..node import Y
from .base import AllCond, Cond, Kind


def _package_path() -> list[str]:
    return list(importlib.import_module(__package__).__path__)


def _discover() -> dict[str, Kind]:
    found: list[Kind] = []
    for info in pkgutil.iter_modules(_package_path()):
        mod = importlib.import_module(f"{__package__}.{info.name}")
        found.extend(getattr(mod, "KINDS", ()))
    found.sort(key=lambda k: k.rank)
    names = [k.name for k in found]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RuntimeError(f"condition kinds registered twice: {', '.join(sorted(dup))}")
    return {k.name: k for k in found}


KINDS: dict[str, Kind] = _discover()
CONDITION_KEYS: tuple[str, ...] = tuple(KINDS)
# the condition keys a route's match may hold beside its own host, methods and path
MATCH_CONDITION_KEYS: tuple[str, ...] = tuple(k.name for k in KINDS.values() if k.in_match)


def compile_condition(node: Y, cc: CompileCtx, what: str = "when") -> Cond | None:
    """Compile a condition mapping (every key must hold). Errors are recorded in ``cc``."""
    if not isinstance(node.v, dict):
        cc.error(node, f"{what} must be a mapping of conditions ({', '.join(CONDITION_KEYS)}), not {kind(node.v)}")
        return None
    if not node.v:
        cc.error(node, f"{what} is empty; omit it for a backend that always holds")
        return None
    parts: list[Cond] = []
    for key, sub in node.v.items():
        k = KINDS.get(key)
        if k is None:
            cc.error_key(node, key, f"unknown condition {key!r}; expected one of: {', '.join(CONDITION_KEYS)}")
            continue
        c = k.compile(sub, cc, lambda n, w: compile_condition(n, cc, w))
        if c is not None:
            parts.append(c)
    if len(parts) != len(node.v):
        return None
    return parts[0] if len(parts) == 1 else AllCond(parts)


def compile_match_conditions(node: Y, cc: CompileCtx) -> Cond | None:
    """The condition keys of a route's ``match`` (beside host, methods and path)."""
    unknown = [k for k in node.v if k not in MATCH_CONDITION_KEYS]
    for k in unknown:
        cc.error_key(node, k, f"unknown key {k!r} in match; expected host, methods, path, "
                              f"or a condition ({', '.join(MATCH_CONDITION_KEYS)})")
    if unknown:
        return None
    return compile_condition(node, cc, "match")
