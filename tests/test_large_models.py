"""What vit_b/l/h need, on the tiny model: external weights (ONNX `.data`, MNN `.weight`) through every stage,
peak memory per stage, stage processes whose death (the OOM killer) fails one stage, model-sized configs."""

from __future__ import annotations

import signal

import onnx
import pandas as pd
import pytest

from conftest import copy_build, killing_worker, statuses, write_config
from stages.config import load_model_config, load_sweep
from stages.engine.lock import Lock
from stages.engine.run import run_pipeline


@pytest.fixture(scope="module")
def external_run(tmp_path_factory):
    """The tiny vit_t with every ONNX weight in `.onnx.data` and every MNN weight in `.mnn.weight`, as vit_h
    needs (its 2.5 GB of weights pass protobuf's and flatbuffers' 2 GB limit)."""
    tmp = tmp_path_factory.mktemp("external")
    cfg_path = write_config(tmp / "c.yaml", name="tiny_ext", **{
        "export.external_data_mb": 0, "convert.variants": {"fp32": [], "fp16": ["--fp16"]},
        "convert.extra_args": ["--saveExternalData"], "parity.images": ["chelsea"],
        "parity.mnn_precisions": {"fp32": ["normal"], "fp16": ["normal"]}, "profile.variants": ["fp32"],
        "quantize.variants": {}})  # full int8 is made for vit_t only
    root = tmp / "root"
    results = statuses(run_pipeline(load_model_config(str(cfg_path)), root))
    return root, cfg_path, results


def test_external_weights_go_through_every_stage(external_run):
    root, _, results = external_run
    assert set(results.values()) == {"ran"}, results
    onnx_dir, mnn_dir = root / "build" / "tiny_ext" / "onnx", root / "build" / "tiny_ext" / "mnn"
    for name in ("encoder.onnx", "encoder.sim.onnx", "decoder.onnx", "decoder.sim.onnx"):
        data = onnx_dir / f"{name}.data"
        assert data.stat().st_size > 5 * (onnx_dir / name).stat().st_size, name  # the weights are in .data
        inits = onnx.load(str(onnx_dir / name), load_external_data=False).graph.initializer
        # weights are external; tensors under 1 KB (shapes that shape inference must read) stay inline
        assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in inits if t.ByteSize() > 4096), name
    for name in ("encoder.fp32.mnn", "decoder.fp32.mnn", "encoder.fp16.mnn"):
        assert (mnn_dir / f"{name}.weight").stat().st_size > (mnn_dir / name).stat().st_size, name
    assert not list(onnx_dir.glob(".*")) and not list(mnn_dir.glob(".*"))  # no temp folders left
    # the reports count the side files and name them; MNN read them (parity passes, no NaN)
    conv = pd.read_csv(root / "reports" / "tiny_ext" / "convert.csv")
    assert (conv["status"] == "ok").all() and conv["external_data"].str.endswith(".weight").all()
    for r in conv.itertuples():
        files = root / r.path, root / f"{r.path}.weight"
        assert r.bytes == sum(f.stat().st_size for f in files)
    parity = pd.read_csv(root / "reports" / "tiny_ext" / "parity.csv")
    assert parity["pass"].all() and {"mnn-fp32", "mnn-fp16", "onnx", "onnx-sim"} <= set(parity["artifact"])


def test_changed_side_file_reruns_its_stage(external_run, tmp_path):
    root, cfg_path, _ = external_run
    root = copy_build(root, tmp_path / "root")  # the lock holds relative paths: the copy is up to date
    cfg = load_model_config(str(cfg_path))
    weight = root / "build" / "tiny_ext" / "mnn" / "encoder.fp32.mnn.weight"
    weight.unlink()  # the .mnn alone still loads (to NaN): the stage must see its artifact is not whole
    results = statuses(run_pipeline(cfg, root))
    assert results["convert"] == "ran" and results["export_encoder"] == "cached" and weight.exists(), results
    # the re-made model and weights are byte-identical (the converter's UUID is pinned): parity stays cached
    assert results["parity"] == "cached"


def test_every_stage_reports_its_peak_memory(external_run):
    root, _, _ = external_run
    runs = pd.read_csv(root / "reports" / "tiny_ext" / "runs.csv").set_index("stage")  # each stage's last run
    assert sorted(runs.index) == sorted(Lock(root / "build" / "tiny_ext", root).stages)
    for stage, run in runs.iterrows():
        report = root / "reports" / "tiny_ext" / ("latency.csv" if stage == "bench" else f"{stage}.csv")
        peak = pd.read_csv(report)["stage_peak_rss_mb"]
        assert peak.notna().all() and (peak > 100).all() and (peak < 8000).all(), stage  # MB: torch alone is >100
        assert run["peak_rss_mb"] == peak.iloc[0]
        tree = pd.read_csv(report)["stage_peak_tree_mb"]
        assert (tree > 100).all() and run["peak_tree_mb"] == tree.iloc[0], stage
        assert run["seconds"] > 0 and run["model"] == "tiny_ext", stage
    # the workers count: convert runs MNN's converter in children, its peak is theirs or its own
    assert runs.loc["convert", "peak_rss_mb"] > 100


def test_a_stage_process_killed_like_the_oom_killer_fails_that_stage_only(fp32_only):
    root, cfg_path = fp32_only
    cfg = load_model_config(str(cfg_path))
    (root / "build" / "tiny_fp32" / "mnn" / "encoder.fp32.mnn").unlink()  # convert has work to do
    # the parent of the converter's worker is the convert stage's own process
    with killing_worker(signal.SIGKILL, "mnnconvert", parent=True) as found:
        results = {r.stage: r for r in run_pipeline(cfg, root)}
    assert found
    assert results["convert"].status == "failed" and "SIGKILL" in results["convert"].detail
    assert "out-of-memory" in results["convert"].detail
    assert results["parity"].status == "skipped"
    assert (root / "build" / "tiny_fp32" / "onnx" / "encoder.sim.onnx").exists()  # earlier outputs are kept
    assert pd.read_csv(root / "reports" / "tiny_fp32" / "convert.csv")["status"].str.contains("SIGKILL").all()
    assert statuses(run_pipeline(cfg, root))["convert"] == "ran"  # and the next run resumes there


@pytest.mark.parametrize("model,sweep", [("vit_b", "large"), ("vit_l", "large"), ("vit_h", "huge")])
def test_big_models_get_model_sized_defaults(model, sweep):
    cfg = load_model_config(model)
    assert cfg.bench.sweep == sweep and cfg.profile.runs <= 2
    assert all(p == ["normal"] for p in cfg.parity.mnn_precisions.values())
    rule = load_sweep(sweep).timing
    assert rule.max_seconds <= 60 and rule.min_runs <= 3  # a stop rule by time, not by count
    # vit_h's fp32 encoder (2.5 GB) passes flatbuffers' 2 GB: MNN must write external weights
    assert ("--saveExternalData" in cfg.convert.extra_args) == (model == "vit_h")


def test_segment_runs_external_weight_models_and_names_a_missing_weight_file(external_run, tmp_path):
    import shutil

    import numpy as np

    from stages.core.errors import PipelineError
    from stages.sam.samples import load_images
    from stages.tools.segment import MnnSamPredictor

    mnn = external_run[0] / "build" / "tiny_ext" / "mnn"
    (_, image), = load_images(["chelsea"], external_run[0])
    predictor = MnnSamPredictor(mnn / "encoder.fp32.mnn", mnn / "decoder.fp32.mnn", threads=1)
    predictor.set_image(image)
    pred = predictor.predict(np.array([[200, 150]]), np.array([1]))
    assert pred.masks.shape[-2:] == image.shape[:2] and np.isfinite(pred.iou_predictions).all()
    alone = tmp_path / "encoder.fp32.mnn"
    shutil.copy(mnn / "encoder.fp32.mnn", alone)  # copied without its .weight file
    predictor = MnnSamPredictor(alone, mnn / "decoder.fp32.mnn", threads=1)
    with pytest.raises(PipelineError, match=r"NaN/Inf embeddings.*encoder.fp32.mnn.weight must sit beside it"):
        predictor.set_image(image)


def test_slimming_a_model_past_2gb_reads_shapes_from_disk(external_run, tmp_path):
    """vit_h's path through simplify (onnxslim cannot infer shapes of a >2 GB model in memory), run on the
    tiny encoder kept in external data: fewer nodes, same outputs on onnxruntime."""
    from stages.runtimes.onnx_io import op_counts, ort_outputs
    from stages.sam.spec import component_example
    from stages.simplify import compare, slim_large

    src = external_run[0] / "build" / "tiny_ext" / "onnx" / "encoder.onnx"
    model = slim_large(src, tmp_path)
    assert not list(src.parent.glob(".*"))  # its shape-inferred copy beside the source is gone
    out = tmp_path / "slim.onnx"
    onnx.save(model, str(out))
    raw = onnx.load(str(src), load_external_data=False)
    assert sum(op_counts(model).values()) < sum(op_counts(raw).values())
    feeds = component_example("encoder", 0)
    diff, problems = compare(ort_outputs(src, feeds), ort_outputs(out, feeds), 1e-4, 1e-4)
    assert not problems, problems
