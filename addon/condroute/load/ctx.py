"""Bookkeeping while a rules file is compiled: where it is, and what went wrong where."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import Problem, RulesError
from .yamlpos import Y


@dataclass(frozen=True)
class Importer:
    """Who imports a file: its path and its model Settings (``settings.jwt`` there supplies the
    keys an imported KrakenD ``auth/validator`` cannot fetch offline)."""
    file: str
    settings: Any


class CompileCtx:
    def __init__(self, file: str, text: str = ""):
        self.file = file
        self.base_dir = os.path.dirname(os.path.abspath(file)) if file else os.getcwd()
        self._text = text
        self._lines: list[str] | None = None
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        # filled in by the compiler as it goes; read by condition compilers that need settings
        self.settings: Any = None
        self.upstreams: dict[str, Any] = {}
        self.route_params: tuple[str, ...] = ()
        self.route_has_rest = False
        self.header_names: set[str] = set()   # header names the current route's conditions read
        # settings.jwt / settings.geoip_db were written (even when wrong: their conditions then do not
        # repeat the error)
        self.jwt_declared = False
        self.geoip_declared = False
        # identical compiled parts (a matcher, a condition, a set of methods) are built once and
        # shared: generated files repeat them thousands of times (a 10,000-route file: ~20 MB)
        self.shared: dict[Any, Any] = {}
        # set on the context of an imported file (``imports:``): the importing file's path and its
        # model Settings; its upstreams are this context's (shared), so service names and KrakenD
        # hosts resolve through them
        self.importer: Importer | None = None
        # the files this file imports, with the stat key of what was read (None: unreadable), so
        # that the hot reload sees a change in any of them
        self.imported: list[tuple[str, tuple[int, int, int, int] | None]] = []

    def child(self, file: str, text: str) -> "CompileCtx":
        """The context of a file that this file imports: problems are located in that file but
        recorded here (the same lists), and upstreams and shared compiled parts are this file's."""
        c = CompileCtx(file, text)
        c.problems, c.warnings = self.problems, self.warnings
        c.upstreams, c.shared = self.upstreams, self.shared
        c.jwt_declared, c.geoip_declared = self.jwt_declared, self.geoip_declared
        return c

    @property
    def lines(self) -> list[str]:
        """The file's lines, split on first use: only error messages read them, and splitting a
        10,000-route file up front held ~10 MB for nothing."""
        if self._lines is None:
            self._lines = self._text.splitlines()
        return self._lines

    def share(self, key: Any, make: Any) -> Any:
        """``make()``, or what it returned for the same key before (only for immutable results)."""
        v = self.shared.get(key)
        if v is None:
            v = self.shared[key] = make()
        return v

    # -- errors -------------------------------------------------------------------------------
    def error_at(self, line: int, col: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, col, message))

    def error(self, node: Y, message: str) -> None:
        self.error_at(node.line, node.col, message)

    def error_key(self, mapping: Y, key: str, message: str) -> None:
        line, col = (mapping.key_pos or {}).get(key, (mapping.line, mapping.col))
        self.error_at(line, col, message)

    def warn(self, node: Y | None, message: str, key: str | None = None) -> None:
        if node is None:
            self.warnings.append(Problem(self.file, 1, 1, message))
            return
        line, col = node.line, node.col
        if key is not None and node.key_pos and key in node.key_pos:
            line, col = node.key_pos[key]
        self.warnings.append(Problem(self.file, line, col, message))

    def raise_if_errors(self) -> None:
        if self.problems:
            seen, uniq = set(), []
            for p in self.problems:
                if (p.line, p.col, p.message) not in seen:
                    seen.add((p.line, p.col, p.message))
                    uniq.append(p)
            uniq.sort(key=lambda p: (p.line, p.col))
            raise RulesError(uniq)

    # -- helpers ------------------------------------------------------------------------------
    def resolve_path(self, path: str) -> str:
        """Paths inside the rules file are relative to the rules file."""
        path = os.path.expanduser(path)
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    def check_keys(self, node: Y, allowed: tuple[str, ...] | frozenset, what: str) -> bool:
        ok = True
        for k in node.v:
            if k not in allowed:
                ok = False
                self.error_key(node, k, f"unknown key {k!r} in {what}; expected one of: {', '.join(sorted(allowed))}")
        return ok

    def expect_map(self, node: Y, what: str) -> bool:
        if not isinstance(node.v, dict):
            self.error(node, f"{what} must be a mapping, not {kind(node.v)}")
            return False
        return True

    def expect_list(self, node: Y, what: str) -> bool:
        if not isinstance(node.v, list):
            self.error(node, f"{what} must be a list, not {kind(node.v)}")
            return False
        return True

    def expect_str(self, node: Y, what: str) -> str | None:
        text = node.text    # the text written: `yes` or `0777` is text here, not a boolean or 511
        if not text:
            self.error(node, f"{what} must be a non-empty string, not {kind(node.v)}")
            return None
        return text


def kind(v: Any) -> str:
    if v is None:
        return "empty"
    if isinstance(v, bool):
        return f"a boolean ({'true' if v else 'false'})"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, (int, float)):
        return f"a number ({v})"
    if isinstance(v, str):
        return f"a string ({v!r})" if len(v) < 40 else "a string"
    return type(v).__name__
