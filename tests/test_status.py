"""Typed status (stages/core/status.py) and artifact names (stages/core/names.py): one place each, written to the
CSVs as the strings they always held."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from stages.core.names import FLOAT_ARTIFACT, artifact_name, artifact_paths, file_artifact, mnn_file
from stages.core.status import FAILED, OK, SKIPPED, Status, has_kind, is_failed, is_ok, is_skipped, kind_of
from stages.runtimes import RUNTIMES, identical_skip


@pytest.mark.parametrize("status, text", [
    (Status.ok(), "ok"),
    (Status.ok("fewer runs than min_runs"), "ok: fewer runs than min_runs"),
    (Status.skipped("build/x/mnn/encoder.fp32.mnn missing"), "skipped: build/x/mnn/encoder.fp32.mnn missing"),
    (Status.failed(RuntimeError("exit code -11 (SIGSEGV)")), "failed: exit code -11 (SIGSEGV)"),
])
def test_str_and_parse_round_trip(status, text):
    assert str(status) == text
    assert Status.parse(text) == status and Status.read(text) == status
    assert Status.parse(str(status)) == status


def test_predicates():
    assert Status.ok().is_ok and not Status.ok().is_skipped and not Status.ok().is_failed
    assert Status.skipped("x").is_skipped and Status.failed("x").is_failed
    assert (is_ok("ok: note"), is_skipped("skipped: x"), is_failed("failed: y")) == (True, True, True)
    assert kind_of("failed: y") == FAILED and kind_of("ok") == OK and kind_of("skipped: z") == SKIPPED


def test_old_and_odd_strings():
    # what older versions wrote, and what a reason may hold (colons, a reason without the space)
    assert Status.parse("failed: exit code 1: see build/logs/x.log").reason == "exit code 1: see build/logs/x.log"
    assert Status.parse("skipped:no space") == Status.skipped("no space")
    assert Status.parse("skipped") == Status.skipped("")
    # no status: regress's "absent", an empty CSV cell; none of the three (as the startswith tests were)
    for text in ("absent", "nan", float("nan"), None, ""):
        assert Status.read(text) is None and kind_of(text) is None
        assert not (is_ok(text) or is_skipped(text) or is_failed(text))
    with pytest.raises(ValueError, match="not a status"):
        Status.parse("absent")
    with pytest.raises(ValueError):
        Status("done")


def test_has_kind_on_a_csv_column():
    col = pd.Series(["ok", "ok: fewer runs than min_runs", "skipped: x", "failed: y", float("nan")], index=[5, 6, 7, 8, 9])
    assert has_kind(col, OK).tolist() == [True, True, False, False, False]
    assert has_kind(col, SKIPPED).tolist() == [False, False, True, False, False]
    assert list(has_kind(col, FAILED).index) == [5, 6, 7, 8, 9]
    assert has_kind(pd.Series([], dtype=object), OK).empty


def test_identical_skip_reads_the_status():
    assert identical_skip("skipped: precision low computes exactly what precision normal does here")
    assert not identical_skip("skipped: build/x missing") and not identical_skip("ok")


def test_artifact_names():
    assert [artifact_name(r, v) for r, v in (("torch", "fp32"), ("onnxruntime", "onnx-sim"), ("mnn", "fp16"),
                                              ("mnn", "int8"), ("onnxruntime", "ort-int8-static"))] \
        == ["torch", "onnx-sim", "mnn-fp16", "mnn-int8", "ort-int8-static"]
    assert FLOAT_ARTIFACT == {"mnn": "mnn-fp32", "onnxruntime": "onnx-sim"}
    b = Path("build/m")
    assert file_artifact(b / "onnx" / "encoder.onnx", "encoder") == "onnx"
    assert file_artifact(b / "onnx" / "encoder.sim.onnx", "encoder") == "onnx-sim"
    assert file_artifact(b / "mnn" / mnn_file("decoder", "wint8"), "decoder") == "mnn-wint8"
    assert file_artifact(b / "int8" / "encoder.int8.mnn", "encoder") == "mnn-int8"
    assert file_artifact(b / "int8" / "encoder.ort-int8-static.onnx", "encoder") == "ort-int8-static"
    assert file_artifact(b / "onnx" / "encoder.sim.onnx", "decoder") is None
    assert file_artifact(Path("configs/sweeps/quick.yaml"), "encoder") is None


def test_artifact_paths_from_deps():
    b = Path("build/m")

    def cell(comp, variant, quant=None):
        deps = [b / "onnx" / f"{comp}.onnx", b / "onnx" / f"{comp}.sim.onnx", b / "mnn" / mnn_file(comp, variant)]
        if quant:
            deps.append(b / "int8" / f"{comp}.{quant}.mnn")
        deps.append(Path("configs/sweeps/quick.yaml"))
        return SimpleNamespace(values={"component": comp, "variant": variant, **({"quant": quant} if quant else {})},
                               deps=deps)

    cells = [cell(c, v, "int8") for c in ("encoder", "decoder") for v in ("fp32", "fp16")]
    paths = artifact_paths(cells, {"int8": SimpleNamespace(runtime="mnn")})
    assert set(paths) == {"onnx", "onnx-sim", "mnn-fp32", "mnn-fp16", "mnn-int8"}
    assert paths["mnn-fp16"]["decoder"] == b / "mnn" / "decoder.fp16.mnn"
    assert paths["mnn-int8"]["encoder"] == b / "int8" / "encoder.int8.mnn"
    assert "mnn-int8" not in artifact_paths(cells)  # no quantize.variants given: the int8 files are not named


def test_runtime_rules_are_attributes():
    assert {n: r.cpu_backend for n, r in RUNTIMES.items()} == {"torch": "cpu", "onnxruntime": "CPUExecutionProvider",
                                                                "mnn": "CPU"}
    assert RUNTIMES["onnxruntime"].parity_precision("fp16") == "fp32"
    assert RUNTIMES["mnn"].parity_precision("low") == "low"
