"""Located errors for rules files: every message is ``FILE:LINE:COLUMN: message``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class RulesError(Exception):
    """A rules file that does not load. Carries one or more located problems."""

    # the files the rules file imports, as far as it was read (the hot reload watches them)
    imported: tuple = ()

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def at(cls, file: str, line: int, col: int, message: str) -> "RulesError":
        return cls([Problem(file, line, col, message)])
