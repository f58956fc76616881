"""condroute's mitmproxy options: their types, defaults and help, and checking their values.

The options are typed the way mitmproxy's own addons type theirs, so that mitmweb's and the
console's option editors show a checkbox for ``condroute_debug_header`` and a choice for
``condroute_log``. Durations stay text (mitmproxy has no number type but int, and ``0.5`` is a
good cool-down).

Checking happens in two places:

* :func:`parse` turns one option's value into what the addon uses, or raises ValueError with a
  sentence. The addon calls it from ``configure``: at run time a bad value becomes an
  ``OptionsError`` (mitmproxy then rolls the option back, and mitmweb's editor shows the message);
  at start-up the sentence is logged as an error, which makes mitmdump exit with status 1.
* :func:`check_deferred` runs when the addon registers its options. mitmproxy keeps the
  ``--set`` values of options nobody has registered yet ("deferred") and converts them right after
  the addon's ``load``; a value it cannot convert (``--set condroute_debug_header=maybe``, or the
  same option given twice) would raise inside mitmproxy's script loader and leave the addon
  half-registered, silently inactive. So condroute looks at its deferred values first: it takes
  the ones it understands (``yes``/``no``/``1``/``0`` for a switch, as condroute always did, and
  any case for a choice), reports the rest as start-up errors in a plain sentence, and warns about
  ``condroute_*`` names it does not know, with the nearest known name.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from ..httptext import parse_seconds
from . import compat
from .health import DEFAULT_COOLDOWN
from .upstreams import DEFAULT_CONNECT_TIMEOUT

log = logging.getLogger("condroute")

LOG_LEVELS = ("off", "decisions", "verbose")
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")
PREFIX = "condroute_"


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def parse_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    v = str(value).strip().lower()
    if v in choices:
        return v
    raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def parse_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, not {value!r}")
    return value.strip()


@dataclass(frozen=True)
class Option:
    name: str
    typespec: type
    default: Any
    help: str
    choices: Sequence[str] | None = None
    seconds: bool = False      # a duration in seconds, written as text

    def parse(self, value: Any) -> Any:
        """The value the addon uses, or ValueError with a sentence."""
        if self.typespec is bool:
            return parse_bool(self.name, value)
        if self.choices:
            return parse_choice(self.name, value, self.choices)
        text = parse_text(self.name, value)
        return parse_seconds(self.name, text) if self.seconds else text

    def add_to(self, loader: Any) -> None:
        loader.add_option(self.name, self.typespec, self.default, self.help,
                          list(self.choices) if self.choices else None)


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("condroute_rules", str, "",
           "condroute: path to the rules file (YAML, JSON or KrakenD); empty = inactive."),
    Option("condroute_debug_header", bool, False,
           "condroute: add the response header X-Condroute: ROUTE/BACKEND -> UPSTREAM (or passthrough)."),
    Option("condroute_log", str, "decisions",
           "condroute: off | decisions (a line per routed request) | verbose (also every skipped backend).",
           choices=LOG_LEVELS),
    Option("condroute_reload_interval", str, "1",
           "condroute: seconds between checks of the rules file for changes; 0 = do not watch.", seconds=True),
    Option("condroute_cooldown", str, f"{DEFAULT_COOLDOWN:g}",
           "condroute: seconds an upstream that refused a connection is passed over "
           "(its backends are skipped, the next one or the fallback serves).", seconds=True),
    Option("condroute_connect_timeout", str, f"{DEFAULT_CONNECT_TIMEOUT:g}",
           "condroute: seconds to wait for an unproven upstream to accept a connection.", seconds=True),
    Option("condroute_status_host", str, "condroute.mitm.it",
           "condroute: the host of the status page answered by the proxy itself (http://HOST/ and "
           "http://HOST/api/status); empty = no status page."),
)}


def add_options(loader: Any) -> None:
    for o in OPTIONS.values():
        o.add_to(loader)


def check_deferred(options: Any, known: dict[str, Option] = OPTIONS) -> None:
    """Before mitmproxy converts the ``--set`` values it kept for condroute's options (see the module
    docstring): log an error for each value condroute cannot take and drop it (the option keeps its
    default; mitmdump exits with status 1 after start-up errors), rewrite the ones it can take into
    mitmproxy's own spelling, and warn about unknown ``condroute_*`` names."""
    for name, given in compat.deferred_options(options):
        if not name.startswith(PREFIX):
            continue
        o = known.get(name)
        if o is None:
            # compared without the common prefix, which would make every name look alike
            near = difflib.get_close_matches(name[len(PREFIX):], [k[len(PREFIX):] for k in known], n=1, cutoff=0.6)
            hint = (f" (did you mean {PREFIX}{near[0]}?)" if near
                    else f"; condroute's options are {', '.join(sorted(known))}")
            log.warning(f"condroute: there is no option {name}{hint}; it is ignored")
            continue
        if given is None:                      # a value, not text (a config.yaml): type-checked by mitmproxy
            continue
        if len(given) > 1:
            compat.drop_deferred(options, name)
            log.error(f"condroute: {name} is set {len(given)} times ({', '.join(map(repr, given))}); set it once")
            continue
        text = given[0] if given else ("true" if o.typespec is bool else "")
        try:
            value = o.parse(text)
        except ValueError as e:
            compat.drop_deferred(options, name)
            log.error(f"condroute: {e}")
            continue
        if o.typespec is bool:
            compat.set_deferred(options, name, "true" if value else "false")
        elif o.choices:
            compat.set_deferred(options, name, value)


def checked(updated: set[str], options: Any, known: dict[str, Option] = OPTIONS) -> dict[str, Any]:
    """The parsed values of the updated condroute options; ValueError for the first bad one."""
    return {name: known[name].parse(getattr(options, name)) for name in sorted(updated) if name in known}

