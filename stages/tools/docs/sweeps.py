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


def _cell(lat: pd.DataFrame, r: pd.Series) -> pd.Series:
    """The latency row a recommended.csv row was picked from (CPU backend, its workload)."""
    m = lat[timed(lat) & on_cpu(lat) & (lat["component"] == r["component"]) & (lat["runtime"] == r["runtime"])
            & (lat["artifact"] == r["artifact"]) & (lat["precision"] == r["precision"]) & (lat["mode"] == r["mode"])
            & (lat["threads"] == r["threads"])]
    m = m[[workload(x) == r["workload"] for _, x in m.iterrows()]]
    return m.iloc[0]


def _interval(samples: pd.DataFrame, row: pd.Series) -> tuple[float, float]:
    s = samples[(samples["cell"] == row["cell"]) & (samples["points"] == row["points"])
                & (samples["out_h"] == row["out_h"]) & (samples["out_w"] == row["out_w"])]
    return median_ci(sorted(s["ms"]))


def picks(root: Path, arg: str = "") -> str:
    """One line per (component, runtime, pick, threads): the default's and the full grid's pick, and the verdict."""
    rec = {name: csv(root, run / "recommended.csv").set_index(PICK) for name, run in (("d", DEFAULT), ("f", FULL))}
    lat = with_modes(csv(root, FULL / "latency.csv"))
    samples = csv(root, FULL / "latency_samples.csv")
    rows = []
    for key, d in rec["d"].iterrows():
        if key not in rec["f"].index:
            rows.append([*key, _name(d), "no pick in the full grid", "", "no"])
            continue
        f = rec["f"].loc[key]
        lo, hi = _interval(samples, _cell(lat, pd.Series({**f, **dict(zip(PICK, key, strict=True))})))
        same = _name(d) == _name(f)
        inside = lo <= d["p50_ms"] <= hi
        rows.append([*key, f"{_name(d)}: {d['p50_ms']:.1f}", f"{_name(f)}: {f['p50_ms']:.1f} ({lo:.1f}-{hi:.1f})",
                     "same cell" if same else ("inside" if inside else "**outside**")])
    return (table(["component", "runtime", "pick", "threads", "default: cell p50 ms", "full grid: cell p50 ms (95% "
                   "interval of its median)", "verdict"], rows)
            + f"\n\nSources: `{DEFAULT}/` ({run_info(root, DEFAULT)['date']}) and `{FULL}/`"
              f" ({run_info(root, FULL)['date']}), one build, {machine(lat)}.")


def _name(r: pd.Series) -> str:
    mode = "" if r["mode"] == "default" else f"~{r['mode']}"
    return f"{r['artifact']}@{r['precision']}{mode} ({r['workload']})"


def picks_summary(root: Path, arg: str = "") -> str:
    """One sentence: how many of the default's picks the full grid confirms."""
    text = picks(root)
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in text.splitlines()[2:] if line.startswith("|")]
    ok = sum(v in ("same cell", "inside") for v in verdicts)
    return (f"Of the default sweep's {len(verdicts)} picks (per component, runtime, fastest / smallest, 1 and 2 "
            f"threads), {verdicts.count('same cell')} are the full grid's own pick and {ok - verdicts.count('same cell')}"
            f" more have a p50 inside the 95% interval of the full grid's pick; {len(verdicts) - ok} do not "
            f"([docs/benchmarking.md](docs/benchmarking.md), `{DEFAULT}/`, `{FULL}/`).")
