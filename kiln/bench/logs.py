"""The two log styles users' scripts already parse.

trtexec: every line is `[MM/DD/YYYY-HH:MM:SS] [I] text` (I, W, E, V for info, warning,
error, verbose), and the run is framed by `&&&& RUNNING ...` / `&&&& PASSED ...` lines.

Polygraphy: `[I] text` with four spaces of indent per nesting level.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import TextIO

import kiln


class TrtexecLog:
    """Writes trtexec-style lines to `stream` (stdout by default)."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.verbose_on = verbose

    def _write(self, severity: str, text: str) -> None:
        stamp = time.strftime("%m/%d/%Y-%H:%M:%S")
        for line in (text.splitlines() or [""]):
            self.stream.write(f"[{stamp}] [{severity}] {line}\n")
        self.stream.flush()

    def info(self, text: str = "") -> None:
        self._write("I", text)

    def warning(self, text: str) -> None:
        self._write("W", text)

    def error(self, text: str) -> None:
        self._write("E", text)

    def verbose(self, text: str) -> None:
        if self.verbose_on:
            self._write("V", text)

    def frame(self, state: str, command: str) -> None:
        """`&&&& RUNNING|PASSED|FAILED kiln.bench [kiln vX] # command` (no timestamp)."""
        self.stream.write(f"&&&& {state} kiln.bench [kiln v{kiln.__version__}] # {command}\n")
        self.stream.flush()


class PolygraphyLog:
    """Writes Polygraphy-style lines: `[I] text`, indented by nesting level."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.verbose_on = verbose
        self.level = 0

    def _write(self, severity: str, text: str) -> None:
        pad = "    " * self.level
        lines = text.splitlines() or [""]
        self.stream.write(f"[{severity}] {pad}{lines[0]}\n")
        for line in lines[1:]:
            self.stream.write(f"    {pad}{line}\n")
        self.stream.flush()

    def info(self, text: str) -> None:
        self._write("I", text)

    def warning(self, text: str) -> None:
        self._write("W", text)

    def error(self, text: str) -> None:
        self._write("E", text)

    def verbose(self, text: str) -> None:
        if self.verbose_on:
            self._write("V", text)

    @contextmanager
    def indent(self):
        self.level += 1
        try:
            yield
        finally:
            self.level -= 1
