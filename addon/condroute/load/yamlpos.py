"""Load YAML or JSON into a tree of values that remember where they were written.

Every node is a :class:`~condroute.node.Y`: ``.v`` holds a ``dict[str, Y]``, a ``list[Y]`` or a plain scalar,
and ``.line``/``.col`` (1-based) say where it starts, so every validation error can point at
the exact spot in the user's file.

Text stays text: ``.v`` of a scalar is its YAML 1.1 value (``yes`` is True, ``0777`` is 511), which
is what a place that wants a number or a boolean reads; ``.text`` is the text as written (``"yes"``,
``"0777"``), which is what every place that compares text reads (header values, names, paths...).
Mapping keys are always the text written: ``on:`` is the key ``"on"``.

The tree is built straight from the parser's events (libyaml's when available), not from a composed
node tree: the composed tree of a 10,000-route file took ~180 MB, and an alias was converted again
for every reference. Here an anchored node is converted once and every alias reuses that ``Y``; what
aliases add to the tree the compiler walks is counted, so a "billion laughs" file is refused at the
alias that crosses :data:`MAX_ALIAS_NODES`, and nesting (aliases included) is capped at
:data:`MAX_DEPTH` so the recursive compiler never hits Python's recursion limit.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.events import (AliasEvent, DocumentStartEvent, MappingEndEvent, MappingStartEvent, ScalarEvent,
                         SequenceEndEvent, SequenceStartEvent, StreamEndEvent)

from ..errors import RulesError
from ..node import KeyPos, Y
from .rulesfile import read_rules_file   # regular files only, size cap, one read

# What aliases may add to the tree the compiler walks (nodes: keys, values, list items). A 10,000-route
# file has ~530,000 nodes in all; a file that uses an alias per backend adds a fraction of that.
# The 311-byte "billion laughs" file would add 10^9 and is refused at the alias that crosses this.
MAX_ALIAS_NODES = 1_000_000
# Nesting, aliases included: rules files nest ~10 deep; the compiler is recursive.
MAX_DEPTH = 100

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_SCALAR_TAGS = frozenset("tag:yaml.org,2002:" + t for t in ("null", "bool", "int", "float", "binary", "timestamp"))
# The characters YAML allows in a stream (libyaml's reader check); JSON is checked by json first.
_BAD_CHAR = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# libyaml (C) parses ~8x faster than pure-Python PyYAML and gives the same marks
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_resolver = yaml.resolver.Resolver()
_constructor = yaml.constructor.SafeConstructor()


class _Source:
    """The text a tree was parsed from. Key positions are read only to report a problem, and
    keeping them for every mapping cost ~10 MB on a 10,000-route file: they are worked out again
    from the text, once, the first time one is asked for."""

    __slots__ = ("text", "file", "_index")

    def __init__(self, text: str, file: str):
        self.text, self.file = text, file
        self._index: dict[tuple[int, int], Mapping] | None = None

    def key_pos(self, y: Y) -> Mapping[str, tuple[int, int]] | None:
        if self._index is None:
            index: dict[tuple[int, int], Mapping] = {}
            stack = [_build(self.text, self.file, None)]
            while stack:   # a mapping is known by where it starts: no two start at the same place
                n = stack.pop()
                if n is None:
                    continue
                if n.v.__class__ is dict:
                    if (n.line, n.col) not in index:
                        index[n.line, n.col] = n._x
                        stack.extend(n.v.values())
                elif n.v.__class__ is list:
                    stack.extend(n.v)
            self._index = index
        return self._index.get((y.line, y.col))


class _Frame:
    """A mapping or list being built."""
    __slots__ = ("is_map", "out", "pos", "key", "kline", "kcol", "merges", "line", "col", "anchor",
                 "weight", "height")

    def __init__(self, is_map: bool, line: int, col: int, anchor: str | None, keep_pos: bool):
        self.is_map = is_map
        self.out: Any = {} if is_map else []
        self.pos: list[int] | None = [] if keep_pos else None    # line, col of each key, in order
        self.key: Any = _NOKEY            # the key whose value comes next
        self.kline = self.kcol = 0
        self.merges: list[Y] = []         # values of << keys
        self.line, self.col, self.anchor = line, col, anchor
        self.weight = 1                   # nodes in this subtree, aliases expanded
        self.height = 0


_NOKEY = object()
_MERGE = object()


def _tag_name(tag: str) -> str:
    return "!!" + tag[18:] if tag.startswith("tag:yaml.org,2002:") else tag


def _construct(tag: str, value: str, mark: Any) -> Any:
    # the constructor's per-type methods only (never construct_object, whose cache keeps every node)
    return _constructor.yaml_constructors[tag](_constructor, yaml.ScalarNode(tag, value, mark, mark))


def _resolve_plain(value: str, is_json: bool) -> tuple[Any, str | None]:
    """The value and text of a plain (unquoted) scalar."""
    if is_json:       # the file passed json.loads: its plain scalars are JSON's literals
        try:
            v = json.loads(value)
            return v, (None if v is None else value)
        except ValueError:
            pass
    tag = _resolver.resolve(yaml.ScalarNode, value, (True, False))
    if tag == _STR:
        return value, value
    if tag in _SCALAR_TAGS:
        try:
            return _construct(tag, value, None), (value or None)
        except Exception:   # noqa: BLE001 - PyYAML's constructors raise anything on odd text
            pass      # only looks like a number or a date (a 5,000-digit number, 2026-13-45): text
    return value, value   # `=`, `<<` as a value


def _build(text: str, file: str, source: _Source | None) -> Y | None:
    """The tree of ``text``. Its mappings find their key positions through ``source``; without
    one (when a key position is asked for) they are recorded as the tree is built."""
    is_json = file.lower().endswith(".json")
    keep_pos = source is None
    loader = _Loader(text)
    get = loader.get_event
    memo: dict[str, tuple[Any, str | None]] = {}    # plain scalar -> value, text (also dedups strings)
    keys: dict[str, str] = {}
    anchors: dict[str, tuple[Y, int, int]] = {}     # name -> node, weight, height
    open_anchors: set[str] = set()
    root = _Frame(False, 1, 1, None, False)
    stack = [root]
    top = root
    added = 0                                       # nodes added by aliases
    starts: list[tuple[int, int]] = []              # where each document starts
    last_ml, line, col = -1, 1, 1
    try:
        while True:
            ev = get()
            cls = ev.__class__
            if cls is MappingEndEvent or cls is SequenceEndEvent:
                f = stack.pop()
                if f.is_map:
                    if f.merges:
                        y = _merged(f, file, source)
                    else:
                        y = Y(f.out, f.line, f.col, source or KeyPos(f.out, tuple(f.pos or ())))
                else:
                    y = Y(f.out, f.line, f.col)
                if f.anchor is not None:
                    anchors[f.anchor] = (y, f.weight, f.height)
                    open_anchors.discard(f.anchor)
                top = stack[-1]
                _attach(top, y, f.weight, f.height, file)
                continue
            if cls is StreamEndEvent:
                break
            m = ev.start_mark
            if m.line != last_ml:
                last_ml, line = m.line, m.line + 1
            col = m.column + 1
            if cls is ScalarEvent:
                value, tag = ev.value, ev.tag
                if top.key is _NOKEY and top.is_map:        # a key: always its text
                    if tag is not None and tag != "!" and tag != _STR and tag not in _SCALAR_TAGS:
                        raise RulesError.at(file, line, col, f"unsupported YAML tag {_tag_name(tag)}")
                    if value == "<<" and tag is None and ev.implicit[0]:
                        top.key = _MERGE
                    else:
                        top.key = keys.setdefault(value, value)     # one str per distinct key
                    top.kline, top.kcol = line, col
                    top.weight += 1
                    if ev.anchor is not None:
                        anchors[ev.anchor] = (Y(value, line, col), 1, 0)
                    continue
                if tag is None:
                    if ev.implicit[0]:
                        r = memo.get(value)
                        if r is None:
                            r = _resolve_plain(value, is_json)
                            if len(value) < 256:
                                memo[value] = r
                        y = Y(r[0], line, col, None, r[1])
                    else:
                        y = Y(value, line, col)
                elif tag == "!" or tag == _STR:
                    y = Y(value, line, col)
                elif tag in _SCALAR_TAGS:
                    try:
                        y = Y(_construct(tag, value, m), line, col, None, value)
                    except Exception as e:   # noqa: BLE001 - `!!int ""` is an IndexError in PyYAML
                        why = getattr(e, "problem", None) or e
                        raise RulesError.at(file, line, col, f"bad value for {_tag_name(tag)}: {why}") from None
                else:
                    raise RulesError.at(file, line, col, f"unsupported YAML tag {_tag_name(tag)}")
                if ev.anchor is not None:
                    anchors[ev.anchor] = (y, 1, 0)
                _attach(top, y, 1, 0, file)
            elif cls is MappingStartEvent or cls is SequenceStartEvent:
                is_map = cls is MappingStartEvent
                if top.key is _NOKEY and top.is_map:
                    raise RulesError.at(file, line, col, "a mapping key must be a plain value, not a "
                                   + ("mapping" if is_map else "list"))
                tag = ev.tag
                if tag is not None and tag != "!" and tag != (_MAP if is_map else _SEQ):
                    raise RulesError.at(file, line, col, f"unsupported YAML tag {_tag_name(tag)}")
                if len(stack) > MAX_DEPTH:
                    raise RulesError.at(file, line, col, f"nested more than {MAX_DEPTH} levels deep")
                if ev.anchor is not None:
                    open_anchors.add(ev.anchor)
                top = _Frame(is_map, line, col, ev.anchor, keep_pos and is_map)
                stack.append(top)
            elif cls is AliasEvent:
                name = ev.anchor
                a = anchors.get(name)
                if a is None:
                    why = "refers to a node that contains it" if name in open_anchors else "has no anchor &" + name + " before it"
                    raise RulesError.at(file, line, col, f"the alias *{name} {why}")
                y, weight, height = a
                if top.key is _NOKEY and top.is_map:         # an alias as a key
                    if y.v.__class__ is dict or y.v.__class__ is list:
                        raise RulesError.at(file, line, col, "a mapping key must be a plain value")
                    top.key = y.text if y.text is not None else ""
                    top.kline, top.kcol = line, col
                    top.weight += 1
                    continue
                added += weight
                if added > MAX_ALIAS_NODES:
                    raise RulesError.at(file, line, col, f"the aliases in this file expand to more than {MAX_ALIAS_NODES:,} "
                                   "values (an alias bomb?); write the repeated parts out or use fewer levels of aliases")
                if len(stack) + height > MAX_DEPTH:
                    raise RulesError.at(file, line, col, f"nested more than {MAX_DEPTH} levels deep (through the alias *{name})")
                _attach(top, y, weight, height, file)
            elif cls is DocumentStartEvent:
                starts.append((line, col))
    except yaml.YAMLError as e:
        raise _yaml_problem(file, e, text) from None
    except RecursionError:
        raise RulesError.at(file, line, col, "nested too deeply") from None
    except (MemoryError, UnicodeError, ValueError, TypeError, OverflowError) as e:
        # nothing in the parser should raise these; if it does, the file still gets a location
        raise RulesError.at(file, line, col, f"cannot read the YAML here: {type(e).__name__}: {e}") from None
    finally:
        loader.dispose()
    return _documents(root.out, starts)


class Docs(Y):
    """A YAML stream of several documents (``---``), as Kubernetes manifests are written: ``v`` is
    the list of the non-empty documents' nodes; ``starts`` is where each of them starts."""
    __slots__ = ("starts",)

    def __init__(self, docs: list[Y], starts: list[tuple[int, int]]):
        super().__init__(docs, docs[0].line, docs[0].col)
        self.starts = starts


def _documents(out: list[Y], starts: list[tuple[int, int]]) -> Y | None:
    """One document (or one non-empty one among empty ones) is the tree itself; several: Docs."""
    kept = [(y, st) for y, st in zip(out, starts) if not (y.v is None and not y.text)]
    if not kept:
        return out[0] if out else None
    if len(kept) == 1:
        return kept[0][0]
    return Docs([y for y, _ in kept], [st for _, st in kept])


def _attach(top: _Frame, y: Y, weight: int, height: int, file: str) -> None:
    top.weight += weight
    if height >= top.height:
        top.height = height + 1
    if not top.is_map:
        top.out.append(y)
        return
    key = top.key
    top.key = _NOKEY
    if key is _MERGE:
        top.merges.append(y)
    elif key in top.out:
        raise RulesError.at(file, top.kline, top.kcol, f"duplicate key {key!r}")
    else:
        top.out[key] = y
        if top.pos is not None:
            top.pos += (top.kline, top.kcol)


def _merged(f: _Frame, file: str, source: _Source | None) -> Y:
    """A mapping with merge keys (``<<: *defaults``, ``<<: [*a, *b]``): the merged keys first, the
    first mapping of a list winning, then the mapping's own keys, which override merged ones
    (PyYAML's order)."""
    out: dict[str, Y] = {}
    pos: dict[str, tuple[int, int]] = {}
    for mv in f.merges:
        for src in (mv.v if mv.v.__class__ is list else (mv,)):
            if src.v.__class__ is not dict:
                raise RulesError.at(file, src.line, src.col, "a merge (<<) takes a mapping or a list of mappings, "
                                    f"not {'a list' if src.v.__class__ is list else 'a single value'}")
        for src in (reversed(mv.v) if mv.v.__class__ is list else (mv,)):
            out.update(src.v)
            if source is None:
                pos.update(src.key_pos or {})
    out.update(f.out)
    if source is not None:
        return Y(out, f.line, f.col, source)
    pos.update(KeyPos(f.out, tuple(f.pos or ())).items())
    return Y(out, f.line, f.col, KeyPos(out, tuple(n for k in out for n in pos[k])))


def _line_col(text: str, i: int) -> tuple[int, int]:
    """1-based line and column (in characters) of offset ``i`` of ``text``."""
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def _yaml_problem(file: str, e: yaml.YAMLError, text: str) -> RulesError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        line, col = mark.line + 1, mark.column + 1
    elif isinstance(getattr(e, "position", None), int):     # a ReaderError: an offset, no mark
        line, col = _line_col(text, min(e.position, len(text)))
    else:
        line, col = 1, 1
    problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
    context = getattr(e, "context", None)
    msg = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return RulesError.at(file, line, col, msg)


def parse_text(text: str, file: str) -> Y:
    """Parse YAML (or JSON, which is checked with the json module first) into a :class:`Y` tree."""
    if file.lower().endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise RulesError.at(file, e.lineno, e.colno, f"JSON syntax error: {e.msg}") from None
        except RecursionError:
            raise RulesError.at(file, 1, 1, "JSON syntax error: nested too deeply") from None
    bad = _BAD_CHAR.search(text)
    if bad is not None:
        # found before parsing: libyaml reports it as an offset into its own buffer, not a line
        cp = ord(bad.group())
        what = {0: " (NUL)", 0xFFFE: " (a noncharacter)", 0xFFFF: " (a noncharacter)"}.get(cp, "")
        if 0xD800 <= cp <= 0xDFFF:
            what = " (a lone surrogate)"
        line, col = _line_col(text, bad.start())
        raise RulesError.at(file, line, col, f"the character U+{cp:04X}{what} is not allowed in a rules file "
                            "(write control characters as escapes in a double-quoted string)")
    node = _build(text, file, _Source(text, file))
    if node is None:
        raise RulesError.at(file, 1, 1, "the file is empty")
    return node


def load_file(path: str) -> tuple[Y, str]:
    """Read and parse a rules file. Returns the tree and the text that was read."""
    return parse_bytes(read_rules_file(path).data, path)


def parse_bytes(raw: bytes, path: str) -> tuple[Y, str]:
    """Parse the bytes of a rules file (as read once by rulesfile). Returns the tree and the text."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise RulesError.at(path, 1, 1, "the file is UTF-16 (it starts with a UTF-16 byte order mark): "
                                            "save it as UTF-8") from None
        start = raw.rfind(b"\n", 0, e.start) + 1
        if start == 0 and raw.startswith(b"\xef\xbb\xbf"):
            start = 3                         # the UTF-8 byte order mark is not a column
        line = raw.count(b"\n", 0, e.start) + 1
        col = len(raw[start:e.start].decode("utf-8", "replace")) + 1
        raise RulesError.at(path, line, col, "the file is not valid UTF-8") from None
    return parse_text(text, path), text
