"""Parsing a ``cel:`` expression into a small tree the checker walks.

The grammar is celpy's (lark, LALR); a syntax error becomes :class:`CelSyntaxError`, located
(1-based line and column) and saying what was unexpected without quoting more than a token. The
lark tree is also what cel-python runs; :func:`parse` returns it beside the simplified tree
(:class:`N`), in which integer literals are range-checked and strings unescaped.
"""
from __future__ import annotations

import threading
from typing import Any

class N:
    """A node of the simplified tree: ``k`` is one of lit, id, sel, idx, call, op, list, map, obj."""

    __slots__ = ("k", "a", "b", "c", "line", "col")

    def __init__(self, k: str, a: Any = None, b: Any = None, c: Any = None, line: int = 1, col: int = 1):
        self.k, self.a, self.b, self.c, self.line, self.col = k, a, b, c, line, col

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"N({self.k}, {self.a!r}, {self.b!r}, {self.c!r})"


class CelSyntaxError(Exception):
    def __init__(self, message: str, line: int, col: int):
        super().__init__(message)
        self.line, self.col = line, col


_parser_lock = threading.Lock()


def parse(text: str) -> tuple[Any, N]:
    """(celpy's lark tree, the simplified tree); CelSyntaxError, or RecursionError when the
    expression is nested too deeply."""
    tree = _lark_parse(text)
    return tree, _conv(tree)


def _lark_parse(text: str) -> Any:
    # lark and celpy are imported when the first expression is parsed, not with condroute: together
    # they take about half a second to import, which rules without CEL need not pay
    import lark
    from celpy.celparser import CELParser
    if CELParser.CEL_PARSER is None:
        CELParser()
    with _parser_lock:  # lark's LALR parser object is shared: parse one expression at a time
        try:
            return CELParser.CEL_PARSER.parse(text)
        except lark.exceptions.UnexpectedCharacters as e:
            ch = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else "?"
            raise CelSyntaxError(f"CEL syntax error: unexpected character {ch!r}", e.line, e.column) from None
        except lark.exceptions.UnexpectedToken as e:
            tok = e.token
            if tok.type == "$END":
                lines = text.splitlines() or [""]
                raise CelSyntaxError("CEL syntax error: the expression ends too early", len(lines),
                                     len(lines[-1]) + 1) from None
            shown = str(tok)[:30]
            raise CelSyntaxError(f"CEL syntax error: unexpected {shown!r}", tok.line, tok.column) from None
        except lark.exceptions.UnexpectedEOF:
            lines = text.splitlines() or [""]
            raise CelSyntaxError("CEL syntax error: the expression ends too early", len(lines),
                                 len(lines[-1]) + 1) from None
        except lark.exceptions.LarkError as e:  # pragma: no cover - any other parser complaint
            raise CelSyntaxError(f"CEL syntax error: {type(e).__name__}", 1, 1) from None


_BINOPS = {"relation_lt": "<", "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=", "relation_eq": "==",
           "relation_ne": "!=", "relation_in": "in", "addition_add": "+", "addition_sub": "-",
           "multiplication_mul": "*", "multiplication_div": "/", "multiplication_mod": "%"}
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _pos(t: Any) -> tuple[int, int]:
    meta = getattr(t, "meta", None)
    if meta is not None and not getattr(meta, "empty", True):
        return meta.line, meta.column
    line = getattr(t, "line", None)
    if line is not None:
        return line, t.column
    for ch in getattr(t, "children", ()):
        p = _pos(ch)
        if p != (1, 1):
            return p
    return 1, 1


def _conv(t: Any) -> N:
    """lark tree -> N."""
    import lark   # (already imported by _lark_parse)
    d = t.data
    ch = t.children
    line, col = _pos(t)
    if d in ("expr",):
        if len(ch) == 1:
            return _conv(ch[0])
        return N("op", "?:", [_conv(c) for c in ch], line=line, col=col)
    if d in ("conditionalor", "conditionaland"):
        if len(ch) == 1:
            return _conv(ch[0])
        return N("op", "||" if d == "conditionalor" else "&&", [_conv(ch[0]), _conv(ch[1])], line=line, col=col)
    if d in ("relation", "addition", "multiplication"):
        if len(ch) == 1:
            return _conv(ch[0])
        optree, right = ch
        return N("op", _BINOPS[optree.data], [_conv(optree.children[0]), _conv(right)], line=line, col=col)
    if d == "unary":
        if len(ch) == 1:
            return _conv(ch[0])
        return N("op", "!" if ch[0].data == "unary_not" else "neg", [_conv(ch[1])], line=line, col=col)
    if d in ("member", "primary", "paren_expr"):
        return _conv(ch[0])
    if d == "member_dot":
        tok = ch[1]
        return N("sel", _conv(ch[0]), str(tok), line=tok.line, col=tok.column)
    if d == "member_dot_arg":
        tok = ch[1]
        args = [_conv(c) for c in ch[2].children] if len(ch) > 2 else []
        return N("call", str(tok), _conv(ch[0]), args, line=tok.line, col=tok.column)
    if d == "member_index":
        return N("idx", _conv(ch[0]), _conv(ch[1]), line=line, col=col)
    if d == "member_object":
        return N("obj", line=line, col=col)
    if d in ("ident", "dot_ident"):
        tok = ch[0]
        return N("id", str(tok), line=tok.line, col=tok.column)
    if d in ("ident_arg", "dot_ident_arg"):
        tok = ch[0]
        args = [_conv(c) for c in ch[1].children] if len(ch) > 1 else []
        return N("call", str(tok), None, args, line=tok.line, col=tok.column)
    if d == "list_lit":
        return N("list", [_conv(c) for c in ch[0].children] if ch else [], line=line, col=col)
    if d == "map_lit":
        items = [_conv(c) for c in ch[0].children] if ch else []
        return N("map", list(zip(items[0::2], items[1::2])), line=line, col=col)
    if d == "literal":
        tok = ch[0]
        return _literal(tok)
    if isinstance(t, lark.Tree) and len(ch) == 1:  # pragma: no cover - any other wrapper
        return _conv(ch[0])
    raise CelSyntaxError(f"unsupported CEL construct {d}", line, col)  # pragma: no cover


def _literal(tok: Any) -> N:
    from celpy.evaluation import celbytes, celstr   # (already imported by _lark_parse)
    ty, text, line, col = tok.type, str(tok), tok.line, tok.column
    try:
        if ty in ("STRING_LIT", "MLSTRING_LIT"):
            return N("lit", str(celstr(tok)), "string", line=line, col=col)
        if ty == "BYTES_LIT":
            return N("lit", bytes(celbytes(tok)), "bytes", line=line, col=col)
        if ty == "INT_LIT":
            v = int(text, 0) if not text.lstrip("-").startswith("0x") else int(text, 16)
            if not _INT64[0] <= v <= _INT64[1]:
                raise CelSyntaxError(f"integer literal {text} is out of range (64-bit)", line, col)
            return N("lit", v, "int", line=line, col=col)
        if ty == "UINT_LIT":
            body = text[:-1]
            v = int(body, 16) if body.lstrip("-").startswith("0x") else int(body)
            if not 0 <= v < 2 ** 64:
                raise CelSyntaxError(f"unsigned literal {text} is out of range (64-bit)", line, col)
            return N("lit", v, "uint", line=line, col=col)
        if ty == "FLOAT_LIT":
            return N("lit", float(text), "double", line=line, col=col)
        if ty == "BOOL_LIT":
            return N("lit", text == "true", "bool", line=line, col=col)
        if ty == "NULL_LIT":
            return N("lit", None, "null", line=line, col=col)
    except CelSyntaxError:
        raise
    except Exception:
        raise CelSyntaxError(f"bad literal {text[:30]!r}", line, col) from None
    raise CelSyntaxError(f"bad literal {text[:30]!r}", line, col)  # pragma: no cover


def string_literal(n: N | None) -> str | None:
    """The text of ``n`` when it is a string literal, else None."""
    return n.a if n is not None and n.k == "lit" and n.b == "string" else None
