"""What a CEL engine answers, in the words a reason may use.

Both engines answer an evaluation with ``(code, info)``: ``("true", None)``, ``("false", None)``,
``("value", "a string")`` (an article and the type of a non-boolean result) or ``("error",
(category, key))``. The category is a fixed phrase chosen from the engine's own error message
(:func:`category`), which is never shown itself: it may embed values from the request (celpy's
embeds the whole activation). ``key`` is the missing map key, named in a reason only when the
expression itself writes it.
"""
from __future__ import annotations


def a_type(type_name: str) -> str:
    """The type's name with its article: "a string", "an int"."""
    return ("an " if type_name[:1] in "aeiou" else "a ") + type_name


def category(low: str) -> str:
    """A fixed phrase for an engine's error message (which is never shown itself)."""
    if "overload" in low:
        return "no matching overload (wrong argument types)"
    if "by zero" in low:
        return "division by zero"
    if "return error for overflow" in low:          # celpy: any ValueError inside a function
        return "bad value for a conversion, or overflow"
    if "overflow" in low:
        return "integer overflow"
    if "index" in low or low == "invalid_argument":
        return "index out of range"
    if "select" in low or "no such field" in low or "does not support" in low:
        return "field selection on a value that is not a map"
    if "regular expression" in low or "regex" in low:
        return "bad regular expression"
    if "conver" in low or "parse" in low or "invalid" in low:
        return "bad value for a conversion"
    return "evaluation error"

