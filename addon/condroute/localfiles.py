"""Map Local: the answer of a ``respond: {file: ...}`` or ``respond: {dir: ...}`` backend, read from
the disk when a request comes (issue #16, item 6). Pure: no mitmproxy; the addon calls :func:`serve`
in its ``request`` hook and ``condroute check`` calls it for a case's status.

What a request gets:

* ``file``: that file. ``dir``: the file ``{rest}`` names inside the folder, percent-decoded once
  (``my%20mock.json`` is ``my mock.json``); an empty ``{rest}`` or one ending in ``/`` (a folder)
  gives the folder's ``index.html``, else 404. There are no folder listings.
* Never anything outside: ``{rest}`` is refused with 400 when it has a ``.`` or ``..`` segment, an
  empty segment (``a//b``, a leading ``/``: an absolute path), a backslash, a NUL (also ``%00``), an
  encoded ``.``, ``/`` or ``\\`` (``%2e``, ``%2f``, ``%5c`` in any case) or a drive letter (``C:``);
  a hidden name (a segment starting with ``.``: ``.git``, ``.env``) is answered 404, whether it
  exists or not. The path is then resolved (symbolic links included) and must stay inside the folder
  (``dir``) or the rules file's folder (``file``), checked again on every request, so that a link
  swapped in after the rules were loaded cannot lead out (403). The file is opened without following
  a final link, must be a regular file (no FIFOs or devices), and on Linux the opened descriptor's
  own path (``/proc/self/fd``) is checked once more, which closes the gap between the check and the
  open. A missing file is 404 with a plain sentence.
* Content type from the name (Python's built-in table, not the system's ``/etc/mime.types``, so that
  every machine answers alike), ``charset=utf-8`` added to text types; ``application/json`` for
  ``.json``; a ``Content-Type`` in ``respond.headers`` wins. ``respond.status`` (default 200) and
  ``respond.headers`` apply. ``Cache-Control: no-cache`` unless ``respond.headers`` sets one: a
  browser keeps the mock but asks again every time (and gets 304 while it is unchanged), so an
  edited mock shows on the next reload instead of after a heuristic freshness time.
* ``ETag``: strong, from the content (BLAKE2b, 128 bits), computed once per version of the file.
  Not from inode/size/mtime: those change when nothing did (a ``touch``, a ``git checkout``, an
  editor that writes a new file) and on coarse-timestamp file systems two versions of the same
  size written within one tick would share one; the content is read anyway (the answer is
  buffered). ``Last-Modified`` from the file's mtime (never later than now). For a 2xx answer,
  ``If-None-Match`` (weak comparison, ``*``) gives 304 on GET/HEAD and 412 on other methods, and
  only when there is no ``If-None-Match`` does ``If-Modified-Since`` count (GET/HEAD, one valid
  HTTP-date), as RFC 9110 §13.2.2 orders them. A 304 has no body and no Content-Length, and carries
  ETag, Last-Modified and the other ``respond.headers`` (Cache-Control among them). ``Range`` is
  ignored (the whole file is sent, as RFC 9110 allows).
* HEAD: the headers a GET would get, Content-Length included, no body.
* A file over :data:`MAX_FILE` (64 MiB) is not read: 500 with a sentence, and a note the addon logs,
  since the whole answer is held in memory.

Files are cached by path and (device, inode, size, mtime_ns, ctime_ns): a changed file is read again
on the next request (an editor's rename, a write, a ``touch``), an unchanged one is served from
memory. The cache is bounded: :data:`CACHE_BYTES` in all, files over :data:`CACHE_FILE` are read each
time, the least recently used go first.
"""
from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import unquote

from .model import Respond

MAX_FILE = 64 << 20          # the largest file served (the answer is buffered)
CACHE_BYTES = 32 << 20       # the cache's bound, in bytes of content
CACHE_FILE = 4 << 20         # a larger file is read on every request, never cached
MAX_REST = 4096              # a longer {rest} names no file (and would be ENAMETOOLONG)
INDEX = "index.html"

_ENCODED = re.compile(r"%(?:2[eEfF]|5[cC]|00)")
_DRIVE = re.compile(r"^[A-Za-z]:")
_TYPES = mimetypes.MimeTypes()      # the built-in table only (see the module docstring)
_OWN_TYPES = {".json": "application/json", ".map": "application/json", ".js": "text/javascript",
              ".mjs": "text/javascript", ".md": "text/markdown", ".yaml": "application/yaml",
              ".yml": "application/yaml", ".woff2": "font/woff2", ".woff": "font/woff",
              ".webp": "image/webp", ".avif": "image/avif", ".ndjson": "application/x-ndjson"}
_ENCODINGS = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
              "br": "application/x-brotli", "compress": "application/x-compress"}
_CHARSET_TYPES = ("application/javascript", "application/xml", "application/yaml", "image/svg+xml")
_PROC_FD = "/proc/self/fd"


@dataclass(frozen=True)
class Answer:
    """What to answer: ``headers`` in order; ``content_length`` is the Content-Length to send
    (the file's size on HEAD, where ``body`` is empty; None for a 304); ``name`` the file served,
    relative to the rules file's folder ("" when none); ``note`` why the answer is not the file
    (a sentence for the log and the flow's comment; "" when the file was served); ``error`` True
    when the note is a problem of the rules or the disk rather than of the request (logged)."""
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    content_length: int | None
    name: str = ""
    note: str = ""
    error: bool = False


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def printable(text: str) -> str:
    """A name for the log, the comment and the answer: characters that are not printable (a NUL,
    a line break from ``%0a``) escaped, so that a request cannot write lines of its own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def _rel(path: str, root: str) -> str:
    if root and _inside(path, root):
        return os.path.relpath(path, root).replace(os.sep, "/")
    return path


# -- names (pure: no file system) -------------------------------------------------------------------
def check_rest(rest: str | None) -> tuple[list[str] | None, int, str]:
    """The file names of ``{rest}`` (percent-decoded once, ``[]`` for the folder itself, a last
    ``""`` for a trailing ``/``), or ``(None, status, why)`` when it cannot name a file inside the
    folder. Touches no file system."""
    if not rest:
        return [], 0, ""
    if len(rest) > MAX_REST:
        return None, 404, f"a name of {len(rest)} characters names no file"
    if "\x00" in rest:
        return None, 400, "the name has a NUL"
    if "\\" in rest:
        return None, 400, "the name has a backslash"
    if _ENCODED.search(rest):
        return None, 400, "the name has an encoded '.', '/', '\\' or NUL (%2e, %2f, %5c, %00)"
    raw = rest.split("/")
    out = []
    for i, seg in enumerate(raw):
        if seg == "":
            if i == len(raw) - 1 and i > 0:
                out.append("")          # a trailing "/": the folder's index.html
                continue
            return None, 400, "the name has an empty segment (an absolute path, or '//')"
        name = unquote(seg, errors="surrogateescape") if "%" in seg else seg
        if name in (".", ".."):
            return None, 400, f"the name has a {name!r} segment"
        if "\x00" in name or "/" in name or "\\" in name:    # (decoded: %2f, %5c and %00 are refused above)
            return None, 400, "the name has an encoded separator"
        if _DRIVE.match(name):
            return None, 400, f"the name has a drive letter ({name[:2]})"
        if name.startswith("."):
            return None, 404, f"{printable(name)!r} is hidden (its name starts with '.'): hidden files are not served"
        out.append(name)
    return out, 0, ""


def shown_name(r: Respond, rest: str | None) -> str:
    """The file a request is answered from, as the log, the comment and ``explain`` name it:
    relative to the rules file's folder, ``{rest}`` as it came (the folder ending in ``/`` when
    ``{rest}`` is empty). Touches no file system."""
    if r.file:
        return printable(_rel(r.file, r.root))
    folder = _rel(r.dir, r.root).rstrip("/") + "/"
    return printable(folder + (rest or ""))


# -- the cache ----------------------------------------------------------------------------------------
class _Cache:
    """path -> (stat key, content, ETag), least recently used first; bounded in bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES, max_file: int = CACHE_FILE):
        self.max_bytes, self.max_file = max_bytes, max_file
        self.items: OrderedDict[str, tuple[tuple[int, ...], bytes, str]] = OrderedDict()
        self.bytes = 0
        self.reads = 0                  # files read from the disk (for tests)
        self.lock = threading.Lock()

    def get(self, path: str, key: tuple[int, ...]) -> tuple[bytes, str] | None:
        with self.lock:
            got = self.items.get(path)
            if got is None or got[0] != key:
                return None
            self.items.move_to_end(path)
            return got[1], got[2]

    def put(self, path: str, key: tuple[int, ...], content: bytes, etag: str) -> None:
        with self.lock:
            old = self.items.pop(path, None)
            if old is not None:
                self.bytes -= len(old[1])
            if len(content) > self.max_file:
                return
            while self.items and self.bytes + len(content) > self.max_bytes:
                _, dropped = self.items.popitem(last=False)
                self.bytes -= len(dropped[1])
            self.items[path] = (key, content, etag)
            self.bytes += len(content)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.bytes = 0


CACHE = _Cache()


# -- answers ------------------------------------------------------------------------------------------
def content_type(name: str) -> str:
    """The Content-Type for a file name (see the module docstring)."""
    base = name.rsplit("/", 1)[-1]
    ext = os.path.splitext(base)[1].lower()
    t, enc = _TYPES.guess_type(base, strict=False)
    if enc is not None:
        return _ENCODINGS.get(enc, "application/octet-stream")
    t = _OWN_TYPES.get(ext, t) or "application/octet-stream"
    if t.startswith("text/") or t in _CHARSET_TYPES:
        t += "; charset=utf-8"
    return t


def _plain(status: int, text: str, name: str = "", error: bool = False, head: bool = False) -> Answer:
    body = f"condroute: {text}\n".encode("utf-8", "surrogateescape")
    return Answer(status, (("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-cache")),
                  b"" if head else body, len(body), name, text, error)


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match against our (strong) ETag, by weak comparison (RFC 9110 §13.1.2)."""
    if header.strip() == "*":
        return True
    ours = etag[2:] if etag.startswith("W/") else etag
    for m in re.finditer(r'(?:W/)?"[^"]*"', header):
        tag = m.group(0)
        if (tag[2:] if tag.startswith("W/") else tag) == ours:
            return True
    return False


def _not_modified_since(values: list[str], mtime: int) -> bool:
    if len(values) != 1 or values[0].count(",") > 1:     # a list of dates: ignored (RFC 9110 §13.1.3)
        return False
    try:
        when = parsedate_to_datetime(values[0])
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    if when is None or when.tzinfo is None:
        return False
    return mtime <= when.timestamp()


def _locate(r: Respond, rest: str | None) -> tuple[str | None, str, Answer | None]:
    """The real path to open and its shown name, or an answer (refused or missing)."""
    if r.file:
        shown = printable(_rel(r.file, r.root))
        real = os.path.realpath(r.file)
        if not os.path.lexists(r.file):
            return None, shown, _plain(404, f"{shown}: there is no such file (respond.file)", shown, error=True)
        if not _inside(real, r.root):
            return None, shown, _plain(403, f"{shown} now leads outside the rules file's folder (a symbolic "
                                            f"link): not served", shown, error=True)
        return real, shown, None
    folder = _rel(r.dir, r.root).rstrip("/") + "/"
    names, status, why = check_rest(rest)
    shown = printable(folder + (rest or ""))
    if names is None:
        return None, shown, _plain(status, f"{shown}: {why}", shown)
    base = os.path.realpath(r.dir)
    if not _inside(base, r.root) or not os.path.isdir(base):
        what = "is no longer a folder" if _inside(base, r.root) else "now leads outside the rules file's folder"
        return None, shown, _plain(404 if _inside(base, r.root) else 403, f"{folder} {what}: not served",
                                   shown, error=True)
    want_index = not names or names[-1] == ""
    names = [n for n in names if n]
    cand = os.path.join(base, *names) if names else base
    real = os.path.realpath(cand)
    if not _inside(real, base):
        return None, shown, _plain(403, f"{shown} leads outside {folder} (a symbolic link): not served", shown)
    if os.path.isdir(real):
        want_index = True
    if want_index:
        real = os.path.realpath(os.path.join(real, INDEX))
        shown = shown.rstrip("/") + "/" + INDEX if names else folder + INDEX
        if not _inside(real, base):
            return None, shown, _plain(403, f"{shown} leads outside {folder} (a symbolic link): not served", shown)
    return real, shown, None


def _open_inside(real: str, folder: str) -> tuple[int | None, int, str]:
    """Open ``real`` for reading without following a final link; check the descriptor's path."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None, 404, "there is no such file"
        if e.errno == errno.ELOOP:
            return None, 403, "it became a symbolic link while it was opened: not served"
        if e.errno in (errno.EACCES, errno.EPERM):
            return None, 403, "the proxy may not read it (permission denied)"
        if e.errno == errno.ENAMETOOLONG:
            return None, 404, "the name is too long for the file system"
        return None, 500, f"it cannot be opened ({os.strerror(e.errno or 0)})"
    try:
        there = os.readlink(f"{_PROC_FD}/{fd}")
    except OSError:
        there = None          # no /proc (not Linux): the realpath check stands alone
    if there is not None and not _inside(there, folder):
        os.close(fd)
        return None, 403, "it was moved outside the folder while it was opened: not served"
    return fd, 0, ""


def serve(r: Respond, method: str = "GET", rest: str | None = None, if_none_match: list[str] | None = None,
          if_modified_since: list[str] | None = None, now: float | None = None) -> Answer:
    """The answer of a file or dir respond for one request (see the module docstring). Never
    raises for any request input or any state of the disk."""
    head = method.upper() == "HEAD"
    try:
        return _serve(r, method.upper(), head, rest, if_none_match or [], if_modified_since or [], now)
    except OSError as e:   # anything the disk can do that the steps above do not name
        return _plain(500, f"{shown_name(r, rest)} cannot be read ({os.strerror(e.errno or 0)})",
                      shown_name(r, rest), error=True, head=head)


def _serve(r: Respond, method: str, head: bool, rest: str | None, inm: list[str], ims: list[str],
           now: float | None) -> Answer:
    real, shown, refused = _locate(r, rest)
    if refused is not None:
        return _head(refused) if head else refused
    assert real is not None
    folder = r.root if r.file else os.path.realpath(r.dir)
    fd, status, why = _open_inside(real, folder)
    if fd is None:
        return _plain(status, f"{shown}: {why}", shown, error=bool(r.file) or status >= 500, head=head)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder without index.html" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            return _plain(404, f"{shown} is {what}", shown, error=bool(r.file), head=head)
        if st.st_size > MAX_FILE:
            return _plain(500, f"{shown} is {st.st_size / (1 << 20):.1f} MiB: condroute serves files up to "
                               f"{MAX_FILE >> 20} MiB (the answer is held in memory)", shown, error=True, head=head)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        got = CACHE.get(real, key)
        if got is None:
            chunks, size = [], 0
            while True:
                chunk = os.read(fd, min(1 << 20, MAX_FILE + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_FILE:
                    return _plain(500, f"{shown} grew over {MAX_FILE >> 20} MiB while it was read", shown,
                                  error=True, head=head)
            content = b"".join(chunks)
            etag = '"' + hashlib.blake2b(content, digest_size=16).hexdigest() + '"'
            CACHE.reads += 1
            CACHE.put(real, key, content, etag)
        else:
            content, etag = got
    finally:
        os.close(fd)
    t = time.time() if now is None else now
    mtime = int(min(st.st_mtime, t))
    status = r.status
    user = {k.lower() for k, _ in r.headers}
    headers: list[tuple[str, str]] = []
    if "content-type" not in user:
        headers.append(("Content-Type", content_type(real)))
    if "cache-control" not in user:
        headers.append(("Cache-Control", "no-cache"))
    validators = [("ETag", etag), ("Last-Modified", formatdate(mtime, usegmt=True))] if 200 <= status < 300 else []
    if validators:
        if inm:
            if _etag_matches(", ".join(inm), etag):
                if method in ("GET", "HEAD"):
                    return _not_modified(r, validators, shown)
                return _plain(412, f"{shown}: If-None-Match matches the file ({method} is not GET or HEAD)",
                              shown, head=head)
        elif ims and method in ("GET", "HEAD") and _not_modified_since(ims, mtime):
            return _not_modified(r, validators, shown)
    headers += validators + list(r.headers)
    return Answer(status, tuple(headers), b"" if head else content, len(content), shown)


def _not_modified(r: Respond, validators: list[tuple[str, str]], shown: str) -> Answer:
    user = [(k, v) for k, v in r.headers if not k.lower().startswith("content-")]
    if not any(k.lower() == "cache-control" for k, _ in user):
        user.insert(0, ("Cache-Control", "no-cache"))
    return Answer(304, tuple(validators + user), b"", None, shown, "not modified")


def _head(a: Answer) -> Answer:
    return Answer(a.status, a.headers, b"", a.content_length, a.name, a.note, a.error)
