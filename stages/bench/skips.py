"""The cells the bench does not time, as few rows as there are reasons: a backend this machine lacks, a setting
that computes exactly what another does here, a file identical to another variant's, a variant that fails parity
(a sweep with `candidates: passing`). One row per (runtime, backend, reason), not one per cell and workload; the
row's `cells` says how many cells it stands for, its other columns list what they cover."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stages.core.artifacts import artifact_bytes
from stages.core.parity_rows import passes, with_checked
from stages.core.status import Status

# the columns a collapsed row lists the values of (space-joined when its cells differ)
LISTED = ("component", "artifact", "variant", "precision", "mode", "mode_options")
MIXED = ("variant_kind", "compute_note", "fp16_compute", "int8_compute", "upsample")


class Skips:
    """Skipped cells grouped by (target, runtime, backend, status): `add` each, `rows` at the end."""

    def __init__(self) -> None:
        self.groups: dict[tuple, list[dict]] = {}

    def add(self, base: dict, status: Status) -> None:
        key = (base.get("target", "host"), base["runtime"], base["backend"], str(status))
        self.groups.setdefault(key, []).append(base)

    def rows(self) -> list[dict]:
        out = []
        for (target, runtime, backend, status), bases in self.groups.items():
            row = {**bases[0], "status": status, "cells": len(bases), "points": 0, "out_size": [0, 0]}
            for col in LISTED:
                row[col] = " ".join(dict.fromkeys(str(b.get(col, "")) for b in bases))
            for col in MIXED:  # what the cells compute in: kept only when they all agree
                row[col] = bases[0].get(col, "") if len({str(b.get(col, "")) for b in bases}) == 1 else ""
            threads = sorted({int(b["threads"]) for b in bases})
            row["threads"] = threads[0] if len(threads) == 1 else 0  # 0: every thread count listed in `cell`
            where = "" if target == "host" else f"@{target}"
            mode = "" if row["mode"] == "default" else f"~{_one(row, 'mode')}"
            row["cell"] = (bases[0]["cell"] if len(bases) == 1 else
                           f"{_one(row, 'component')}/{runtime}-{backend}/{_one(row, 'artifact')}@"
                           f"{_one(row, 'precision')}{mode} ({len(bases)} cells, threads {' '.join(map(str, threads))})"
                           f"{where}")
            out.append(row)
        return out


def _one(row: dict, col: str) -> str:
    """The value all of a collapsed row's cells share, or * when they differ."""
    return "*" if " " in row[col] else row[col]


class Candidates:
    """Which cells a sweep with `candidates: passing` times: a cell whose artifact, at its precision and memory
    mode, fails parity (its component or end to end) is not one (PyTorch, the reference, always is; a cell parity
    has no row for is timed; a memory mode parity did not check is judged by the artifact's memory normal rows).
    Nor is an MNN variant that differs from another only in how its file stores weights (`float_twin`: MNN
    expands them to fp32 at load, so at memory normal it runs the twin's graph and kernels), unless it is the
    smallest file that passes: the two questions are the fastest and the smallest passing cell."""

    def __init__(self, parity_csv: Path | None, mode: str, root: Path = Path(".")):
        self.parity, self.root = None, root
        if mode == "passing" and parity_csv is not None and parity_csv.is_file():
            self.parity = with_checked(pd.read_csv(parity_csv))

    def why_not(self, runtime: str, artifact: str, precision: str, memory: str, component: str) -> str | None:
        if self.parity is None or runtime == "torch":
            return None
        p = self.parity
        same = (p["artifact"] == artifact) & (p["precision"] == precision)
        if not (same & (p["memory"] == memory)).any():
            memory = "normal"
        own = p[same & (p["memory"] == memory)]
        parts = {"e2e", component}
        mine = own[own["component"].isin(parts)]
        # no verdict (no row, or a row skipped as identical to another setting): timed
        if set(mine["component"]) != parts or not mine["checked"].all() \
                or passes(p, artifact, precision, component, memory) is not None:
            return None
        failed = own[own["checked"] & ~own["passed"]]  # every component's: one reason (one row) per artifact
        what = "; ".join(f"{r.component}: {r.failed_checks}" for r in failed.itertuples()) or "not checked"
        return (f"fails parity at memory {memory} ({what}), so it is no candidate for the fastest passing cell; "
                f"the sweep option candidates: all (SWEEP=full) times it")

    def smallest(self, component: str, precision: str, memory: str) -> str | None:
        """The artifact with the smallest `component` file among those passing at (precision, memory)."""
        if self.parity is None:
            return None
        p = self.parity
        p = p[(p["component"] == component) & (p["precision"] == precision) & (p["memory"] == memory) & p["passed"]]
        sizes = {r.artifact: artifact_bytes(self.root / str(r.artifact_path)) for r in p.itertuples()
                 if (self.root / str(r.artifact_path)).is_file()
                 and passes(self.parity, r.artifact, precision, component, memory) is not None}
        return min(sizes, key=sizes.get) if sizes else None

    def why_twin(self, cell, twin: str | None, memory: str) -> str | None:
        """Why an MNN cell that stores its float twin's weights in fewer bits is not timed (None: it is)."""
        if self.parity is None or twin is None or memory == "low":
            return None  # memory low on int8 weights: dynamic int8, arithmetic of its own
        p = self.parity
        if not ((p["artifact"] == cell.artifact) & (p["precision"] == cell.precision) & (p["memory"] == memory)).any():
            return None  # parity has no verdict on it: timed, as why_not times such cells
        if cell.artifact == self.smallest(cell.component, cell.precision, memory):
            return None
        return (f"stores mnn-{twin}'s weights in fewer bits, which MNN expands to fp32 at load: at memory {memory} it "
                f"runs mnn-{twin}'s graph with the same kernels (that row times it), and it is not the smallest file "
                f"that passes, so it is no candidate; the sweep option candidates: all (SWEEP=full) times it")


class SameFiles:
    """A cell whose files (side files included) are byte for byte those of a cell timed before it (same runtime,
    backend, component, precision, mode, threads): the converter made the same file from two variants' options
    (an encoder has no site for a decoder rewrite). It computes exactly what that cell does."""

    def __init__(self) -> None:
        self.timed: dict[tuple, str] = {}

    @staticmethod
    def _key(cell, shas: tuple[str, ...]) -> tuple:
        return (cell.runtime, cell.backend, cell.component, cell.precision, cell.mode, cell.threads, shas)

    def add(self, cell, shas: tuple[str, ...]) -> None:
        """`cell` was timed (its row has numbers)."""
        self.timed.setdefault(self._key(cell, shas), cell.artifact)

    def why_same(self, cell, shas: tuple[str, ...]) -> str | None:
        first = self.timed.get(self._key(cell, shas))
        if first is None or first == cell.artifact:
            return None
        return (f"{cell.artifact} is the same file as {first} here (identical bytes): it computes exactly what "
                f"{first} does; not timed twice (sweep option identical_settings: run times it)")
