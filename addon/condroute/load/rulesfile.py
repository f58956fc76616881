"""Read a rules file safely: a regular file only, at most MAX_BYTES, read once.

The bytes returned are the bytes that get hashed *and* parsed: the watcher's idea of which version
is live and the rules actually installed can never come from two different reads of the file.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

from ..errors import RulesError

MAX_BYTES = 32 * 1024 * 1024      # a 10,000-route file is ~5 MB; 50 MB used to exhaust memory
_CHUNK = 1 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


@dataclass(frozen=True)
class RulesBytes:
    """One read of a rules file: its bytes, their digest, and the fstat of what was read."""
    data: bytes
    digest: bytes
    key: tuple[int, int, int, int]   # stat_key() of the open file, before it was read
    changed: bool = False            # the file changed while it was being read: not a settled version

    @property
    def mtime_ns(self) -> int:
        return self.key[0]


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies a version of the file without reading it. ctime is there because nothing
    but the kernel sets it: a chmod (an unreadable file made readable) or an mtime put back counts."""
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def not_regular(mode: int) -> str | None:
    """Why a file of this mode cannot be a rules file, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, what in _KINDS:
        if test(mode):
            return (f"is {what}, not a regular file (a pipe or <(...) can be read only once and not watched: "
                    "write the rules to a file)") if what == "a named pipe (FIFO)" else f"is {what}, not a regular file"
    return "is not a regular file"


def cannot_read(path: str, e: OSError) -> RulesError:
    return RulesError.at(path, 1, 1, f"cannot read the file: {e.strerror or e}")


def check_stat(path: str, st: os.stat_result) -> None:
    why = not_regular(st.st_mode)
    if why is not None:
        raise RulesError.at(path, 1, 1, why)
    if st.st_size > MAX_BYTES:
        raise RulesError.at(path, 1, 1, f"the file is too large: {st.st_size:,} bytes, "
                                        f"the limit is {MAX_BYTES:,} bytes (32 MiB)")


def read_rules_file(path: str) -> RulesBytes:
    """Read ``path``: refused with a located :class:`RulesError` unless it is a readable regular file
    of at most MAX_BYTES. Never blocks on a FIFO, device or socket, even one swapped in between the
    checks: the file type is checked before opening, the open is non-blocking, and the type is
    checked again on the open descriptor before anything is read."""
    try:
        check_stat(path, os.stat(path))
        # O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer, forever, and not even
        # SIGTERM gets through (mitmproxy's signal handler runs on the blocked event loop). It does
        # nothing to a regular file. O_NOCTTY: a terminal swapped in must not become ours.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise cannot_read(path, e) from None
    try:
        st = os.fstat(fd)
        check_stat(path, st)
        chunks, n = [], 0
        while True:   # to EOF, not to st_size: the file may be growing; the cap still holds
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
            if n > MAX_BYTES:
                raise RulesError.at(path, 1, 1, f"the file is too large: more than {MAX_BYTES:,} bytes "
                                                "(the limit is 32 MiB)")
        changed = stat_key(os.fstat(fd)) != stat_key(st)
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise RulesError.at(path, 1, 1, "is a directory, not a regular file") from None
        raise cannot_read(path, e) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    del chunks
    return RulesBytes(data, digest(data), stat_key(st), changed or len(data) != st.st_size)
