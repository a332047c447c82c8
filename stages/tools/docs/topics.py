"""Renderers for the topic pages: MNN variants, full int8, the decoder profile, command times."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stages.tools.docs.tables import BASE, FAST, TIMES, csv, machine, mb, run_info, table


def _parity_row(par: pd.DataFrame, artifact: str, component: str, memory: str = "normal") -> pd.Series | None:
    p = par[
        (par["artifact"] == artifact)
        & (par["component"] == component)
        & (par["memory"].fillna("normal") == memory)
        & par["precision"].isin(["normal", "fp32"])
    ]
    return p.iloc[0] if not p.empty else None


def variants(root: Path, arg: str = "") -> str:
    """Each MNN convert variant: encoder + decoder size, accuracy at memory normal (and low where checked)."""
    conv, par = csv(root, FAST / "convert.csv"), csv(root, BASE / "parity.csv")
    rows = []
    for variant in conv["variant"].drop_duplicates():
        art = f"mnn-{variant}"
        size = mb(conv, "encoder", variant) + mb(conv, "decoder", variant)
        cells = []
        for memory in ("normal", "low"):
            enc, e2e = _parity_row(par, art, "encoder", memory), _parity_row(par, art, "e2e", memory)
            if enc is None or e2e is None:
                cells += ["", ""]
                continue
            passed = enc["pass"] == True and e2e["pass"] == True  # noqa: E712 (NaN: not passed)
            cells += [
                f"{enc['cosine']:.4f}",
                f"{e2e['mask_iou']:.4f} / {e2e['mean_mask_iou']:.4f} {'pass' if passed else 'below tier'}",
            ]
        rows.append([variant, f"{size:.1f}", *cells])
    return (
        table(
            [
                "variant",
                "MB (enc+dec)",
                "encoder cosine",
                "e2e mask IoU worst / mean",
                "memory low: encoder cosine",
                "memory low: e2e mask IoU",
            ],
            rows,
        )
        + f"\n\nSizes: `{FAST}/convert.csv`; accuracy: `{BASE}/parity.csv` (precision normal, 4 photos x 5"
        f" prompts, weights random-seed-0, {run_info(root, BASE)['date']}). Memory low on a weight-quantized"
        " file is MNN's dynamic int8; on a float file it computes what memory normal does and is not run."
    )


def int8(root: Path, arg: str = "") -> str:
    """Full int8 (quantize.variants) accuracy against PyTorch, from the committed baseline."""
    par = csv(root, BASE / "parity.csv")
    q = par[par["variant_kind"].eq("full-int8") | par["artifact"].str.startswith("ort-int8")]
    rows = []
    for (art, kernels), g in q.groupby(["artifact", q["int8_kernels"].fillna("-")], sort=False):
        by = {r["component"]: r for _, r in g.iterrows()}
        met = all(r["pass"] == True for r in by.values())  # noqa: E712
        rows.append(
            [
                f"`{art}`",
                kernels,
                f"{by['encoder']['cosine']:.4f}",
                f"{by['decoder']['mask_iou']:.3f}",
                f"{by['e2e']['mask_iou']:.3f} / {by['e2e']['mean_mask_iou']:.3f}",
                "yes" if met else "no",
                by["encoder"]["machine_class"],
            ]
        )
    return (
        table(
            [
                "artifact",
                "int8 kernels",
                "encoder cosine",
                "decoder mask IoU",
                "e2e mask IoU worst / mean",
                "target met",
                "machine class",
            ],
            rows,
        )
        + f"\n\nSource: `{BASE}/parity.csv` (weights random-seed-0; target: the `int8` tier of"
        " configs/models/vit_t.yaml, report-only)."
    )


def profile_decoder(root: Path, arg: str = "") -> str:
    """The decoder's per-op profile as the bench times it: wall and the top op types per artifact."""
    prof = csv(root, FAST / "profile.csv")
    dec = prof[prof["component"] == "decoder"]
    rows = []
    for art, g in dec.groupby("artifact", sort=False):
        top = g.sort_values("ms", ascending=False).head(int(arg or 6))
        ops = ", ".join(f"{r.op_type} {r.ms:.1f}" for r in top.itertuples())
        rows.append([art, g["runtime"].iloc[0], g["upsample"].iloc[0], f"{g['wall_ms'].iloc[0]:.1f}", ops])
    return (
        table(["artifact", "runtime", "upsample", "wall ms", "top op types (ms)"], rows)
        + f"\n\nWorkload {dec['workload'].iloc[0]}, {int(dec['threads'].iloc[0])} threads, {machine(dec)};"
        f" source: `{FAST}/profile.csv`. Walls move with the VM between processes: read the op rows."
    )


def _minutes(s: float) -> str:
    return f"{int(s) // 60} min {int(s) % 60} s"


def times(root: Path, arg: str = "") -> str:
    """Each command's latest measured time (the CSV keeps the earlier ones), with its date and machine."""
    t = csv(root, TIMES).drop_duplicates("command", keep="last")
    rows = [
        [f"`{r.command}`", f"{_minutes(r.seconds)} ({int(r.seconds)} s)", r.date, r.machine, r.notes]
        for r in t.itertuples()
    ]
    return table(["command", "took", "date", "machine", "what ran"], rows) + f"\n\nSource: `{TIMES}`."


def time(root: Path, arg: str) -> str:
    """One command's measured time as a sentence: what ran, how long, when and where."""
    t = csv(root, TIMES)
    r = t[t["command"] == arg].iloc[-1]  # the latest
    return (
        f"Measured: `{arg}` took {_minutes(r['seconds'])} ({int(r['seconds'])} s)"
        f" on {r['date']}, {r['machine']}"
        f" ({r['notes']}; `{TIMES}`)."
    )
