"""Writing text into an HAProxy configuration: words, log-format strings, regular expressions.

HAProxy reads a configuration line in two levels (configuration.txt §2.2): the line is cut into
words (double quotes are weak: ``\\``, ``\\"``, ``\\$`` and ``\\xNN`` are read, ``$NAME`` is an
environment variable), then some words are parsed again: a sample expression's converter arguments
(single quotes protect commas and parentheses), a log-format string (``%`` starts a sample).
Everything written from a rules file goes through these functions, so no value can end a word,
start a comment, name an environment variable or inject a sample."""
from __future__ import annotations

import re

_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+=(),\[\]-]+\Z")


def word(s: str) -> str:
    """``s`` as one configuration word (double-quoted unless it is plainly safe)."""
    if s and _PLAIN.match(s) and not s.startswith("-"):
        return s
    out = []
    for ch in s:
        if ch in '\\"$':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def lf(s: str) -> str:
    """Literal text inside a log-format string (``%`` doubled); then pass the whole string to
    :func:`word`."""
    return s.replace("%", "%%")


# A log-format that yields the empty string: HAProxy reads an empty word ("") as a missing
# argument ('set-header' expects exactly 2 arguments), but a sample that is empty at run time
# makes set-header/add-header send the field with an empty value, as condroute does.
EMPTY_VALUE = '"%[str(x),bytes(1)]"'


def header_value(v: str) -> str:
    """A header value as the log-format word of set-header/add-header (empty included)."""
    return word(lf(v)) if v else EMPTY_VALUE


def arg(s: str) -> str:
    """A converter argument in single quotes (inside a sample expression). A single quote cannot be
    written inside one: it must not occur (regexes spell it ``\\x27``, see :func:`pcre_literal`)."""
    if "'" in s:
        raise ValueError("a single quote in a converter argument")
    return "'" + s + "'"


def pcre_literal(s: str) -> str:
    """``s`` matched literally by PCRE: every ASCII character but letters and digits escaped
    (``\\`` before a non-alphanumeric character is always that character); a single quote as
    ``\\x27`` so the pattern can stand in a converter argument; control characters as ``\\xNN``."""
    out = []
    for ch in s:
        if ch == "'":
            out.append("\\x27")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif ch.isascii() and not ch.isalnum():
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


# RE2 syntax that PCRE2 (without UTF mode, as HAProxy compiles it) reads differently: Unicode
# classes, \C (one byte), \x{...} beyond a byte.
_RE2_ONLY = re.compile(r"\\[pPC]|\\x\{")


def regex_problem(pattern: str) -> str | None:
    """Why an RE2 pattern (condroute's syntax) cannot be handed to HAProxy's PCRE2 unchanged and
    mean the same, or None. HAProxy compiles without UTF mode: on ASCII values both engines agree;
    ``.`` and negated classes step over one byte of a non-ASCII value, not one character (said in
    the notes)."""
    if not pattern.isascii():
        return "the pattern has non-ASCII text (HAProxy's PCRE2 compares bytes, RE2 characters)"
    m = _RE2_ONLY.search(pattern)
    if m:
        return f"{m.group(0)!r} means something else in HAProxy's PCRE2 (no UTF mode)"
    return None


def pcre(pattern: str) -> str:
    """An RE2 pattern as PCRE2 text for a converter argument (single quotes spelled ``\\x27``)."""
    return pattern.replace("'", "\\x27")
