"""The latency sweep: statistics, the stop rule, honest skipped and failed cells, threads reaching runtimes,
and the summary a person reads."""

from __future__ import annotations

import json
import signal

import numpy as np
import pandas as pd
import pytest

from conftest import copy_build, killing_worker, statuses, write_config
from stages.config import load_model_config, load_sweep
from stages.core.errors import ConfigError
from stages.engine.run import run_pipeline
from stages.ondevice.timing import StopRule, measure, summarize
from stages.report.choose import pareto_points


class FakeClock:
    def __init__(self, step: float):
        self.now, self.step, self.calls = 0.0, step, 0

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.calls += 1
        self.now += self.step


def test_statistics_on_known_samples():
    s = summarize([0.001, 0.002, 0.003, 0.004])
    assert s["runs"] == 4
    assert s["p50_ms"] == pytest.approx(2.5) and s["mean_ms"] == pytest.approx(2.5)
    assert s["p90_ms"] == pytest.approx(3.7) and s["p99_ms"] == pytest.approx(3.97)
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(4.0)
    assert s["stdev_ms"] == pytest.approx(1.2909944) and s["cv_pct"] == pytest.approx(51.639778)
    assert summarize([0.005])["stdev_ms"] == 0.0


def test_stop_rule_needs_both_count_and_time():
    clock = FakeClock(0.1)
    t = measure(clock.work, StopRule(warmup=2, min_runs=3, min_seconds=1.0, max_seconds=60), clock)
    assert len(t.samples_s) == 10 and t.valid  # time decides: 10 x 0.1 s
    assert clock.calls == 1 + 1 + 10  # first run, one more warm-up, samples
    assert t.first_run_s == pytest.approx(0.1)
    clock = FakeClock(1.0)
    t = measure(clock.work, StopRule(warmup=0, min_runs=5, min_seconds=0.5, max_seconds=60), clock)
    assert len(t.samples_s) == 5  # count decides
    clock = FakeClock(1.0)
    t = measure(clock.work, StopRule(warmup=1, min_runs=10, min_seconds=0, max_seconds=3), clock)
    assert len(t.samples_s) == 3 and not t.valid  # max_seconds cut it short


@pytest.mark.parametrize("edit,match", [
    ({"runtimes": {"mnn": {"backends": ["OpenCLL"], "variants": ["fp32"], "precisions": ["normal"]}}}, "OpenCLL"),
    ({"runtimes": {"mnn": {"backends": ["CPU"], "variants": ["fp32"], "precisions": ["fast"]}}}, "'fast' is not one of normal"),
    ({"runtimes": {"tensorrt": {"backends": ["gpu"], "variants": ["fp32"]}}}, "runtimes: 'tensorrt' is not one of"),
    ({"threads": [0, 2]}, "thread count must be >= 1"),
    ({"threads": [-1]}, "thread count must be >= 1"),
    ({"timing": {"min_runs": 0}}, "min_runs >= 1"),
])
def test_bad_sweeps_are_named(tmp_path, edit, match):
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(edit))  # JSON is YAML
    with pytest.raises(ConfigError, match=match) as e:
        load_sweep(str(path))
    assert str(path) in str(e.value)


def test_auto_threads_go_up_to_the_cores(monkeypatch):
    import os

    sweep = load_sweep("default")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert sweep.thread_counts() == [1, 2, 4, 6]


@pytest.fixture(scope="module")
def tiny_latency(tiny_run, tmp_path_factory):
    """The session's tiny build, copied, with the bench stage re-run on the test sweep (nothing else re-runs)."""
    tmp = tmp_path_factory.mktemp("bench")
    root = copy_build(tiny_run[0], tmp / "root")
    cfg = load_model_config(str(write_config(tmp / "tiny_vit_t.yaml", **{"bench.sweep": "tests/configs/sweep_tiny.yaml"})))
    results = statuses(run_pipeline(cfg, root, targets=["bench", "report"]))
    return root, pd.read_csv(root / "reports" / cfg.name / "latency.csv"), results


def test_sweep_rows_cover_the_grid_with_honest_skips(tiny_latency):
    _, df, results = tiny_latency
    assert results["bench"] == "ran" and results["report"] == "ran"
    assert {s for s, v in results.items() if v == "ran"} == {"bench", "report"}  # the copied build was reused
    # 3 components (the decoder has 2 workloads) x 3 runtimes here x 2 thread counts timed; each absent backend is
    # one row for its 6 cells (3 components x 2 thread counts), not one per cell and workload
    skipped = df[df["status"].str.startswith("skipped")]
    assert sorted(skipped["backend"]) == ["CUDA", "CUDAExecutionProvider", "OpenCL"]
    assert (skipped["cells"] == 6).all() and (skipped["threads"] == 0).all()
    assert (skipped["component"] == "encoder decoder e2e").all()
    assert skipped[skipped["backend"] == "CUDA"]["status"].str.contains("falls back to the CPU").all()
    assert skipped["p50_ms"].isna().all()  # never a number from another backend
    ok = df[df["status"] == "ok"]
    assert len(ok) == (1 + 2 + 1) * 3 * 2 and len(df) == len(ok) + 3
    assert ok["stopped_by"].isin(["runs", "ci", "budget"]).all() and ok["ci95_pct"].notna().all()
    for col in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "cv_pct", "min_ms", "first_run_ms",
                "load_s", "peak_rss_mb", "matmul_gflops", "roofline_frac", "gflop"):
        assert pd.api.types.is_numeric_dtype(df[col]) and ok[col].notna().all(), col
    assert (ok["p50_ms"] >= ok["min_ms"]).all() and (ok["p90_ms"] >= ok["p50_ms"]).all()
    assert (ok["runs"] >= 2).all()
    assert (df["weights"] == "random-seed-0").all() and df["cpu"].notna().all() and df["mnn_version"].notna().all()
    torch_rows = ok[ok["runtime"] == "torch"]
    assert (torch_rows["speedup_vs_torch"] == 1.0).all()


def test_thread_count_reaches_every_runtime(tiny_latency):
    _, df, _ = tiny_latency
    ok = df[df["status"] == "ok"]
    for runtime, g in ok.groupby("runtime"):
        by_threads = g.groupby("threads")["os_threads"].max()
        assert by_threads[2] > by_threads[1], runtime
    rates = ok.groupby("threads")["matmul_gflops"].first()
    assert rates[1] > 0 and rates[2] > 0


def test_summary_and_plots_are_written(tiny_latency):
    root, _, _ = tiny_latency
    reports = root / "reports" / "tiny_vit_t"
    text = (reports / "summary.md").read_text()
    assert "random-seed-0" in text
    for runtime in ("torch", "onnxruntime", "mnn"):
        assert f"| {runtime} |" in text
    assert "skipped: MNN backend CUDA" in text
    assert "**What computed these numbers.**" in text and "MNN variants: size, accuracy, speed" in text
    for png in ("latency_vs_threads.png", "accuracy_vs_latency.png", "size_accuracy_latency.png"):
        data = (reports / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_pareto_front_marks_dominated_points():
    rows = [("torch", "torch", "fp32", 100.0), ("onnxruntime", "onnx-sim", "fp32", 40.0),
            ("mnn", "mnn-fp32", "normal", 60.0), ("mnn", "mnn-wint8", "normal", 30.0)]
    lat = pd.DataFrame([{"status": "ok", "component": "e2e", "threads": 2, "runtime": r, "artifact": a,
                         "precision": p, "p50_ms": ms, "points": 1, "out_h": 10, "out_w": 10} for r, a, p, ms in rows])
    parity = pd.DataFrame([{"artifact": "onnx-sim", "precision": "fp32", "component": "e2e", "mask_iou": 0.999},
                           {"artifact": "mnn-fp32", "precision": "normal", "component": "e2e", "mask_iou": 0.995},
                           {"artifact": "mnn-wint8", "precision": "normal", "component": "e2e", "mask_iou": 0.9}])
    front = pareto_points(lat, parity, "e2e").set_index("label")["pareto"].to_dict()
    assert front == {"mnn-wint8@normal": True, "onnx-sim@fp32": True, "mnn-fp32@normal": False, "torch@fp32": True}


def test_crashing_cell_is_a_failed_row_and_the_sweep_goes_on(fp32_only, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(json.dumps({"components": ["decoder"], "decoder": {"points": [1], "out_sizes": [[64, 64]]},
                                       "runtimes": {"mnn": {"backends": ["CPU"], "variants": ["fp32"], "precisions": ["normal", "high"]}},
                                       "threads": [1], "timing": {"warmup": 1, "min_runs": 20, "min_seconds": 1.0, "max_seconds": 5},
                                       "roofline": {"matmul_n": 128, "min_seconds": 0.01}}))
    root, cfg_path = fp32_only
    cfg = load_model_config(str(write_config(cfg_path, base=cfg_path, **{"bench.sweep": str(sweep)})))
    with killing_worker(signal.SIGKILL, "bench") as found:
        results = statuses(run_pipeline(cfg, root, targets=["bench"]))
    assert found and results["bench"] == "failed"
    assert {s for s, v in results.items() if v != "cached"} == {"bench"}
    df = pd.read_csv(root / "reports" / "tiny_fp32" / "latency.csv")
    assert len(df) == 2
    assert df.iloc[0]["status"].startswith("failed") and "SIGKILL" in df.iloc[0]["status"]
    assert df.iloc[1]["status"] == "ok" and df.iloc[1]["p50_ms"] > 0


def test_all_variants_follow_the_model_config():
    from stages.bench.cells import expand_variants, grid

    assert expand_variants("mnn", ["all"], {"fp32": [], "fp32-fuse": ["--transformerFuse"]}) == ["fp32", "fp32-fuse"]
    assert expand_variants("onnxruntime", ["all"], {"fp32": []}) == ["onnx", "onnx-sim"]
    assert expand_variants("mnn", ["fp16", "all"], {"fp32": [], "fp16": []}) == ["fp16", "fp32"]
    cells = grid(load_sweep("default"), {"fp32": [], "fp16": [], "wint8": [], "fp32-opt": []})
    mnn = {c.artifact for c in cells if c.runtime == "mnn"}
    assert mnn == {"mnn-fp32", "mnn-fp16", "mnn-wint8", "mnn-fp32-opt"}


def test_labels_of_close_pareto_points_do_not_overprint():
    import matplotlib.pyplot as plt

    from stages.report.plots import label_points

    pts = pd.DataFrame({"p50_ms": [35000.0, 35470.0, 35490.0, 60000.0], "accuracy": [0.981, 0.9995, 0.9996, 1.0],
                        "label": ["mnn-wint8@normal", "mnn-fp16@normal", "mnn-fp32@normal", "torch@fp32"]})
    fig, ax = plt.subplots()
    ax.scatter(pts["p50_ms"], pts["accuracy"])
    label_points(ax, pts)
    offsets = {t.get_text(): t.xyann for t in ax.texts}
    plt.close(fig)
    assert set(offsets) == set(pts["label"])
    assert offsets["mnn-fp16@normal"] != offsets["mnn-fp32@normal"]  # nearly the same place: one moves
    assert offsets["torch@fp32"] == (4, -10)  # a lone point keeps the default place


def test_speedups_and_rooflines_compare_like_devices():
    """GPU rows against torch cuda, CPU rows against torch cpu: a CUDA reference timed later must not become
    every CPU row's reference (it did: keyed by component, workload and threads only)."""
    from stages.bench import _speedups
    from stages.runtimes import RUNTIMES

    def row(runtime, backend, ms):
        return {"component": "encoder", "points": 0, "out_h": 1024, "out_w": 1024, "threads": 2, "status": "ok",
                "runtime": runtime, "backend": backend, "p50_ms": ms, "device": RUNTIMES[runtime].device(backend)}

    rows = [row("torch", "cpu", 1000.0), row("onnxruntime", "CPUExecutionProvider", 500.0),
            row("torch", "cuda", 20.0), row("onnxruntime", "CUDAExecutionProvider", 10.0), row("mnn", "OpenCL", 40.0)]
    _speedups(rows)
    assert [r["speedup_vs_torch"] for r in rows] == [1.0, 2.0, 1.0, 2.0, 0.5]
    assert [r["device"] for r in rows] == ["cpu", "cpu", "gpu", "gpu", "gpu"]
    assert RUNTIMES["onnxruntime"].device("DnnlExecutionProvider") == "cpu"  # a CPU provider stays CPU


def test_processes_pool_the_runs_of_fresh_processes(fp32_only, tmp_path):
    """`processes: 3`: each cell is timed in 3 fresh processes; its row pools their runs (p50 over all) and
    lists each process's own p50; latency_samples.csv holds every pooled run."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(json.dumps({"components": ["decoder"], "decoder": {"points": [1], "out_sizes": [[64, 64]]},
                                 "runtimes": {"mnn": {"backends": ["CPU"], "variants": ["fp32"], "precisions": ["normal"]}},
                                 "threads": [1], "processes": 3,
                                 "timing": {"warmup": 1, "min_runs": 4, "min_seconds": 0.0, "max_seconds": 5},
                                 "roofline": {"matmul_n": 128, "min_seconds": 0.01}}))
    root, cfg_path = fp32_only
    cfg = load_model_config(str(write_config(cfg_path, base=cfg_path, **{"bench.sweep": str(sweep)})))
    assert statuses(run_pipeline(cfg, root, targets=["bench"]))["bench"] == "ran"
    (row,) = pd.read_csv(root / "reports" / "tiny_fp32" / "latency.csv").to_dict("records")
    each = [float(x) for x in str(row["process_p50_ms"]).split()]
    assert row["processes"] == 3 and len(each) == 3 and row["status"] == "ok"
    samples = pd.read_csv(root / "reports" / "tiny_fp32" / "latency_samples.csv")
    assert len(samples) == row["runs"] >= 3 * 4
    assert row["p50_ms"] == pytest.approx(float(np.median(samples["ms"])), rel=1e-6)
    assert min(each) <= row["p50_ms"] <= max(each)
