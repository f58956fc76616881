"""The CEL engines behind ``cel:`` conditions, and which one runs.

- ``cel-python`` (:mod:`.engine_celpy`): celpy, pure Python, always installed.
- ``cel-expr-python`` (:mod:`.engine_celexpr`): Google's C++ CEL, the optional extra
  ``condroute[fast-cel]``; chosen automatically when installed, or with ``CONDROUTE_CEL_ENGINE``.

Both have one interface: ``compile(text, lark_tree) -> program``, ``run(program, variables) ->
(code, info)`` (see :mod:`.outcome`), ``name``. Both are given plain Python
values (dicts, lists, strings, numbers, datetimes) and the same helper functions (:mod:`.helpers`).
One engine of each kind is made, on first use, and shared by every policy.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from .context import is_literal, set_note
from .engine_celexpr import CelExprEngine
from .engine_celpy import CelPyEngine
from .helpers import HELPERS
from .vocabulary import VARIABLE_TYPES

ENGINE_ENV = "CONDROUTE_CEL_ENGINE"
ENGINE_NAMES = ("cel-python", "cel-expr-python")
_ALIASES = {"celpy": "cel-python", "cel-python": "cel-python", "python": "cel-python",
            "cel-expr-python": "cel-expr-python", "cel-expr": "cel-expr-python", "fast": "cel-expr-python",
            "cpp": "cel-expr-python"}


def available_engines() -> list[str]:
    """The engines installed here, the fastest last."""
    out = ["cel-python"]
    try:
        import cel_expr_python.cel  # noqa: F401 - an optional extra: probed here, not imported with condroute
    except Exception:  # noqa: BLE001 - not installed, or not loadable on this platform
        pass
    else:
        out.append("cel-expr-python")
    return out


def default_engine_name() -> str:
    """``CONDROUTE_CEL_ENGINE`` if set (cel-python | cel-expr-python | auto), else the fastest installed."""
    want = os.environ.get(ENGINE_ENV, "").strip().lower()
    if want and want != "auto":
        name = _ALIASES.get(want)
        if name is None:
            raise ValueError(f"{ENGINE_ENV}={want!r}: expected cel-python, cel-expr-python or auto")
        return name
    return available_engines()[-1]


def canonical_name(name: str) -> str:
    n = _ALIASES.get(name.strip().lower())
    if n is None:
        raise ValueError(f"unknown CEL engine {name!r}: expected one of {', '.join(ENGINE_NAMES)}")
    return n


_engines: dict[str, Any] = {}
_engine_lock = threading.Lock()


def get_engine(name: str | None = None) -> Any:
    """The engine by name (cel-python | cel-expr-python); default: ``CONDROUTE_CEL_ENGINE`` or the
    fastest installed one."""
    name = canonical_name(name) if name else default_engine_name()
    eng = _engines.get(name)
    if eng is None:
        with _engine_lock:
            eng = _engines.get(name)
            if eng is None:
                if name == "cel-expr-python":
                    if name not in available_engines():
                        raise ValueError("the CEL engine cel-expr-python is not installed "
                                         "(pip install 'condroute[fast-cel]'), or unset CONDROUTE_CEL_ENGINE")
                    eng = CelExprEngine(HELPERS, VARIABLE_TYPES, set_note)
                else:
                    eng = CelPyEngine(HELPERS, set_note, is_literal)
                _engines[name] = eng
    return eng
