"""Fast-MNN switches: static-shape conversion, runtime modes in the sweep, the per-op profile, and the
recommended (fastest passing) variant that the MNN-only segment runtime loads by default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_same_decoder
from stages.bench.cells import grid
from stages.config import load_sweep
from stages.conversion.mnn import static_flags
from stages.core.errors import ConfigError
from stages.core.names import parse_options
from stages.report.choose import recommended
from stages.runtimes import MnnRuntime
from stages.runtimes.tasks import UPSAMPLE_OP
from stages.sam.spec import decoder_feeds
from stages.tools.segment import recommended_models


def _build(tiny_run) -> Path:
    root, cfg, _ = tiny_run
    return root / "build" / cfg.name


def test_static_flags_write_the_input_config_or_say_why_not(tiny_run, tmp_path):
    onnx_dir = _build(tiny_run) / "onnx"
    flags, static = static_flags(onnx_dir / "encoder.sim.onnx", ["--saveStaticModel", "--fp16"], tmp_path)
    assert static == "yes"
    conf = Path(flags[flags.index("--inputConfigFile") + 1]).read_text()
    assert "input_size = 1" in conf and "input_names = image" in conf and "input_dims = 1x3x1024x1024" in conf
    flags, static = static_flags(onnx_dir / "decoder.sim.onnx", ["--saveStaticModel", "--fp16"], tmp_path)
    assert flags == ["--fp16"]
    assert static.startswith("no: input point_coords has dynamic shape")
    assert static_flags(onnx_dir / "encoder.sim.onnx", ["--fp16"], tmp_path) == (["--fp16"], "no")


def _file_ops(model: Path, tmp: Path) -> int:
    """Ops in an MNN file, from the converter's JSON dump (MNN -> JSON), in a child process (native code)."""
    out = tmp / f"{model.stem}.json"
    code = ("import sys, _tools; _tools.mnnconvert(['mnnconvert', '-f', 'MNN', '--modelFile', sys.argv[1], "
            "'--JsonFile', sys.argv[2], '--bizCode', 'MNN'])")
    subprocess.run([sys.executable, "-c", code, str(model), str(out)], cwd=tmp, capture_output=True, timeout=300)
    return len(json.loads(out.read_text())["oplists"])


def test_static_encoder_has_fewer_ops_and_passes_parity(tiny_run, tmp_path):
    root, cfg, _ = tiny_run
    reports = root / "reports" / cfg.name
    conv = pd.read_csv(reports / "convert.csv").set_index("cell")
    assert conv.loc["encoder-fp32-static", "static_shapes"] == "yes"
    assert conv.loc["decoder-fp32-static", "static_shapes"].startswith("no: input point_coords")
    prof = pd.read_csv(reports / "profile.csv")
    enc = prof[prof["component"] == "encoder"].groupby("artifact")["graph_ops"].first()
    assert enc["mnn-fp32-static"] <= enc["mnn-fp32"]  # the session's op count (after MNN's geometry pass)
    # the files themselves: dumped to JSON by MNN's converter, the static one holds fewer ops
    mnn = root / "build" / cfg.name / "mnn"
    plain, static = (_file_ops(mnn / f"encoder.{v}.mnn", tmp_path) for v in ("fp32", "fp32-static"))
    assert static < plain, (static, plain)  # measured on the tiny encoder: 145 against 388
    parity = pd.read_csv(reports / "parity.csv")
    static = parity[parity["artifact"] == "mnn-fp32-static"]
    assert len(static) == 3 and static["pass"].all()


def test_fixed_shape_module_gives_the_same_outputs_when_shapes_change(tiny_run):
    dec = _build(tiny_run) / "mnn" / "decoder.fp32.mnn"
    a = MnnRuntime(dec, threads=1)
    b = MnnRuntime(dec, threads=1, shape_mutable=False, rearrange=True)
    emb = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    for n, size in [(1, (300, 451)), (4, (120, 90)), (2, (300, 451))]:
        pts = np.random.default_rng(n).uniform(0, 80, (n, 2)).astype(np.float32)
        feeds = decoder_feeds(emb, pts, np.ones(n, np.float32), size)
        ra, rb = a.run(feeds), b.run(feeds)
        assert rb["masks"].shape == (1, 1, *size)
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k])


def test_modes_are_cells_and_bad_mode_options_are_named(tmp_path):
    sweep = load_sweep("full")  # the exhaustive grid; its MNN variants are `all`: the model's convert.variants
    modes = {c.mode for c in grid(sweep, {"fp32": []}) if c.runtime == "mnn"}
    assert modes == {"default", "fixed", "memory-low"}
    keys = [c.key for c in grid(sweep, {"fp32": []})]
    assert len(keys) == len(set(keys)) and any("~fixed" in k for k in keys)
    for edit, match in [({"shape_mutabel": False}, "'shape_mutabel' is not a mnn option"),
                        ({"power": "turbo"}, "power: 'turbo' is not one of low, normal, high")]:
        path = tmp_path / "sweep.yaml"
        path.write_text(json.dumps({"runtimes": {"mnn": {"backends": ["CPU"], "variants": ["fp32"],
                                                         "precisions": ["normal"], "modes": {"m": edit}}}}))
        with pytest.raises(ConfigError, match=match) as e:
            load_sweep(str(path))
        assert str(path) in str(e.value) and "runtimes.mnn.modes.m" in str(e.value)
    path.write_text(json.dumps({"runtimes": {"onnxruntime": {"backends": ["CPUExecutionProvider"], "variants": ["onnx"],
                                                             "modes": {"m": {"rearrange": True}}}}}))
    with pytest.raises(ConfigError, match="not a onnxruntime option"):
        load_sweep(str(path))


def test_profile_rows_add_up_and_name_where_time_goes(tiny_run):
    root, cfg, _ = tiny_run
    prof = pd.read_csv(root / "reports" / cfg.name / "profile.csv")
    assert (prof["status"] == "ok").all()
    assert set(prof["runtime"]) == {"mnn", "onnxruntime"} and set(prof["component"]) == {"encoder", "decoder"}
    for _, g in prof.groupby(["component", "artifact"]):
        assert (g["ms"] >= 0).all() and (g["count"] >= 1).all()
        assert g["ms"].sum() == pytest.approx(g["ops_total_ms"].iloc[0], rel=0.02, abs=0.05)
        assert g["share_pct"].sum() == pytest.approx(100, abs=1)
    conv = prof[(prof["runtime"] == "mnn") & (prof["op_type"] == "Convolution") & (prof["component"] == "encoder")]
    assert (conv["gflop"] > 0).all() and (conv["roofline_frac"] > 0).all()
    # the decoder as each runtime runs it in the bench: MNN's cut at low_res_masks with the numpy upsample beside
    # it (no resize op left in its graph), onnxruntime's whole, its Resize ops included
    dec = prof[prof["component"] == "decoder"]
    mnn, ort = dec[dec["runtime"] == "mnn"], dec[dec["runtime"] == "onnxruntime"]
    assert (mnn["upsample"] == "fp32").all() and (ort["upsample"] == "graph").all()
    for _, g in mnn.groupby("artifact"):
        up = g.loc[g["op_type"] == UPSAMPLE_OP, "ms"]
        assert len(up) == 1 and 0 < up.iloc[0] <= g["wall_ms"].iloc[0]  # timed, and counted in the call's wall
        assert not g["op_type"].isin(["Interp", "Resize"]).any(), sorted(g["op_type"])
    assert ort["op_type"].isin(["Resize"]).any() and not (ort["op_type"] == UPSAMPLE_OP).any()
    text = (root / "reports" / cfg.name / "profile.md").read_text()
    assert "## encoder" in text and "## decoder" in text and "mnn-fp32-static" in text
    assert f"| {UPSAMPLE_OP} |" in text  # a row of the decoder's top op types


def _lat(**kw):
    base = {"component": "encoder", "runtime": "mnn", "backend": "CPU", "precision": "normal", "mode": "default",
            "mode_options": "-", "threads": 2, "points": 0, "out_h": 10, "out_w": 10, "status": "ok"}
    return {**base, **kw}


def _par(artifact, component, ok, **kw):
    return {"artifact": artifact, "precision": "normal", "component": component, "pass": ok,
            "cosine": 0.99, "mask_iou": 0.98, "artifact_path": f"build/m/mnn/{component}.x.mnn", **kw}


def test_recommended_is_the_fastest_that_passes_parity():
    lat = pd.DataFrame([
        _lat(artifact="mnn-fast", variant="fast", p50_ms=10.0),               # fails parity
        _lat(artifact="mnn-ok", variant="ok", p50_ms=20.0, mode="fixed", mode_options="shape_mutable=False"),
        _lat(artifact="mnn-ok", variant="ok", p50_ms=25.0),
        _lat(artifact="mnn-ok", variant="ok", p50_ms=5.0, threads=1),        # not the top thread count
        _lat(artifact="mnn-slow", variant="slow", p50_ms=30.0),
        _lat(artifact="mnn-gpu", variant="ok", p50_ms=1.0, backend="OpenCL"),
    ])
    parity = pd.DataFrame([_par("mnn-fast", "encoder", False), _par("mnn-fast", "e2e", False),
                           _par("mnn-ok", "encoder", True), _par("mnn-ok", "e2e", True, mask_iou=0.97),
                           _par("mnn-slow", "encoder", True), _par("mnn-slow", "e2e", True)])
    rec = recommended(lat, parity)
    assert list(rec["pick"]) == ["fastest", "fastest"]  # no files on disk: no size, so no smallest pick
    assert list(rec["threads"]) == [1, 2]  # at 1 thread and at the top thread count, the top last
    t1, r = rec.iloc[0], rec.iloc[1]
    assert (t1["artifact"], t1["mode"], t1["p50_ms"]) == ("mnn-ok", "default", 5.0)
    assert (r["artifact"], r["mode"], r["p50_ms"], r["threads"]) == ("mnn-ok", "fixed", 20.0, 2)
    assert r["e2e_mask_iou"] == 0.97
    # an artifact whose e2e row fails is not recommended even if its own component passes
    parity.loc[(parity["artifact"] == "mnn-ok") & (parity["component"] == "e2e"), "pass"] = False
    assert recommended(lat, parity).iloc[-1]["artifact"] == "mnn-slow"


def _pair(a, b, verdict, **kw):
    return {"comparison": f"encoder/mnn: {b} vs {a}", "component": "encoder", "runtime": "mnn", "precision": "normal",
            "mode": "default", "threads": 2, "a": a, "b": b, "verdict": verdict, "status": "ok", **kw}


def test_a_same_process_ab_overrules_the_p50_ranking():
    lat = pd.DataFrame([_lat(artifact="mnn-p50", variant="p50", p50_ms=20.0),
                        _lat(artifact="mnn-ab", variant="ab", p50_ms=20.5),
                        _lat(artifact="mnn-fails", variant="fails", p50_ms=30.0)])
    parity = pd.DataFrame([_par(a, c, a != "mnn-fails") for a in ("mnn-p50", "mnn-ab", "mnn-fails")
                           for c in ("encoder", "e2e")])
    assert recommended(lat, parity).iloc[0][["artifact", "chosen_by"]].tolist() == ["mnn-p50", "p50"]
    # proven on every workload, either way round: the A/B's winner is the pick, and the row says why
    for pair in (_pair("p50", "ab", "b faster"), _pair("ab", "p50", "b slower")):
        rec = recommended(lat, parity, paired=pd.DataFrame([pair, {**pair, "points": 1}])).iloc[0]
        assert (rec["artifact"], rec["chosen_by"]) == ("mnn-ab", f"A/B: {pair['comparison']}")
    # not proven: no verdict on one workload, another mode or thread count, two runtimes, a variant failing parity
    for rows in ([_pair("p50", "ab", "b faster"), _pair("p50", "ab", "no difference shown", points=1)],
                 [_pair("p50", "ab", "b faster", mode="fixed")], [_pair("p50", "ab", "b faster", threads=1)],
                 [_pair("p50", "ab", "b faster", b_runtime="onnxruntime")], [_pair("p50", "fails", "b faster")]):
        assert recommended(lat, parity, paired=pd.DataFrame(rows)).iloc[0]["artifact"] == "mnn-p50", rows


def test_smallest_pick_and_memory_low_cells_match_their_own_parity_rows(tmp_path):
    for name, mb in (("big", 3), ("small", 1)):
        (tmp_path / f"{name}.mnn").write_bytes(b"x" * mb * 1_000_000)
    lat = pd.DataFrame([
        _lat(artifact="mnn-big", variant="big", p50_ms=10.0),
        _lat(artifact="mnn-small", variant="small", p50_ms=30.0),
        _lat(artifact="mnn-small", variant="small", p50_ms=25.0, mode="low", mode_options="memory=low"),
    ])
    parity = pd.DataFrame([_par("mnn-big", c, True, artifact_path="big.mnn") for c in ("encoder", "e2e")]
                          + [_par("mnn-small", c, True, artifact_path="small.mnn") for c in ("encoder", "e2e")]
                          + [_par("mnn-small", c, c == "e2e", artifact_path="small.mnn", memory="low")
                             for c in ("encoder", "e2e")])
    rec = recommended(lat, parity, tmp_path).set_index("pick")
    assert rec.loc["fastest", "artifact"] == "mnn-big"
    # the smallest file passes at memory normal only: its memory-low cell (faster) fails its own parity row
    assert (rec.loc["smallest", "artifact"], rec.loc["smallest", "p50_ms"]) == ("mnn-small", 30.0)
    parity.loc[parity["memory"] == "low", "pass"] = True
    rec = recommended(lat, parity, tmp_path).set_index("pick")
    assert (rec.loc["smallest", "p50_ms"], rec.loc["smallest", "mode_options"]) == (25.0, "memory=low")


def test_segment_defaults_to_the_recommended_files(tmp_path):
    assert recommended_models(tmp_path, "m") is None
    (tmp_path / "reports" / "m").mkdir(parents=True)
    pd.DataFrame([
        {"component": "encoder", "runtime": "onnxruntime", "precision": "fp32", "mode_options": "-", "path": "x.onnx"},
        {"component": "encoder", "runtime": "mnn", "precision": "normal", "mode_options": "shape_mutable=False rearrange=True",
         "path": "build/m/mnn/encoder.fp32-static.mnn"},
        {"component": "decoder", "runtime": "mnn", "precision": "low", "mode_options": "-",
         "path": "build/m/mnn/decoder.fp32.mnn"},
    ]).to_csv(tmp_path / "reports" / "m" / "recommended.csv", index=False)
    rec = recommended_models(tmp_path, "m")
    assert rec["encoder"]["path"] == tmp_path / "build/m/mnn/encoder.fp32-static.mnn"
    assert rec["encoder"]["options"] == {"shape_mutable": False, "rearrange": True}
    assert rec["decoder"]["precision"] == "low" and rec["decoder"]["options"] == {}
    assert parse_options("memory=low power=high") == {"memory": "low", "power": "high"}
    # rows at 1 thread and at the top thread count: make segment loads the top thread count's, wherever it is
    rows = [{"component": c, "runtime": "mnn", "precision": "normal", "mode_options": "-", "threads": t,
             "path": f"build/m/mnn/{c}.t{t}.mnn"} for t in (4, 1) for c in ("encoder", "decoder")]
    pd.DataFrame(rows).to_csv(tmp_path / "reports" / "m" / "recommended.csv", index=False)
    assert recommended_models(tmp_path, "m")["encoder"]["path"] == tmp_path / "build/m/mnn/encoder.t4.mnn"


def test_rewrite_moves_the_attention_scale_onto_q_and_keeps_the_outputs(tiny_run, tmp_path):
    """`--rewrite attn-scale-to-query`: every `(q @ k^T) * s` of the tiny TinyViT becomes `(q * s) @ k^T`; the
    graph computes the same (onnxruntime, float rounding only), the variant passes parity, convert.csv says
    how many sites changed."""
    import onnx
    import onnxruntime as ort

    from stages.runtimes.onnx_rewrites import apply_rewrites
    from stages.sam.spec import component_example

    root, cfg, _ = tiny_run
    src = _build(tiny_run) / "onnx" / "encoder.sim.onnx"
    done = apply_rewrites(src, ["attn-scale-to-query"], tmp_path / "rw.onnx")
    # one site per attention whose key dim is below its token count (a tiny window with N <= key_dim keeps its Mul)
    softmaxes = sum(n.op_type == "Softmax" for n in onnx.load(str(src)).graph.node)
    blocks = done["attn-scale-to-query"]
    assert list(done) == ["attn-scale-to-query"] and 0 < blocks <= softmaxes

    def muls_after_matmul(path):
        g = onnx.load(str(path)).graph
        made = {o: n.op_type for n in g.node for o in n.output}
        return sum(n.op_type == "Mul" and any(made.get(i) == "MatMul" for i in n.input) for n in g.node)

    assert muls_after_matmul(tmp_path / "rw.onnx") == muls_after_matmul(src) - blocks
    feeds = component_example("encoder", 0)
    a, b = (ort.InferenceSession(str(p)).run(None, feeds)[0] for p in (src, tmp_path / "rw.onnx"))
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    reports = root / "reports" / cfg.name
    conv = pd.read_csv(reports / "convert.csv").set_index("cell")
    assert conv.loc["encoder-fp32-scaleq", "rewrites"] == f"attn-scale-to-query: {blocks} sites"
    assert conv.loc["encoder-fp32-scaleq", "status"] == "ok"
    parity = pd.read_csv(reports / "parity.csv")
    rows = parity[parity["artifact"] == "mnn-fp32-scaleq"]
    assert len(rows) == 3 and rows["pass"].all()


def test_decoder_rewrites_drop_the_embedding_repeat_and_the_batched_matmul(tiny_run, tmp_path):
    """`identity-layout` drops SAM's repeat of the image embeddings per prompt batch (Unsqueeze -> Tile ->
    Reshape, the identity for one batch) and `batch1-matmul-2d` makes the hypernetwork product a 2-D MatMul;
    the rewritten decoder computes the same at any point count (onnxruntime, and MNN on the converted
    variant through parity), and convert.csv says how much each changed."""
    import onnx

    from stages.runtimes.onnx_rewrites import apply_rewrites

    root, cfg, _ = tiny_run
    src = _build(tiny_run) / "onnx" / "decoder.sim.onnx"
    done = apply_rewrites(src, ["identity-layout", "batch1-matmul-2d"], tmp_path / "rw.onnx")
    ops = lambda path: [n.op_type for n in onnx.load(str(path)).graph.node]  # noqa: E731
    before, after = ops(src), ops(tmp_path / "rw.onnx")
    assert "Tile" in before and "Tile" not in after
    # Unsqueeze, Tile and Reshape gone; one MatMul became Reshape, Reshape, MatMul, Reshape
    assert done == {"identity-layout": 3, "batch1-matmul-2d": 1} and len(after) == len(before) - 3 + 3
    assert_same_decoder(src, tmp_path / "rw.onnx", seed=2)
    reports = root / "reports" / cfg.name
    conv = pd.read_csv(reports / "convert.csv").set_index("cell")
    assert conv.loc["decoder-fp32-lean", "rewrites"] == (f"identity-layout: {done['identity-layout']} sites; "
                                                         "batch1-matmul-2d: 1 sites")
    assert conv.loc["encoder-fp32-lean", "rewrites"] == ("identity-layout: 0 sites (no effect); "
                                                         "batch1-matmul-2d: 0 sites (no effect)")
    parity = pd.read_csv(reports / "parity.csv")
    rows = parity[parity["artifact"] == "mnn-fp32-lean"]
    assert len(rows) == 3 and rows["pass"].all()


def test_identity_layout_keeps_a_repeat_or_reshape_that_changes_the_shape(tmp_path):
    """Only a chain that gives back its start's shape is dropped: a Tile that repeats, or a Reshape to
    another shape, stays."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from stages.runtimes.onnx_rewrites import identity_layout

    def model(repeats, shape):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
        inits = [numpy_helper.from_array(np.array(v, np.int64), n)
                 for n, v in (("axes", [1]), ("reps", repeats), ("shape", shape))]
        nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"]), helper.make_node("Tile", ["u", "reps"], ["t"]),
                 helper.make_node("Reshape", ["t", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                                 opset_imports=[helper.make_opsetid("", 17)])

    same = model([1, 1, 1, 1], [1, 4, 6])
    assert identity_layout(same) == 3 and [n.op_type for n in same.graph.node] == ["Relu"]
    assert same.graph.node[0].input[0] == "x"
    repeated = model([1, 2, 1, 1], [1, 8, 6])
    assert identity_layout(repeated) == 0 and len(repeated.graph.node) == 4
    other = model([1, 1, 1, 1], [1, 6, 4])  # the Tile repeats nothing and goes; the Reshape changes the shape
    assert identity_layout(other) == 1 and [n.op_type for n in other.graph.node] == ["Unsqueeze", "Reshape", "Relu"]
    onnx.checker.check_model(other)
    with_body = model([1, 1, 1, 1], [1, 4, 6])  # the same identity chain, but a subgraph could read it
    body = helper.make_graph([helper.make_node("Identity", ["r"], ["z"])], "body", [],
                             [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 6])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    with_body.graph.initializer.append(cond)
    with_body.graph.node.append(helper.make_node("If", ["cond"], ["w"], then_branch=body, else_branch=body))
    with_body.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4, 6]))
    assert identity_layout(with_body) == 0 and len(with_body.graph.node) == 5


def test_an_unknown_rewrite_is_named(tmp_path):
    from stages.runtimes.onnx_rewrites import split_flags

    assert split_flags(["--fp16", "--rewrite", "attn-scale-to-query"], "x") == (["--fp16"], ["attn-scale-to-query"])
    with pytest.raises(ValueError, match=r"convert.variants.fast: --rewrite 'softmax-magic' is not a rewrite "
                                         r"\(rewrites: attn-scale-to-query, identity-layout, batch1-matmul-2d, attn-transposed\)"):
        split_flags(["--rewrite", "softmax-magic"], "convert.variants.fast")
