"""MNN runs what the report says: backend, precision and memory reach MNN as the integers it reads, every row
says what arithmetic computed it, and a model given as the wrong component is named."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stages.config import load_sweep
from stages.core.errors import ConfigError, PipelineError
from stages.core.names import options_text, parse_options
from stages.runtimes import DEFAULT_UPSAMPLE, MnnRuntime, OrtRuntime, mnn_schedule
from stages.runtimes.settings import RunSettings
from stages.sam.spec import component_example
from stages.tools.segment import MnnSamPredictor


def _mnn(tiny_run, name: str):
    root, cfg, _ = tiny_run
    return root / "build" / cfg.name / "mnn" / name


def test_settings_are_the_integers_pymnn_reads():
    assert mnn_schedule("OpenCL", 2, "low", "low", "high") == {"backend": 3, "numThread": 2, "precision": 2,
                                                               "memory": 2, "power": 1}
    assert mnn_schedule("CPU", 1, "Low_BF16") == {"backend": 0, "numThread": 1, "precision": 3, "memory": 0,
                                                  "power": 0}
    with pytest.raises(PipelineError, match=r"MNN memory 'lowest' is not one of normal, high, low"):
        MnnRuntime("x.mnn", memory="lowest")


def test_memory_mode_reaches_mnn_on_a_weight_quantized_model(tiny_run):
    """memory low on a --weightQuantBits model is MNN's dynamic int8: other outputs than memory normal; the
    same setting twice gives the same outputs. Had the setting been dropped (a string, as before), all match."""
    feeds = component_example("encoder", 0)
    wint8 = _mnn(tiny_run, "encoder.wint8.mnn")
    normal = [MnnRuntime(wint8, memory="normal").run(feeds)["image_embeddings"] for _ in range(2)]
    low = [MnnRuntime(wint8, memory="low").run(feeds)["image_embeddings"] for _ in range(2)]
    np.testing.assert_array_equal(normal[0], normal[1])
    np.testing.assert_array_equal(low[0], low[1])
    assert not np.array_equal(normal[0], low[0])
    ref = OrtRuntime(tiny_run[0] / "build" / "tiny_vit_t" / "onnx" / "encoder.sim.onnx").run(feeds)["image_embeddings"]
    cos = float((low[0] * ref).sum() / np.linalg.norm(low[0]) / np.linalg.norm(ref))
    assert cos > 0.95  # int8 activations, still the same model


def test_a_gpu_backend_missing_from_the_wheel_is_mnns_cpu_fallback():
    why = MnnRuntime.unavailable("OpenCL")
    assert why == "MNN backend OpenCL is not in this MNN build (MNN falls back to the CPU)"
    assert MnnRuntime.unavailable("CPU") is None


@pytest.mark.parametrize("backend,precision,memory,kind,flags,fp16,int8", [
    ("CPU", "low", "normal", "float", set(), "no", "no"),                   # x86: no fp16 arithmetic
    ("CPU", "low", "normal", "float", {"asimd", "asimdhp"}, "yes", "no"),  # ARMv8.2 with FP16
    ("CPU", "normal", "normal", "float", {"asimdhp"}, "no", "no"),
    ("OpenCL", "normal", "normal", "float", set(), "yes", "no"),           # GPU backends: fp16 unless high
    ("OpenCL", "high", "normal", "float", set(), "no", "no"),
    ("CPU", "normal", "low", "weight-int8", set(), "no", "yes"),           # dynamic int8
    ("CPU", "normal", "normal", "weight-int8", set(), "no", "no"),         # weights expanded to float
    ("CPU", "normal", "normal", "full-int8", set(), "no", "yes"),
])
def test_rows_say_what_arithmetic_ran(backend, precision, memory, kind, flags, fp16, int8):
    got = MnnRuntime.arithmetic(backend, precision, {"memory": memory}, kind, flags)
    assert (got["fp16_compute"], got["int8_compute"]) == (fp16, int8), got["compute_note"]


def test_identical_settings_are_named():
    assert MnnRuntime.identical_to("low", {}, "float", "CPU", {"avx2"}).precision == "normal"
    assert MnnRuntime.identical_to("Low_BF16", {}, "float", "CPU", {"asimdhp"}).precision == "normal"  # needs SME2
    assert MnnRuntime.identical_to("low", {}, "float", "CPU", {"asimdhp"}) is None
    assert MnnRuntime.identical_to("low", {}, "float", "OpenCL", set()) is None
    # memory low: the same computation for a float model on x86, dynamic int8 for a weight-quantized one
    same = MnnRuntime.identical_to("normal", {"memory": "low", "rearrange": True}, "float", "CPU", {"avx2"})
    assert (same.precision, same.options) == ("normal", {"rearrange": True})
    assert same.timed_in(["normal"], {"default": {}, "fixed": {"rearrange": True}})
    assert not same.timed_in(["normal"], {"default": {}})
    assert MnnRuntime.identical_to("normal", {"memory": "low"}, "weight-int8", "CPU", {"avx2"}) is None
    assert MnnRuntime.identical_to("normal", {"memory": "low"}, "float", "CPU", {"asimdhp"}) is None  # ARM: not measured


def test_parity_rows_carry_the_compute_columns(tiny_run):
    df = pd.read_csv(tiny_run[0] / "reports" / "tiny_vit_t" / "parity.csv")
    assert df["fp16_compute"].isin(["yes", "no"]).all() and df["int8_compute"].isin(["yes", "no"]).all()
    by_cell = df.drop_duplicates("cell").set_index("cell")
    assert by_cell.loc["mnn-wint8@normal~memory-low", "int8_compute"] == "yes"
    assert by_cell.loc["mnn-wint8@normal~memory-low", "memory"] == "low"
    assert by_cell.loc["mnn-wint8@normal", "int8_compute"] == "no"
    assert "expanded to float" in by_cell.loc["mnn-wint8@normal", "compute_note"]
    assert by_cell.loc["mnn-int8@normal", "int8_compute"] == "yes"
    # memory low computes differently, so it is scored on its own (its numbers differ from memory normal's)
    enc = df[df["component"] == "encoder"].set_index("cell")
    assert enc.loc["mnn-wint8@normal~memory-low", "cosine"] != enc.loc["mnn-wint8@normal", "cosine"]


@pytest.mark.parametrize("swap", ["encoder", "decoder"])
def test_a_model_given_as_the_other_component_is_named(tiny_run, swap):
    enc, dec = _mnn(tiny_run, "encoder.fp32.mnn"), _mnn(tiny_run, "decoder.fp32.mnn")
    args = (dec, dec) if swap == "encoder" else (enc, enc)
    wrong = "decoder" if swap == "encoder" else "encoder"
    with pytest.raises(PipelineError, match=rf"{wrong}.fp32.mnn is not a SAM {swap}: it takes .* "
                                            rf"It looks like the {wrong}: pass it as --{wrong}"):
        MnnSamPredictor(*args, threads=1)


@pytest.mark.parametrize("spinning", [True, False])
def test_onnxruntime_spinning_reaches_its_session(tiny_run, spinning):
    rt = OrtRuntime(tiny_run[0] / "build" / "tiny_vit_t" / "onnx" / "decoder.sim.onnx", spinning=spinning)
    opts = rt.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")
    why = OrtRuntime.shares_process_why({"spinning": spinning})
    assert (why is None) if not spinning else ("intra-op threads spin" in why)
    assert OrtRuntime.shares_process_why({}) == OrtRuntime.shares_process_why({"spinning": True})  # the default


def test_mnn_hints_and_session_modes_are_set_and_named(tiny_run, tmp_path):
    """A sweep mode's `hints` / `session_mode` go to MNN's runtime manager (set_hint / set_mode, by MNN's names)
    before the module loads, and the model's settings say so; Session_Release changes no arithmetic (the outputs
    are the defaults', bit for bit). A name MNN does not have, or a value of the wrong type, is refused by name."""
    dec = _mnn(tiny_run, "decoder.fp32.mnn")
    feeds = component_example("decoder", 0)
    base = MnnRuntime(dec, component="decoder").run(feeds)
    rt = MnnRuntime(dec, component="decoder", hints={"WINOGRAD_MEMORY_LEVEL": 0}, session_mode="Session_Release")
    assert rt.settings["hints"] == {"WINOGRAD_MEMORY_LEVEL": 0} and rt.settings["session_mode"] == "Session_Release"
    out = rt.run(feeds)
    for name, value in base.items():
        np.testing.assert_array_equal(value, out[name])
    for kwargs, match in [({"hints": {"WINOGRAD": 0}}, r"'WINOGRAD' is not an MNN hint .*WINOGRAD_MEMORY_LEVEL"),
                          ({"hints": {"CPU_CORE_IDS": "0,1"}}, "CPU_CORE_IDS: expected an integer or a list"),
                          ({"session_mode": "fast"}, "session_mode 'fast' is not one of Session_Release")]:
        with pytest.raises(PipelineError, match=match):
            MnnRuntime(dec, **kwargs)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(json.dumps({"runtimes": {"mnn": {"backends": ["CPU"], "variants": ["fp32"], "precisions": ["normal"],
                                                      "modes": {"geo": {"hints": {"GEOMETRY": 0}}}}}}))
    with pytest.raises(ConfigError, match=r"runtimes\.mnn\.modes\.geo\.hints: 'GEOMETRY' is not an MNN hint"):
        load_sweep(str(sweep))
    opts = {"hints": {"CPU_CORE_IDS": [0, 1]}, "memory": "low", "rearrange": True}
    assert options_text(opts) == 'hints={"CPU_CORE_IDS":[0,1]} memory=low rearrange=True'  # one word per option
    assert parse_options(options_text(opts)) == opts  # what segment reads back from recommended.csv
    assert parse_options("memory= rearrange=False") == {"memory": "", "rearrange": False}


def test_run_settings_are_one_value_from_sweep_to_runner():
    """A cell's RunSettings travel as one JSON form (host -> child -> runtime); the MNN runner gets the same
    settings with the decoder's upsample default (DEFAULT_UPSAMPLE, defined once) and none for the encoder."""
    rs = RunSettings("mnn", "CPU", "low", 2, {"memory": "low", "hints": {"CPU_CORE_IDS": [0, 1]}})
    assert RunSettings.from_json(json.loads(json.dumps(rs.to_json()))) == rs
    assert rs.load_kwargs() == {"threads": 2, "precision": "low", "backend": "CPU", "memory": "low",
                                "hints": {"CPU_CORE_IDS": [0, 1]}}
    assert rs.runner_settings("decoder")["upsample"] == DEFAULT_UPSAMPLE == rs.masks_made("decoder")
    assert "upsample" not in rs.runner_settings("encoder") and rs.masks_made("encoder") == ""
    graph = RunSettings("mnn", "CPU", "normal", 1, {"upsample": "graph"})
    assert graph.runner_settings("decoder")["upsample"] == "graph"
    assert RunSettings("onnxruntime", "CPUExecutionProvider", "fp32", 1).masks_made("e2e") == "graph"
