"""The ``cel-expr-python`` engine (Google's C++ CEL) behind ``cel:`` conditions: optional (the
extra ``condroute[fast-cel]``), chosen automatically when installed, or with ``CONDROUTE_CEL_ENGINE``.

The engine is given plain Python values, the helper table (:mod:`.helpers`) and the variable
names (:mod:`.vocabulary`), and answers as :mod:`.outcome` says.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from .helpers import Helper, HelperError
from .outcome import a_type, category


class CelExprEngine:
    name = "cel-expr-python"

    def __init__(self, helpers: dict[str, Helper], variables: dict[str, str], note: Callable[[str], None]):
        """``variables``: name -> CEL type ("dyn" or "timestamp") of every variable an expression may read."""
        from cel_expr_python import cel   # an optional extra: imported only when this engine is chosen

        T = cel.Type
        self._BOOL, self._ERROR = T.BOOL, T.ERROR
        types = {"S": T.STRING, "B": T.BOOL, "D": T.DYN}                 # the helper table's letters
        var_types = {"dyn": T.DYN, "timestamp": T.TIMESTAMP}
        map_t = T.Map(T.STRING, T.DYN)
        self._note = note
        decls = []
        for name, h in helpers.items():
            params = [types[p] for p in h.params]
            overloads = [cel.Overload(f"{name}_global", types[h.returns], params, impl=self._wrap(h.call))]
            if h.method is not None:
                # the receiver: a map in front of the arguments (req_headers.getHeader('X')), or the
                # first argument itself (ip.ipInCidr(cidr))
                mparams = params if h.receiver == "first" else [map_t] + params
                overloads.append(cel.Overload(f"{name}_member", types[h.returns], mparams, is_member=True,
                                              impl=self._wrap(h.method)))
            decls.append(cel.FunctionDecl(name, overloads))
        self.env = cel.NewEnv(variables={v: var_types[t] for v, t in variables.items()}, functions=decls)

    def _wrap(self, fn: Callable) -> Callable:
        def call(*args: Any) -> Any:
            try:
                return fn(*args)
            except HelperError as e:
                self._note(str(e))
                raise ValueError("helper error") from None
            except Exception:  # noqa: BLE001 - becomes an error value
                raise ValueError("evaluation error") from None
        return call

    def compile(self, text: str, tree: Any) -> Any:
        # Type checking is off: our own checker has already validated names, and both engines then
        # treat a type mismatch the same way, as an evaluation error (the backend is skipped).
        return self.env.compile(text, disable_check=True)

    def run(self, program: Any, variables: dict[str, Any]) -> tuple[str, Any]:
        r = program.eval(data=variables)
        v = r.value()
        if v is True:
            return "true", None
        t = r.type()
        if t == self._BOOL:
            return "false", None
        if t == self._ERROR:
            return "error", _cpp_error(v if isinstance(v, str) else "")
        name = t.name().lower()
        name = {"int64": "int", "uint64": "uint", "null_type": "null"}.get(name, name)
        name = name.split("(")[0].split("<")[0]
        return "value", a_type(name)


_CPP_KEY = re.compile(r'not found in map\s*:\s*"(.*)"', re.IGNORECASE)


def _cpp_error(msg: str) -> tuple[str, str | None]:
    low = msg.lower()
    m = _CPP_KEY.search(msg)
    if m:
        return "no such key", m.group(1)
    if "no such key" in low or "key not found" in low:
        return "no such key", None
    return category(low), None

