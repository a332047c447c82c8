"""The default sweep's rules: a cell timed until its median is known to +-3% (or its budget is spent), only the cells
whose artifact passes parity, a file identical to another variant's not timed twice, skipped cells one row per
reason."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest
from scipy import stats
from test_bench import FakeClock

from conftest import copy_build, statuses, write_config
from stages.bench.skips import Candidates, SameFiles, Skips
from stages.config import load_model_config, load_sweep
from stages.core.status import Status
from stages.engine.run import run_pipeline
from stages.ondevice.timing import StopRule, ci_halfwidth_pct, measure, median_ci


@pytest.mark.parametrize("n", [6, 7, 10, 11, 20, 31, 50, 101])
def test_median_interval_is_scipys_order_statistic_interval(n):
    values = sorted(random.Random(n).uniform(1, 2) for _ in range(n))
    # scipy's distribution-free interval of the 0.5 quantile (a different implementation of the same statistics)
    ci = stats.quantile_test(values, q=values[n // 2], p=0.5).confidence_interval(0.95)
    assert median_ci(values) == (ci.low, ci.high)


def test_too_few_values_bound_no_median():
    assert all(math.isnan(x) for x in median_ci([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert ci_halfwidth_pct([1.0] * 5) == math.inf
    assert ci_halfwidth_pct([1.0] * 6) == 0.0


def test_steady_runs_stop_once_the_median_is_known():
    clock = FakeClock(0.1)
    t = measure(clock.work, StopRule(warmup=1, min_runs=2, min_seconds=0, max_seconds=20, ci_pct=3), clock)
    assert t.stopped_by == "ci" and t.valid and len(t.samples_s) == 6  # 6: the fewest that bound a median at 95%


class NoisyClock(FakeClock):
    """Runs alternate 0.1 s and 0.2 s: the median's interval never narrows to +-3%."""

    def work(self) -> None:
        self.calls += 1
        self.now += 0.1 if self.calls % 2 else 0.2


def test_noisy_runs_stop_at_the_budget_and_say_so():
    clock = NoisyClock(0.1)
    t = measure(clock.work, StopRule(warmup=1, min_runs=6, min_seconds=0, max_seconds=3, ci_pct=3), clock)
    assert t.stopped_by == "budget" and t.valid and 3 <= sum(t.samples_s) < 3.3
    assert ci_halfwidth_pct(t.samples_s) > 3
    # without ci_pct the count and time decide, as before
    clock = NoisyClock(0.1)
    t = measure(clock.work, StopRule(warmup=1, min_runs=6, min_seconds=0, max_seconds=3), clock)
    assert t.stopped_by == "runs" and len(t.samples_s) == 6


def test_skipped_cells_collapse_to_one_row_per_reason():
    skips = Skips()
    base = {"target": "host", "runtime": "mnn", "backend": "OpenCL", "artifact": "mnn-fp32", "variant": "fp32",
            "precision": "normal", "mode": "default", "mode_options": "-"}
    for component in ("encoder", "decoder"):
        for threads in (1, 2):
            for variant in ("fp32", "fp16"):
                skips.add({**base, "component": component, "threads": threads, "variant": variant,
                           "artifact": f"mnn-{variant}", "cell": f"{component}/{variant}/t{threads}"},
                          Status.skipped("MNN backend OpenCL is not in this MNN build"))
    skips.add({**base, "backend": "CPU", "component": "encoder", "threads": 2, "cell": "encoder/x/t2"},
              Status.skipped("another reason"))
    rows = skips.rows()
    assert len(rows) == 2
    opencl, other = rows
    assert opencl["cells"] == 8 and opencl["threads"] == 0 and opencl["component"] == "encoder decoder"
    assert opencl["artifact"] == "mnn-fp32 mnn-fp16" and opencl["cell"] == "*/mnn-OpenCL/*@normal (8 cells, threads 1 2)"
    assert other["cells"] == 1 and other["threads"] == 2 and other["cell"] == "encoder/x/t2"


def _parity(tmp_path, rows):
    cols = ["artifact", "precision", "memory", "component", "pass", "failed_checks", "status"]
    path = tmp_path / "parity.csv"
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)
    return path


def test_candidates_are_the_cells_whose_artifact_passes(tmp_path):
    path = _parity(tmp_path, [
        ("mnn-fp32", "normal", "normal", "encoder", True, "", "ok"),
        ("mnn-fp32", "normal", "normal", "e2e", True, "", "ok"),
        ("mnn-int8", "normal", "normal", "encoder", True, "", "ok"),
        ("mnn-int8", "normal", "normal", "e2e", False, "e2e_mask_iou", "ok"),
        ("mnn-fp32", "low", "normal", "encoder", True, "", "skipped: precision low computes exactly what ..."),
        ("mnn-fp32", "low", "normal", "e2e", True, "", "skipped: precision low computes exactly what ..."),
    ])
    c = Candidates(path, "passing")
    assert c.why_not("mnn", "mnn-fp32", "normal", "normal", "encoder") is None
    why = c.why_not("mnn", "mnn-int8", "normal", "normal", "encoder")
    assert why.startswith("fails parity at memory normal (e2e: e2e_mask_iou)") and "candidates: all" in why
    # a memory mode parity did not check (full int8 at memory low) is judged by the artifact's memory normal rows
    assert c.why_not("mnn", "mnn-int8", "normal", "low", "encoder") == why
    assert c.why_not("mnn", "mnn-fp32", "low", "normal", "encoder") is None  # skipped as identical: no verdict
    assert c.why_not("mnn", "mnn-wint8", "normal", "normal", "encoder") is None  # parity has no row: timed
    assert c.why_not("torch", "mnn-int8", "normal", "normal", "encoder") is None  # the reference
    assert Candidates(path, "all").why_not("mnn", "mnn-int8", "normal", "normal", "encoder") is None
    assert Candidates(tmp_path / "absent.csv", "passing").why_not("mnn", "mnn-int8", "normal", "normal", "e2e") is None


def test_a_file_identical_to_an_earlier_variants_is_not_timed_twice():
    from stages.bench.cells import BenchCell

    same = SameFiles()
    a = BenchCell("encoder", "mnn", "CPU", "mnn-fp32", "fp32", "normal", 1)
    b = BenchCell("encoder", "mnn", "CPU", "mnn-fp32-lean", "fp32-lean", "normal", 1)
    b2 = BenchCell("encoder", "mnn", "CPU", "mnn-fp32-lean", "fp32-lean", "normal", 2)
    assert same.why_same(a, ("x",)) is None
    assert same.why_same(b, ("x",)) is None  # a is not timed yet (its timing may fail): b is timed
    same.add(a, ("x",))
    assert same.why_same(a, ("x",)) is None  # asked again: still itself
    assert "mnn-fp32-lean is the same file as mnn-fp32" in same.why_same(b, ("x",))
    assert same.why_same(b2, ("x",)) is None  # another thread count: its own cell
    assert same.why_same(BenchCell("encoder", "mnn", "CPU", "mnn-fp16", "fp16", "normal", 1), ("y",)) is None


def test_default_sweep_rules_on_the_tiny_build(tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("candidates")
    root = copy_build(tiny_run[0], tmp / "root")
    cfg = load_model_config(str(write_config(tmp / "tiny_vit_t.yaml",
                                             **{"bench.sweep": "tests/configs/sweep_candidates.yaml"})))
    assert statuses(run_pipeline(cfg, root, targets=["bench"]))["bench"] == "ran"
    df = pd.read_csv(root / "reports" / cfg.name / "latency.csv")
    parity = pd.read_csv(root / "reports" / cfg.name / "parity.csv")
    ok, skipped = df[df["status"].str.startswith("ok")], df[df["status"].str.startswith("skipped")]
    # the full-int8 artifacts fail their e2e target on the tiny model: not timed, one row per artifact
    e2e = parity[(parity["component"] == "e2e") & parity["precision"].isin(["normal", "fp32"])
                 & (parity["memory"] == "normal") & (parity["status"] == "ok")]
    failing = set(e2e[e2e["pass"] != True]["artifact"])  # noqa: E712
    assert {"mnn-int8", "ort-int8-static"} <= failing
    assert not set(ok["artifact"]) & failing
    for art in failing & {"mnn-int8", "ort-int8-static", "ort-int8-dynamic"}:
        row = skipped[(skipped["artifact"] == art) & skipped["status"].str.startswith("skipped: fails parity")]
        assert len(row) == 1 and row["cells"].iloc[0] == 4, art  # encoder and decoder at 1 and 2 threads
    # the encoder has no site for the decoder's rewrites: the same file as fp32, one row for both thread counts
    lean = skipped[skipped["artifact"] == "mnn-fp32-lean"]
    assert len(lean) == 1 and lean["component"].iloc[0] == "encoder" and lean["cells"].iloc[0] == 2
    assert "same file as mnn-fp32" in lean["status"].iloc[0]
    assert set(ok[ok["component"] == "decoder"]["artifact"]) >= {"mnn-fp32", "mnn-fp32-lean", "onnx-sim"}
    # precision low computes what normal does on x86, OpenCL and CUDA are absent: one row each
    assert len(skipped[skipped["backend"] == "OpenCL"]) == 1 and len(skipped[skipped["backend"] == "CUDAExecutionProvider"]) == 1
    assert skipped[skipped["precision"] == "low"]["status"].str.contains("computes exactly what").all()
    assert (skipped["cells"] >= 1).all() and skipped["cells"].sum() + len(ok) == len(load_grid(cfg))  # 1 workload each
    # fp16 and wint8 store fp32's weights in fewer bits: per component only the smaller passing file is timed
    files = root / "build" / cfg.name / "mnn"
    for component in ("encoder", "decoder"):
        twins = set(ok[ok["component"] == component]["artifact"]) & {"mnn-fp16", "mnn-wint8"}
        small = min(("fp16", "wint8"), key=lambda v: (files / f"{component}.{v}.mnn").stat().st_size)
        assert twins == {f"mnn-{small}"}, component
    assert skipped["status"].str.contains("stores mnn-fp32's weights in fewer bits").any()
    assert ok["stopped_by"].isin(["ci", "budget"]).all()  # ci_pct set: the interval or the budget stopped each
    assert ((ok["stopped_by"] == "ci") == (ok["ci95_pct"] <= 3)).all()


def load_grid(cfg):
    from stages.bench.cells import grid

    return grid(load_sweep(cfg.bench.sweep), cfg.convert.variants, cfg.quantize.variants)


def test_a_variant_that_only_stores_weights_in_fewer_bits_has_a_float_twin():
    cfg = load_model_config("vit_t")
    assert {v: cfg.float_twin(v) for v in ("fp16", "wint8", "wint4-b64-hqq", "fp32", "fp32-lean")} == \
        {"fp16": "fp32", "wint8": "fp32", "wint4-b64-hqq": "fp32", "fp32": None, "fp32-lean": None}


def test_a_twin_is_timed_only_when_it_is_the_smallest_passing_file(tmp_path):
    from stages.bench.cells import BenchCell

    (tmp_path / "big.mnn").write_bytes(b"x" * 100)
    (tmp_path / "small.mnn").write_bytes(b"x" * 10)
    (tmp_path / "tiny.mnn").write_bytes(b"x" * 1)
    rows = [(art, "normal", "normal", comp, ok, "" if ok else "cosine", "ok", path)
            for art, path, ok in (("mnn-fp32", "big.mnn", True), ("mnn-wint8", "small.mnn", True),
                                  ("mnn-fp16", "small.mnn", True), ("mnn-wint4", "tiny.mnn", False))
            for comp in ("encoder", "e2e")]
    path = tmp_path / "parity.csv"
    pd.DataFrame(rows, columns=["artifact", "precision", "memory", "component", "pass", "failed_checks", "status",
                                "artifact_path"]).to_csv(path, index=False)
    c = Candidates(path, "passing", tmp_path)
    assert c.smallest("encoder", "normal", "normal") in ("mnn-wint8", "mnn-fp16")  # wint4 fails: not the smallest
    wint8 = BenchCell("encoder", "mnn", "CPU", "mnn-wint8", "wint8", "normal", 1)
    fp16 = BenchCell("encoder", "mnn", "CPU", "mnn-fp16", "fp16", "normal", 1)
    whys = [c.why_twin(cell, "fp32", "normal") for cell in (wint8, fp16)]
    assert sorted(w is None for w in whys) == [False, True]  # the smallest timed, the other one not
    assert "runs mnn-fp32's graph with the same kernels" in next(w for w in whys if w)
    assert c.why_twin(wint8, "fp32", "low") is None  # memory low: dynamic int8, arithmetic of its own
    assert c.why_twin(wint8, None, "normal") is None and Candidates(path, "all").why_twin(wint8, "fp32", "normal") is None
