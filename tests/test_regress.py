"""Run comparison (`make compare`) on report tables: what is flagged and what is not. The A/B regression gate
is in test_regress_ab.py."""

from __future__ import annotations

import pandas as pd
import pytest

from stages.__main__ import main
from stages.tools.compare import BAD, compare_runs, load_regress_config, load_run

CFG = load_regress_config()


def _latency(enc_ms: float = 500.0, mnn_ms: float = 800.0, dec_ms: float = 40.0, matmul: float = 300.0) -> pd.DataFrame:
    rows = []
    for component, ref, mnn in (("encoder", enc_ms, mnn_ms), ("decoder", dec_ms, 2 * dec_ms)):
        for runtime, backend, artifact, precision, ms in (
            ("onnxruntime", "CPUExecutionProvider", "onnx-sim", "fp32", ref),
            ("mnn", "CPU", "mnn-fp32", "normal", mnn),
            ("mnn", "OpenCL", "mnn-fp32", "normal", None),
        ):
            rows.append({"component": component, "runtime": runtime, "backend": backend, "artifact": artifact,
                         "precision": precision, "threads": 2, "points": 1, "out_h": 1200, "out_w": 1800,
                         "p50_ms": ms, "matmul_gflops": matmul,
                         "status": "ok" if ms else "skipped: MNN backend OpenCL is not available"})
    return pd.DataFrame(rows)


def _parity(iou: float = 0.999, cos: float = 1.0, passed: bool = True) -> pd.DataFrame:
    return pd.DataFrame([
        {"artifact": "mnn-fp32", "precision": "normal", "component": "encoder", "cosine": cos, "rel_l2": 3e-4,
         "mask_iou": None, "pass": passed, "failed_checks": "" if passed else "cosine"},
        {"artifact": "mnn-fp32", "precision": "normal", "component": "e2e", "cosine": None, "rel_l2": None,
         "mask_iou": iou, "pass": True, "failed_checks": ""},
    ])


def _run(tmp_path, name, parity, latency):
    d = tmp_path / name
    d.mkdir()
    parity.to_csv(d / "parity.csv", index=False)
    latency.to_csv(d / "latency.csv", index=False)
    return load_run(str(d))


def _bad(df):
    return df[df["verdict"].isin(BAD)]


def test_identical_runs_pass(tmp_path):
    df = compare_runs(_run(tmp_path, "a", _parity(), _latency()), _run(tmp_path, "b", _parity(), _latency()), CFG)
    assert _bad(df).empty and (df["verdict"] == "same").all()


def test_a_slower_machine_is_not_a_regression(tmp_path):
    # everything 1.8x slower, the matmul rate 1.8x lower: ratios are unchanged
    slow = _latency(enc_ms=900, mnn_ms=1440, dec_ms=72, matmul=300 / 1.8)
    df = compare_runs(_run(tmp_path, "a", _parity(), _latency()), _run(tmp_path, "b", _parity(), slow), CFG)
    assert _bad(df).empty


def test_differences_within_the_factor_pass(tmp_path):
    df = compare_runs(_run(tmp_path, "a", _parity(), _latency()),
                      _run(tmp_path, "b", _parity(iou=0.995), _latency(mnn_ms=800 * 1.3)), CFG)
    assert _bad(df).empty


def test_slowdown_injected_into_one_cell_fails(tmp_path):
    df = compare_runs(_run(tmp_path, "a", _parity(), _latency()),
                      _run(tmp_path, "b", _parity(), _latency(mnn_ms=800 * 1.6)), CFG)
    bad = _bad(df)
    assert len(bad) == 1 and bad.iloc[0]["cell"].startswith("encoder/mnn/CPU/mnn-fp32") and bad.iloc[0]["verdict"] == "worse"


def test_slower_reference_is_caught_by_the_matmul_rate(tmp_path):
    df = compare_runs(_run(tmp_path, "a", _parity(), _latency()),
                      _run(tmp_path, "b", _parity(), _latency(enc_ms=1000, mnn_ms=1600)), CFG)
    bad = _bad(df)
    assert list(bad["cell"].str.split("/").str[1]) == ["onnxruntime"] and "matmul" in bad.iloc[0]["metric"]


def test_baseline_demanding_better_accuracy_fails(tmp_path):
    df = compare_runs(_run(tmp_path, "a", _parity(iou=1.0), _latency()),
                      _run(tmp_path, "b", _parity(iou=0.985), _latency()), CFG)
    bad = _bad(df)
    assert len(bad) == 1 and bad.iloc[0]["metric"] == "mask_iou" and bad.iloc[0]["allowed"] == ">= 0.99"


def test_drift_of_a_report_only_tier_is_said_but_not_a_regression(tmp_path):
    """Int8 cells (gate: false) differ between CPUs by more than the tolerance: reported as drift, not failed."""
    a, b = _parity(iou=1.0).assign(gate=False), _parity(iou=0.95).assign(gate=False)
    df = compare_runs(_run(tmp_path, "a", a, _latency()), _run(tmp_path, "b", b, _latency()), CFG)
    assert _bad(df).empty and "drift (report-only tier)" in set(df["verdict"])
    gating = compare_runs(_run(tmp_path, "c", a.assign(gate=True), _latency()),
                          _run(tmp_path, "d", b.assign(gate=True), _latency()), CFG)
    assert set(_bad(gating)["metric"]) == {"mask_iou"}


VNNI, AVX2 = "avx2 avx512f avx512_vnni", "avx2"


def _ort_int8(flags: str, iou: float, passed: bool) -> pd.DataFrame:
    return pd.DataFrame([{"artifact": "ort-int8-dynamic", "runtime": "onnxruntime", "precision": "fp32",
                          "component": "decoder", "int8_compute": "yes", "cpu_flags": flags, "mask_iou": iou,
                          "pass": passed, "failed_checks": "" if passed else "mask_iou", "gate": False}])


def test_int8_rows_on_other_int8_kernels_are_not_compared(tmp_path):
    """onnxruntime's int8 on a VNNI CPU and on a saturating-AVX2 one are different arithmetic (vit_t's
    decoder: IoU 0.96 vs 0.58): a baseline made on one says nothing about the other."""
    a, b = _ort_int8(VNNI, 0.96, True), _ort_int8(AVX2, 0.58, False)
    df = compare_runs(_run(tmp_path, "a", a, _latency()), _run(tmp_path, "b", b, _latency()), CFG)
    par = df[df["kind"] == "parity"]
    assert _bad(df).empty and list(par["verdict"]) == ["not comparable"]
    assert "x86-vnni" in par.iloc[0]["note"] and "x86-avx2-saturating" in par.iloc[0]["note"]
    # on the same kernels the flip is a regression again
    same = compare_runs(_run(tmp_path, "c", _ort_int8(AVX2, 0.9, True), _latency()),
                        _run(tmp_path, "d", b, _latency()), CFG)
    assert set(_bad(same)["verdict"]) == {"newly failing"}


def test_a_baseline_holds_one_row_per_int8_kernel_class(tmp_path):
    from stages.tools.cells import merge_baseline

    old = pd.concat([_parity(), _ort_int8(VNNI, 0.96, True)], ignore_index=True)
    new = pd.concat([_parity(iou=0.998), _ort_int8(AVX2, 0.58, False)], ignore_index=True)
    merged = merge_baseline(old, new)
    assert len(merged) == len(new) + 1  # the VNNI row stays beside this machine's AVX2 row; float rows replaced
    assert sorted(merged["cpu_flags"].dropna()) == [AVX2, VNNI] and (merged["mask_iou"] == 0.999).sum() == 0
    for flags, iou in ((VNNI, 0.955), (AVX2, 0.5)):  # each kind of machine is compared with its own row
        run = _run(tmp_path, f"r{iou}", pd.concat([_parity(iou=0.998), _ort_int8(flags, iou, iou > 0.9)]), _latency())
        df = compare_runs(_run(tmp_path, f"m{iou}", merged, _latency()), run, CFG)
        ort = df[df["cell"].str.startswith("ort-int8")]
        assert _bad(df).empty and "not comparable" not in set(df["verdict"]) and len(ort)
    again = merge_baseline(merged, new)  # refreshing on the same machine kind replaces its own row only
    assert len(again) == len(merged)
    rebuilt = new.assign(artifact_sha256="another file")  # the int8 file changed: the other kind's row goes
    assert len(merge_baseline(old.assign(artifact_sha256="old file"), rebuilt)) == len(new)


def test_newly_failing_and_missing_cells_are_reported(tmp_path):
    lat_b = _latency().iloc[1:]  # the encoder onnxruntime cell is gone
    df = compare_runs(_run(tmp_path, "a", _parity(), _latency()), _run(tmp_path, "b", _parity(passed=False), lat_b), CFG)
    verdicts = set(_bad(df)["verdict"])
    assert {"newly failing", "missing in b"} <= verdicts
    # the MNN encoder cell lost its reference: reported, not silently passed
    assert "not comparable" in set(df["verdict"])


def test_backends_side_by_side_from_one_run(tmp_path):
    _run(tmp_path, "r", _parity(), _latency())
    r = tmp_path / "r"
    a = load_run(f"{r}::runtime=onnxruntime,backend=CPUExecutionProvider,artifact=onnx-sim,precision=fp32")
    b = load_run(f"{r}::runtime=mnn,backend=CPU,artifact=mnn-fp32,precision=normal")
    lat = compare_runs(a, b, CFG).query("kind == 'latency'").set_index("cell")
    # the filtered columns drop out of the key: cells match by component, threads and workload
    assert set(lat.index) == {"encoder/default/2/1/1200/1800", "decoder/default/2/1/1200/1800"}
    assert lat.loc["encoder/default/2/1/1200/1800", "note"].startswith("x")


def test_compare_cli_writes_markdown_and_csv(tmp_path, capsys):
    _run(tmp_path, "a", _parity(), _latency())
    _run(tmp_path, "b", _parity(iou=0.9), _latency(mnn_ms=2000))
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--fail-on-regression"]) == 1
    md = (tmp_path / "cmp.md").read_text()
    assert "| ! |" in md and "worse" in md
    assert "Different machine classes" not in md  # rows without a machine class: nothing to say


def test_compare_says_when_machine_classes_differ(tmp_path, capsys):
    _run(tmp_path, "a", _parity(), _latency().assign(machine_class="amd-epyc_2c_avx2"))
    _run(tmp_path, "b", _parity(), _latency().assign(machine_class="intel-xeon_2c_avx2_avx512f"))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp.md").read_text()
    assert "Different machine classes (a: amd-epyc_2c_avx2; b: intel-xeon_2c_avx2_avx512f)" in md
    assert len(pd.read_csv(tmp_path / "cmp.csv")) > 0


@pytest.mark.parametrize("spec,match", [("nope", "is not a folder"), ])
def test_bad_run_spec(spec, match):
    from stages.core.errors import PipelineError

    with pytest.raises(PipelineError, match=match):
        load_run(spec)
