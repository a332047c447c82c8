"""Same-process A/B comparisons (sweep `paired`): the statistics on known samples, and a real comparison on the
tiny build, measured and reported with its provenance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import copy_build, statuses, write_config
from stages.config import load_model_config, load_sweep
from stages.core.ab import compare_calls
from stages.core.errors import ConfigError
from stages.engine.run import run_pipeline


def test_verdicts_need_the_sign_test_and_every_process():
    rng = np.random.default_rng(0)
    a = [list(rng.uniform(40, 80, 30)) for _ in range(3)]  # processes of very different speeds
    faster = compare_calls(a, [[x * 0.96 for x in p] for p in a])
    assert faster["verdict"] == "b faster" and faster["b_faster_pairs"] == faster["pairs"] == 90 and faster["ties"] == 0
    assert faster["ratio_b_a"] == pytest.approx(0.96) and faster["p_value"] < 1e-20
    assert faster["processes"] == 3 and faster["calls"] == 30 and len(faster["process_ratios"].split()) == 3
    assert compare_calls(a, [[x * 1.05 for x in p] for p in a])["verdict"] == "b slower"
    noise = compare_calls(a, [list(np.array(p) * rng.uniform(0.9, 1.1, 30)) for p in a])
    assert noise["verdict"] == "no difference shown" and 0.9 < noise["ratio_b_a"] < 1.1
    # pooled, b is faster in 60 of 90 pairs (p < 0.01), but one process says the opposite: not a verdict
    mixed = compare_calls(a, [[x * 0.9 for x in a[0]], [x * 0.9 for x in a[1]], [x * 1.1 for x in a[2]]])
    assert mixed["p_value"] < 0.01 and mixed["verdict"] == "no difference shown"
    tied = compare_calls([[10.0] * 4], [[10.0] * 4])  # all ties: nothing to test
    assert tied["ties"] == 4 and tied["p_value"] == 1.0 and tied["verdict"] == "no difference shown"
    assert tied["ratio_p25"] == tied["ratio_p75"] == 1.0


def test_bad_paired_entries_are_named(tmp_path):
    base = {"runtimes": {"mnn": {"backends": ["CPU"], "variants": ["fp32"], "precisions": ["normal"]}}}
    for paired, match in [({"component": "decoder", "runtime": "onnxruntime", "a": "x", "b": "y"},
                           r"paired\[0\]\.runtime: 'onnxruntime' is not one of mnn"),
                          ({"component": "decoder", "runtime": "mnn", "a": "fp32", "b": "fp32"}, "a and b must differ"),
                          ({"component": "decoder", "runtime": "mnn", "a": "fp32", "b": "fp16", "calls": 5},
                           "calls be even"),
                          ({"component": "decoder", "runtime": "mnn", "a": "fp32", "b": "fp16", "mode": "fast"},
                           r"paired\[0\]\.mode: 'fast' is not one of default"),
                          ({"component": "decoder", "runtime": "mnn", "a": "fp32", "b": "onnx-sim",
                            "b_runtime": "onnxruntime"}, r"paired\[0\]\.b_runtime: 'onnxruntime' is not one of mnn"),
                          # onnxruntime's spinning threads would take the cores from MNN's next call
                          ({"component": "decoder", "runtime": "mnn", "a": "fp32", "b": "onnx-sim",
                            "b_runtime": "onnxruntime", "b_mode": "default"},
                           r"paired\[0\]\.b_mode 'default' \(onnxruntime\): onnxruntime's intra-op threads spin")]:
        path = tmp_path / "sweep.yaml"
        runtimes = {**base["runtimes"], "onnxruntime": {"backends": ["CPUExecutionProvider"], "variants": ["onnx-sim"]}}
        path.write_text(json.dumps({"runtimes": runtimes if "spin" in match else base["runtimes"], "paired": [paired]}))
        with pytest.raises(ConfigError, match=match) as e:
            load_sweep(str(path))
        assert str(path) in str(e.value)


def _tiny_sweep(tmp_path, paired: list[dict]):
    """The tiny decoder's sweep (MNN fp32, onnxruntime with a no-spin mode) with `paired`, and its model config."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(json.dumps({
        "components": ["decoder"], "decoder": {"points": [1, 3], "out_sizes": [[300, 451]]},
        "runtimes": {"mnn": {"backends": ["CPU"], "variants": ["fp32"], "precisions": ["normal"]},
                     "onnxruntime": {"backends": ["CPUExecutionProvider"], "variants": ["onnx-sim"],
                                     "modes": {"default": {}, "no-spin": {"spinning": False}}}},
        "threads": [1], "processes": 2, "timing": {"warmup": 1, "min_runs": 2, "min_seconds": 0.0, "max_seconds": 5},
        "roofline": {"matmul_n": 128, "min_seconds": 0.01}, "paired": paired}))
    return sweep, load_model_config(str(write_config(tmp_path / "tiny_vit_t.yaml", **{"bench.sweep": str(sweep)})))


def test_a_paired_comparison_is_measured_and_reported(tiny_run, tmp_path):
    root = copy_build(tiny_run[0], tmp_path / "root")
    sweep, cfg = _tiny_sweep(tmp_path, [
        {"component": "decoder", "runtime": "mnn", "a": "fp32-lean", "b": "fp32-lean-t", "calls": 6},
        {"component": "decoder", "runtime": "mnn", "a": "fp32", "b": "no-such-variant", "calls": 6},
        {"component": "decoder", "runtime": "onnxruntime", "mode": "no-spin", "a": "onnx-sim", "b_runtime": "mnn",
         "b": "fp32-lean", "calls": 6}])
    assert statuses(run_pipeline(cfg, root, targets=["bench", "report"]))["bench"] == "ran"
    summary = (root / "reports" / cfg.name / "summary.md").read_text()
    assert "## Same-process A/B" in summary and "decoder/mnn: fp32-lean-t vs fp32-lean" in summary
    assert "## MNN against onnxruntime on this machine (" in summary  # from the mixed comparison only
    assert "- decoder: mnn fp32-lean vs onnxruntime onnx-sim~no-spin, 1 pt -> 300x451, 1 threads: b / a" in summary
    df = pd.read_csv(root / "reports" / cfg.name / "paired.csv")
    # MNN against onnxruntime on the same inputs, in one process: each side its own runtime and masks
    mixed = df[df["b_runtime"] == "mnn"]
    mixed = mixed[mixed["runtime"] == "onnxruntime"]
    assert len(mixed) == 2 and (mixed["status"] == "ok").all() and (mixed["pairs"] == 12).all()
    assert (mixed["comparison"] == "decoder: mnn fp32-lean vs onnxruntime onnx-sim~no-spin").all()
    assert (mixed["mode"] == "no-spin").all() and (mixed["b_mode"] == "default").all()
    assert (mixed["upsample"] == "graph fp32").all() and mixed["runtime_version"].str.contains(" ").all()
    ok, missing = df[df["b"] == "fp32-lean-t"], df[df["b"] == "no-such-variant"]
    assert len(ok) == 2 and sorted(ok["points"]) == [1, 3] and (ok["status"] == "ok").all()
    assert (ok["processes"] == 2).all() and (ok["calls"] == 6).all() and (ok["pairs"] == 12).all()
    assert ((ok["b_faster_pairs"] + ok["ties"]) <= ok["pairs"]).all()
    assert (ok["a_p50_ms"] > 0).all() and (ok["b_p50_ms"] > 0).all() and (ok["upsample"] == "fp32").all()
    assert ok["verdict"].isin(["b faster", "b slower", "no difference shown"]).all()
    assert ((ok["ratio_p25"] <= ok["ratio_b_a"]) & (ok["ratio_b_a"] <= ok["ratio_p75"])).all()
    assert (ok["weights"] == "random-seed-0").all() and ok["machine_class"].notna().all()
    assert ok["a_sha256"].iloc[0] != ok["b_sha256"].iloc[0]  # two different files were compared
    assert len(missing) == 2 and missing["status"].str.startswith("skipped: no artifact 'mnn-no-such-variant'").all()
    # only skipped comparisons: the CSV still has every column, and the report still writes its section
    data = json.loads(sweep.read_text())
    sweep.write_text(json.dumps({**data, "paired": data["paired"][1:2]}))
    assert statuses(run_pipeline(cfg, root, targets=["bench", "report"]))["report"] == "ran"
    df = pd.read_csv(root / "reports" / cfg.name / "paired.csv")
    assert len(df) == 2 and {"ratio_b_a", "p_value", "verdict"} <= set(df.columns) and df["verdict"].isna().all()
    assert "no-such-variant vs fp32" in (root / "reports" / cfg.name / "summary.md").read_text()


PLANT = '''import os, sys, time
sys.path.insert(0, {root!r})
from stages.runtimes import {cls} as _cls
_run = _cls.run
def _slow(self, feeds):
    time.sleep(0.02)  # planted: 20 ms more per call of this runtime (tiny decoder calls take about 1 ms)
    return _run(self, feeds)
_cls.run = _slow
'''


@pytest.mark.slow
@pytest.mark.parametrize("slowed, verdict", [("OrtRuntime", "b faster"), ("MnnRuntime", "b slower")])
def test_a_planted_slowdown_in_one_runtime_decides_the_mixed_pair(tiny_run, tmp_path, monkeypatch, slowed, verdict):
    """MNN (b) against onnxruntime (a) in one process: the runtime whose calls are slowed loses on every workload."""
    from conftest import ROOT_DIR

    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(PLANT.format(root=str(ROOT_DIR), cls=slowed))
    monkeypatch.setenv("PYTHONPATH", str(plant))  # the bench's timing processes start with it
    root = copy_build(tiny_run[0], tmp_path / "root")
    _, cfg = _tiny_sweep(tmp_path, [{"component": "decoder", "runtime": "onnxruntime", "mode": "no-spin",
                                     "a": "onnx-sim", "b_runtime": "mnn", "b": "fp32-lean", "calls": 12}])
    assert statuses(run_pipeline(cfg, root, targets=["bench"]))["bench"] == "ran"
    df = pd.read_csv(root / "reports" / cfg.name / "paired.csv")
    assert len(df) == 2 and (df["status"] == "ok").all(), df["status"].tolist()
    assert (df["verdict"] == verdict).all(), df[["ratio_b_a", "p_value", "process_ratios", "verdict"]]
