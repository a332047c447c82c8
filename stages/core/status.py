"""A cell's or row's status: ok, skipped or failed, each with an optional reason.

Written to the CSVs as the strings they always held ("ok", "ok: fewer runs than min_runs", "skipped: WHY",
"failed: WHY"), and read back from them (this version's or an older one's) with `Status.read` / `Status.parse`,
or tested with is_ok / is_skipped / is_failed (text that is no status is none of them). Nothing here imports
pandas: `has_kind` maps a status column (a Series) with its own `.map`.
"""

from __future__ import annotations

from dataclasses import dataclass

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
KINDS = (OK, SKIPPED, FAILED)


@dataclass(frozen=True)
class Status:
    """kind: ok | skipped | failed; reason: why (a note for ok, e.g. "fewer runs than min_runs"), or ""."""

    kind: str
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"status kind {self.kind!r} is not one of {', '.join(KINDS)}")

    @classmethod
    def ok(cls, note: str = "") -> Status:
        return cls(OK, str(note))

    @classmethod
    def skipped(cls, why: object) -> Status:
        return cls(SKIPPED, str(why))

    @classmethod
    def failed(cls, why: object) -> Status:
        return cls(FAILED, str(why))

    @classmethod
    def read(cls, text: object) -> Status | None:
        """A status string as written to a CSV, or None for text that is none (an empty cell, a report's own
        word such as regress's "absent"). "ok"/"skipped"/"failed", alone or followed by ": REASON"; any text
        after the kind counts, as the startswith tests this replaces did."""
        if isinstance(text, Status):
            return text
        s = str(text)
        for kind in KINDS:
            if s.startswith(kind):
                rest = s[len(kind):]
                return cls(kind, rest[2:] if rest.startswith(": ") else rest.removeprefix(":").lstrip())
        return None

    @classmethod
    def parse(cls, text: object) -> Status:
        """Like read, for text that must be a status: ValueError otherwise."""
        status = cls.read(text)
        if status is None:
            raise ValueError(f"not a status: {text!r} (ok, skipped or failed, with an optional ': reason')")
        return status

    @property
    def is_ok(self) -> bool:
        return self.kind == OK

    @property
    def is_skipped(self) -> bool:
        return self.kind == SKIPPED

    @property
    def is_failed(self) -> bool:
        return self.kind == FAILED

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}" if self.reason else self.kind


def kind_of(text: object) -> str | None:
    """ok / skipped / failed, or None for text that is no status."""
    status = Status.read(text)
    return status.kind if status else None


def is_ok(text: object) -> bool:
    return kind_of(text) == OK


def is_skipped(text: object) -> bool:
    return kind_of(text) == SKIPPED


def is_failed(text: object) -> bool:
    return kind_of(text) == FAILED


def has_kind(column, kind: str):
    """A boolean column: which values of a status column (a pandas Series) are of `kind` (no status: none)."""
    if kind not in KINDS:
        raise ValueError(f"status kind {kind!r} is not one of {', '.join(KINDS)}")
    return column.map(lambda v: kind_of(v) == kind).astype(bool)
