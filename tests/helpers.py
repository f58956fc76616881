"""Test helpers: echo backends and a real mitmdump subprocess, all on 127.0.0.1."""
from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon" / "conditional_routing.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")
LISTEN_RE = re.compile(r"listening at (?:\*|[\d.]+|\[[0-9a-f:]+\]):(\d+)")


class Proxy:
    """A mitmdump subprocess. ``port`` is where it listens; ``lines`` collects its output."""

    def __init__(self, args: list[str], env: dict | None = None, cwd: str | None = None):
        self.cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", "0", *args]
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})}, cwd=cwd or str(ROOT),
        )
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.port: int | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match:
        """Wait until an output line (from index ``start`` on) matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    if self.lines[i] == "<EOF>":
                        raise AssertionError(f"mitmdump exited before {pattern!r}:\n" + self.output())
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {pattern!r}:\n" + self.output())
                self._cond.wait(left)

    def start(self) -> "Proxy":
        m = self.wait_for(LISTEN_RE.pattern)
        self.port = int(m.group(1))
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_mitmdump_until_exit(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run mitmdump expecting it to exit by itself (e.g. a bad rules file at start-up)."""
    cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", "0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
