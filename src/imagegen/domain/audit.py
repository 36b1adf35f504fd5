"""What the audit (`imagegen verify`) reports: a broken invariant of DESIGN.md and where."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    invariant: int
    subject: str
    message: str
