"""Which clause of a false ``cel:`` policy failed: for ``condroute explain`` only, never per request.

A policy that is a top-level ``&&`` chain (``a && b && c``) is split into its clauses as written
(:func:`top_level_clauses`, from the parser's positions); at explain time each clause is compiled on
its own (once per policy, kept on it) and evaluated in order, and the first false one is named
(:func:`failed_clause`): ``cel `...` is false at clause 2 of 3: jwt.role == "admin"``.
"""
from __future__ import annotations

from typing import Any

from ..request import RequestView
from .parse import CelSyntaxError, parse
from .policy import CelPolicy, _show, compile_policy

__all__ = ["FailedClause", "failed_clause", "top_level_clauses"]


def top_level_clauses(text: str) -> list[str]:
    """The conjuncts of an expression that is a top-level ``&&`` chain, as written (["a", "b"] for
    ``a && b``); [] for any other expression, or one that does not parse."""
    try:
        tree, _ = parse(text)
    except (CelSyntaxError, RecursionError):
        return []
    node = tree
    while getattr(node, "data", None) in ("expr", "conditionalor") and len(node.children) == 1:
        node = node.children[0]
    if getattr(node, "data", None) != "conditionaland" or len(node.children) < 2:
        return []
    out: list[str] = []

    def walk(n: Any) -> None:
        if getattr(n, "data", None) == "conditionaland":
            for c in n.children:
                walk(c)
        else:
            meta = n.meta
            out.append(text[meta.start_pos:meta.end_pos])
    try:
        walk(node)
    except (AttributeError, RecursionError):   # no positions: not explained
        return []
    return out


class FailedClause:
    """The first clause of a top-level ``&&`` chain that does not hold: ``index`` (from 1) of
    ``count``, its text, and its own reason."""
    __slots__ = ("index", "count", "text", "reason", "false")

    def __init__(self, index: int, count: int, text: str, reason: str):
        self.index, self.count, self.text, self.reason = index, count, text, reason
        self.false = False      # the clause is false (else it could not be evaluated, or is not a boolean)

    @property
    def shown(self) -> str:
        """The clause's text on one line, cut at 80 characters (as a policy's label shows it)."""
        return _show(self.text)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "text": self.text, "false": self.false, "reason": self.reason}


def _clause_policies(policy: CelPolicy) -> list[tuple[str, CelPolicy | None]]:
    got = policy.__dict__.get("_clauses")
    if got is None:
        got = []
        for t in top_level_clauses(policy.text):
            try:
                p, problems = compile_policy(t, policy.engine.name, lookups=policy.lookups)
            except (TypeError, ValueError):
                p, problems = None, []
            got.append((t, p if not problems else None))
        policy.__dict__["_clauses"] = got
    return got


def failed_clause(policy: CelPolicy, req: RequestView, env: Any) -> FailedClause | None:
    """For ``condroute explain`` only, never per request: when ``policy`` is a top-level ``&&``
    chain, each clause is compiled on its own (once) and evaluated in order; the first that is
    false — or, when none is, the first that is not true (an error) — is named. None for any other
    expression, or when every clause holds."""
    clauses = _clause_policies(policy)
    if not clauses:
        return None
    first_bad = None
    for i, (text, p) in enumerate(clauses, 1):
        if p is None:
            continue
        reason = p.evaluate(req, env)
        if reason is None:
            continue
        fc = FailedClause(i, len(clauses), text, reason)
        fc.false = reason.startswith(p.label + " is false")
        if fc.false:
            return fc
        first_bad = first_bad or fc
    return first_bad
