"""The dev-traffic toolbox fields of a backend (and ``enabled`` of a route), read into the model:
``enabled``, ``failover``, ``retry_on``, ``mirror``, ``fault``, ``sni``, ``throttle`` and the
``file``/``dir`` forms of ``respond`` (rules format, "More backend fields").

Each reader takes the backend's mapping node, records located problems in the context and puts
what it read into ``kw`` (the Backend's keyword arguments)."""
from __future__ import annotations

import os
import re
from typing import Any

from ..model import RETRY_ON, Fault, Mirror, Throttle
from ..node import Y
from .common import upstream_ref
from .ctx import CompileCtx, kind

TOOLBOX_KEYS = ("enabled", "failover", "retry_on", "mirror", "fault", "sni", "throttle")
MIRROR_KEYS = ("upstream", "percent")
FAULT_KEYS = ("delay", "abort", "percent")
THROTTLE_KEYS = ("kbps",)
MAX_DELAY = 3600.0
# a DNS name (letters, digits, hyphens, underscores as some internal names have; dots between labels)
_DNS = re.compile(r"^(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?\Z")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def read_bool(node: Y, cc: CompileCtx, what: str) -> bool | None:
    if not isinstance(node.v, bool):
        cc.error(node, f"{what} must be true or false, not {kind(node.v)}")
        return None
    return node.v


def _percent(node: Y | None, cc: CompileCtx, what: str) -> float | None:
    if node is None:
        return 100.0
    p = node.v
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100 or p != p:
        cc.error(node, f"{what} must be a number from 0 to 100, not {kind(p)}")
        return None
    return float(p)


def _seconds(node: Y, cc: CompileCtx, what: str) -> float | None:
    """A number of seconds, or a duration such as "2s", "500ms", "1m" (Istio's fixedDelay)."""
    v = node.v
    secs: float | None = None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        secs = float(v) if not isinstance(v, int) or v <= MAX_DELAY else MAX_DELAY + 1   # no OverflowError
    elif isinstance(v, str):
        m = _DURATION.match(v)
        if m:
            secs = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if secs is None or not 0 < secs <= MAX_DELAY or secs != secs:
        cc.error(node, f"{what} must be a number of seconds (or 2s, 500ms, 1m) > 0 and at most "
                       f"{MAX_DELAY:g}, not {kind(v)}")
        return None
    return secs


def _status(node: Y, cc: CompileCtx, what: str) -> int | None:
    v = node.v
    if isinstance(v, bool) or not isinstance(v, int) or not 200 <= v <= 599:
        cc.error(node, f"{what} must be an HTTP status code from 200 to 599, not {kind(v)}")
        return None
    return v


def parse_retry_on(node: Y, cc: CompileCtx) -> frozenset[str] | None:
    """A list, or one string (Envoy's comma-separated form: "reset,5xx" is accepted too)."""
    items: list[tuple[Y, str]] = []
    if isinstance(node.v, list):
        for n in node.v:
            if not isinstance(n.v, str):
                cc.error(n, f"retry_on: expected one of {', '.join(RETRY_ON)}, not {kind(n.v)}")
                return None
            items.append((n, n.v))
    elif isinstance(node.v, str):
        items = [(node, part.strip()) for part in node.v.split(",")]
    else:
        cc.error(node, f"retry_on must be a list of {', '.join(RETRY_ON)}, not {kind(node.v)}")
        return None
    out = set()
    for n, text in items:
        if text not in RETRY_ON:
            cc.error(n, f"retry_on: {text!r} is not one of {', '.join(RETRY_ON)}")
            return None
        out.add(text)
    if not out:
        cc.error(node, f"retry_on is empty: name at least one of {', '.join(RETRY_ON)}")
        return None
    return frozenset(out)


def parse_mirror(node: Y, cc: CompileCtx) -> tuple[Mirror, ...] | None:
    """``{upstream, percent}``, or a list of those (a copy to each)."""
    items = node.v if isinstance(node.v, list) else [node]
    out = []
    for n in items:
        if isinstance(n.v, str):            # shorthand: mirror: NAME-or-URL
            up = upstream_ref(n, cc)
            if up is None:
                return None
            out.append(Mirror(up, 100.0))
            continue
        if not cc.expect_map(n, "mirror") or not cc.check_keys(n, MIRROR_KEYS, "mirror"):
            return None
        if "upstream" not in n.v:
            cc.error(n, "mirror needs `upstream` (a name from upstreams, or a URL)")
            return None
        up = upstream_ref(n.v["upstream"], cc)
        pct = _percent(n.v.get("percent"), cc, "mirror.percent")
        if up is None or pct is None:
            return None
        out.append(Mirror(up, pct))
    if not out:
        cc.error(node, "mirror is an empty list")
        return None
    return tuple(out)


def parse_fault(node: Y, cc: CompileCtx) -> Fault | None:
    """``{delay: SECONDS, percent: N}``, ``{abort: STATUS, percent: N}``, both (one percent for
    each), or each as a mapping with a percent of its own: ``{delay: {seconds: 2, percent: 50},
    abort: {status: 503, percent: 10}}``."""
    if not cc.expect_map(node, "fault") or not cc.check_keys(node, FAULT_KEYS, "fault"):
        return None
    v = node.v
    if "delay" not in v and "abort" not in v:
        cc.error(node, "fault needs `delay` (seconds) and/or `abort` (a status), e.g. {abort: 503, percent: 10}")
        return None
    pct = _percent(v.get("percent"), cc, "fault.percent")
    if pct is None:
        return None
    kw: dict[str, Any] = {}
    ok = True
    for part, inner, read in (("delay", "seconds", _seconds), ("abort", "status", _status)):
        if part in v:
            got = _fault_part(v[part], cc, part, inner, read, pct)
            if got is None:
                return None
            ok = ok and None not in got
            kw[part], kw[f"{part}_percent"] = got
    return Fault(**kw) if ok else None


def _fault_part(n: Y, cc: CompileCtx, part: str, inner: str, read: Any, pct: float) -> tuple | None:
    """``fault.delay`` / ``fault.abort``: the value, or a mapping of it (``inner``) with a percent of
    its own; (value, percent) with None for a part that is wrong (recorded), None when the mapping is."""
    if not isinstance(n.v, dict):
        return read(n, cc, f"fault.{part}"), pct
    if not cc.check_keys(n, (inner, "percent"), f"fault.{part}") or inner not in n.v:
        if inner not in n.v:
            cc.error(n, f"fault.{part} needs `{inner}`")
        return None
    own = _percent(n.v["percent"], cc, f"fault.{part}.percent") if "percent" in n.v else pct
    return read(n.v[inner], cc, f"fault.{part}.{inner}"), own


def parse_sni(node: Y, cc: CompileCtx) -> str | None:
    t = node.v
    if not isinstance(t, str) or not t:
        cc.error(node, f"sni must be a host name or preserve, not {kind(t)}")
        return None
    if t == "preserve":
        return t
    name = t.rstrip(".").lower()
    if not _DNS.match(t) or name.replace(".", "").isdigit() or ":" in t:
        cc.error(node, f"sni {t!r} is not a host name (a TLS server name is a DNS name, never an IP address "
                       f"or a port); write preserve to send the client's own")
        return None
    return name


def parse_throttle(node: Y, cc: CompileCtx) -> Throttle | None:
    if not cc.expect_map(node, "throttle") or not cc.check_keys(node, THROTTLE_KEYS, "throttle"):
        return None
    k = node.v.get("kbps")
    if k is None:
        cc.error(node, "throttle needs `kbps` (kilobits per second, e.g. {kbps: 256} for a slow 3G line)")
        return None
    if isinstance(k.v, bool) or not isinstance(k.v, (int, float)) or not 0 < k.v <= 10_000_000 or k.v != k.v:
        cc.error(k, f"throttle.kbps must be a number of kilobits per second > 0, not {kind(k.v)}")
        return None
    return Throttle(float(k.v))


def read_toolbox(node: Y, cc: CompileCtx, kw: dict[str, Any], name: str) -> bool:
    """The toolbox keys of backend ``node`` into ``kw``; False when one of them is wrong."""
    v = node.v
    ok = True
    for key, reader in (("enabled", lambda n: read_bool(n, cc, "enabled")),
                        ("failover", lambda n: read_bool(n, cc, "failover")),
                        ("retry_on", lambda n: parse_retry_on(n, cc)),
                        ("mirror", lambda n: parse_mirror(n, cc)),
                        ("fault", lambda n: parse_fault(n, cc)),
                        ("sni", lambda n: parse_sni(n, cc)),
                        ("throttle", lambda n: parse_throttle(n, cc))):
        if key not in v:
            continue
        got = reader(v[key])
        if got is None:
            ok = False
        else:
            kw["mirrors" if key == "mirror" else key] = got
    if kw.get("sni") is not None:
        up = kw.get("upstream")
        if "respond" in v:
            cc.error_key(node, "sni", f"backend {name!r}: sni names the TLS server of an https upstream; a "
                                      f"respond backend has none")
            ok = False
        elif up is not None and up.scheme != "https":
            cc.error_key(node, "sni", f"backend {name!r}: sni applies to an https upstream, and {up.name} is "
                                      f"{up.url}")
            ok = False
        elif kw.get("split") is not None and not any(u.scheme == "https" for u, _ in kw["split"].arms):
            cc.error_key(node, "sni", f"backend {name!r}: sni applies to an https upstream, and no upstream of "
                                      f"its split is https")
            ok = False
    for key in ("mirror", "fault", "throttle", "retry_on", "failover"):
        if key in v and "respond" in v and key not in ("fault",):
            cc.error_key(node, key, f"backend {name!r}: {key} applies to a backend that forwards; this one "
                                    f"answers itself (respond)")
            ok = False
    return ok


# respond.headers a file answer sets itself (from the file), and statuses that cannot carry one
LOCAL_SET_HEADERS = {"content-length": "the file's size", "etag": "the file's content",
                     "last-modified": "the file's modification time"}
LOCAL_NO_BODY = {204: "§15.3.5", 304: "§15.4.5"}


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def read_local_answer(r: Y, cc: CompileCtx, kw: dict[str, Any]) -> bool:
    """``respond.file`` / ``respond.dir`` into ``kw`` (file, dir, root): the path relative to the
    rules file, checked to stay inside the rules file's folder once resolved (symlinks included).

    ``root`` is the folder's real path; ``file`` and ``dir`` are kept as written under it
    (normalised, not resolved), so that a symbolic link inside the folder that is pointed
    elsewhere later is followed (``ln -sf v2.json mock.json``); ``localfiles`` resolves and checks
    them again on every request."""
    v = r.v
    if "file" in v and "dir" in v:
        cc.error_key(r, "dir", "respond: use file or dir, not both")
        return False
    key = "file" if "file" in v else "dir"
    if "body" in v:
        cc.error_key(r, key, f"respond: the body comes from the {'file' if key == 'file' else 'folder'}; leave out body")
        return False
    st = v.get("status")
    if st is not None and isinstance(st.v, int) and st.v in LOCAL_NO_BODY:
        cc.error(st, f"respond.status {st.v} cannot carry the file: a {st.v} response has no content "
                     f"(RFC 9110 {LOCAL_NO_BODY[st.v]})")
        return False
    hn = v.get("headers")
    if hn is not None and isinstance(hn.v, dict):
        for name in hn.v:
            why = LOCAL_SET_HEADERS.get(str(name).lower())
            if why is not None:
                cc.error_key(hn, name, f"respond.headers: {name} is set from {why}; leave it out")
                return False
    root = os.path.realpath(cc.base_dir)
    n = v[key]
    t = n.v
    if not isinstance(t, str) or not t.strip():
        cc.error(n, f"respond.{key} must be a path relative to the rules file, not {kind(t)}")
        return False
    if "\x00" in t:
        cc.error(n, f"respond.{key}: a path cannot contain NUL")
        return False
    if os.path.isabs(os.path.expanduser(t)):
        cc.error(n, f"respond.{key} {t!r} must be relative to the rules file's folder ({root})")
        return False
    written = os.path.normpath(os.path.join(root, t))
    real = os.path.realpath(written)
    if not _inside(written, root) or not _inside(real, root):
        cc.error(n, f"respond.{key} {t!r} is outside the rules file's folder ({root})"
                    + (" (through a symbolic link)" if _inside(written, root) else ""))
        return False
    if key == "file":
        if os.path.isdir(real):
            cc.error(n, f"respond.file {t!r} is a folder: write dir: {t!r} (with a route path ending in /*) "
                        f"to answer with the files in it")
            return False
        if not os.path.isfile(real):
            cc.error(n, f"respond.file {t!r}: there is no such file ({real})")
            return False
    else:
        if not os.path.isdir(real):
            cc.error(n, f"respond.dir {t!r}: there is no such folder ({real})")
            return False
        if not cc.route_has_rest:
            cc.error(n, "respond.dir answers with the file {rest} names: the route's match.path must end "
                        "in /* (e.g. path: /mocks/*)")
            return False
    kw[key] = written
    kw["root"] = root
    return True
