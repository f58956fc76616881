"""A value as written in a file, and where: the nodes that loaders read and that the model keeps
for conditions (which stay as written, in the rules format, until the compiler reads them).

``Y.v`` holds a ``dict[str, Y]``, a ``list[Y]`` or a plain scalar; ``.line``/``.col`` (1-based)
say where it starts; ``.text`` is a scalar's text as written. Loaders of any format (YAML and JSON
in ``load.yamlpos``; a generated node for an importer) build these. No parser is imported here.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["KeyPos", "Node", "Y", "as_text"]


class KeyPos(Mapping):
    """Where each key of a mapping was written, key -> (line, col), read from one flat tuple of
    line, col pairs in the mapping's key order."""

    __slots__ = ("_keys", "_pos")

    def __init__(self, keys: dict, pos: tuple[int, ...]):
        self._keys = keys
        self._pos = pos

    def __getitem__(self, key: str) -> tuple[int, int]:
        if key not in self._keys:
            raise KeyError(key)
        i = 2 * list(self._keys).index(key)
        return self._pos[i], self._pos[i + 1]

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Y:
    """A value and where it was written. ``text`` is a scalar's text as written (None for a
    mapping, a list, an empty value or JSON's null); ``key_pos`` says where a mapping's keys are."""

    # one slot for a scalar's text or a mapping's key positions: 64 bytes a node, not 80
    __slots__ = ("v", "line", "col", "_x")

    def __init__(self, v: Any, line: int, col: int, key_pos: Any = None,
                 text: str | None = None):
        self.v = v
        self.line = line
        self.col = col
        cls = v.__class__
        if cls is dict:
            self._x = key_pos
        elif cls is list:
            self._x = None
        else:
            self._x = v if text is None and cls is str else text

    @property
    def text(self) -> str | None:
        """A scalar's text as written: ``yes`` is "yes" (while ``.v`` is True), ``0777`` is "0777"."""
        cls = self.v.__class__
        return None if cls is dict or cls is list else self._x

    @property
    def key_pos(self) -> Mapping[str, tuple[int, int]] | None:
        if self.v.__class__ is not dict:
            return None
        kp = self._x
        # a Mapping, or the source text that works them out on first use (load.yamlpos)
        return kp if kp is None or isinstance(kp, Mapping) else kp.key_pos(self)

    def plain(self) -> Any:
        """The value with all position information stripped."""
        if isinstance(self.v, dict):
            return {k: n.plain() for k, n in self.v.items()}
        if isinstance(self.v, list):
            return [n.plain() for n in self.v]
        return self.v

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Y({self.v!r}@{self.line}:{self.col})"


def as_text(v: Any) -> str:
    """A value as text. Given a node, the text written in the file: `NO`, `0777`, `~` stay
    "NO", "0777", "~" (YAML 1.1 would make them false, 511 and null)."""
    if isinstance(v, str):
        return v
    if isinstance(v, Y):
        return v.text if v.text is not None else as_text(v.v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


Node = Y   # the name the model uses
