"""The default sweep against the full grid (committed runs of both on one build and machine): each of the
default's picks (recommended.csv) is the full grid's pick, or its p50 lies inside the 95% interval of the median
of the full grid's pick (from that cell's own runs, latency_samples.csv)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stages.ondevice.timing import median_ci
from stages.report.choose import on_cpu, timed, with_modes, workload
from stages.tools.docs.tables import csv, machine, run_info, table

DEFAULT = Path("reports/measured/vit_t-default")
FULL = Path("reports/measured/vit_t-full")
PICK = ["component", "runtime", "pick", "threads"]


def _cell(lat: pd.DataFrame, r: pd.Series) -> pd.Series | None:
    """The latency row of the cell a recommended.csv row names (CPU backend, its workload); None if not timed."""
    m = lat[timed(lat) & on_cpu(lat) & (lat["component"] == r["component"]) & (lat["runtime"] == r["runtime"])
            & (lat["artifact"] == r["artifact"]) & (lat["precision"] == r["precision"]) & (lat["mode"] == r["mode"])
            & (lat["threads"] == r["threads"])]
    m = m[[workload(x) == r["workload"] for _, x in m.iterrows()]]
    return m.iloc[0] if len(m) else None


def _interval(samples: pd.DataFrame, row: pd.Series) -> tuple[float, float]:
    s = samples[(samples["cell"] == row["cell"]) & (samples["points"] == row["points"])
                & (samples["out_h"] == row["out_h"]) & (samples["out_w"] == row["out_w"])]
    return median_ci(sorted(s["ms"]))


def _verdict(same: bool, p50: float, mine: tuple[float, float], pick: tuple[float, float]) -> str:
    if same:
        return "same cell"
    if pick[0] <= p50 <= pick[1]:
        return "inside"
    if mine[0] <= pick[1] and pick[0] <= mine[1]:
        return "intervals overlap"
    return "**outside**"


def picks(root: Path, arg: str = "") -> str:
    """One line per (component, runtime, pick, threads): the default's pick, as both runs timed it, against the
    full grid's pick. The verdict compares within the full run (one process order, one stretch of time), so
    drift between the two runs does not decide it."""
    rec = {name: csv(root, run / "recommended.csv").set_index(PICK) for name, run in (("d", DEFAULT), ("f", FULL))}
    lat = with_modes(csv(root, FULL / "latency.csv"))
    samples = csv(root, FULL / "latency_samples.csv")
    rows = []
    for key, d in rec["d"].iterrows():
        mine = _cell(lat, pd.Series({**d, **dict(zip(PICK, key, strict=True))}))
        if key not in rec["f"].index or mine is None:
            rows.append([*key, _name(d), f"{d['p50_ms']:.1f}", "not timed", "", "not in the full grid"])
            continue
        f = rec["f"].loc[key]
        pick = _interval(samples, _cell(lat, pd.Series({**f, **dict(zip(PICK, key, strict=True))})))
        ci = _interval(samples, mine)
        rows.append([*key, _name(d), f"{d['p50_ms']:.1f}", f"{mine['p50_ms']:.1f} ({ci[0]:.1f}-{ci[1]:.1f})",
                     f"{_name(f)}: {f['p50_ms']:.1f} ({pick[0]:.1f}-{pick[1]:.1f})",
                     _verdict(_name(d) == _name(f), mine["p50_ms"], ci, pick)])
    return (table(["component", "runtime", "pick", "threads", "default's pick", "its p50 ms, default run",
                   "its p50 ms, full run (95% interval)", "full grid's pick: p50 ms (95% interval)", "verdict"], rows)
            + f"\n\nSources: `{DEFAULT}/` ({run_info(root, DEFAULT)['date']}) and `{FULL}/`"
              f" ({run_info(root, FULL)['date']}), one build, {machine(lat)}. Verdict: *inside*, the default's pick"
              " as the full run timed it has a p50 inside the 95% interval of the full grid's pick; *intervals"
              " overlap*, not inside, but the two cells' intervals overlap, so that run cannot tell them apart.")


def _name(r: pd.Series) -> str:
    mode = "" if r["mode"] == "default" else f"~{r['mode']}"
    return f"{r['artifact']}@{r['precision']}{mode} ({r['workload']})"


def picks_summary(root: Path, arg: str = "") -> str:
    """One sentence: how many of the default's picks the full grid confirms."""
    text = picks(root)
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in text.splitlines()[2:] if line.startswith("|")]
    n = {v: verdicts.count(v) for v in ("same cell", "inside", "intervals overlap")}
    rest = len(verdicts) - sum(n.values())
    return (f"Of the default sweep's {len(verdicts)} picks (per component and runtime, fastest / smallest, at 1 "
            f"thread and the top thread count), {n['same cell']} are the full grid's own pick; of the others, p50 "
            f"inside the 95% interval of the full grid's pick: {n['inside']}, not inside but indistinguishable from it"
            f" (intervals overlap): {n['intervals overlap']}, neither: {rest}"
            f" ([docs/benchmarking.md](docs/benchmarking.md), `{DEFAULT}/`, `{FULL}/`).")
