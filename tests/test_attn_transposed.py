"""The `attn-transposed` rewrite (stages/runtimes/onnx_rewrites.py): an attention whose softmax runs over a
short last axis (SAM's image-to-token attention: 4096 image tokens over a few prompt tokens) computed as its
transpose, so the softmax runs over axis -2. The same numbers, fewer MNN microseconds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import assert_same_decoder
from stages.runtimes.onnx_rewrites import apply_rewrites, attn_transposed


def _attention(n: int, m: int, opset: int = 17, transposed_inputs: bool = False, v_shape: list[int] | None = None):
    """softmax(q @ kT / 4) @ v on inputs q [1, 2, n, 16], kT [1, 2, 16, m], v [1, 2, m, 16] (or v_shape: MatMul
    broadcasts), then the head merge."""
    from onnx import TensorProto, helper, numpy_helper

    def value(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    inputs = [value("q", [1, 2, n, 16]), value("kT", [1, 2, 16, m]), value("v", v_shape or [1, 2, m, 16])]
    nodes, q = [], "q"
    if transposed_inputs:  # q reaches the MatMul through a head split, as in SAM
        inputs[0] = value("qr", [1, n, 2, 16])
        nodes.append(helper.make_node("Transpose", ["qr"], ["q"], perm=[0, 2, 1, 3]))
    nodes += [helper.make_node("MatMul", [q, "kT"], ["l"]), helper.make_node("Div", ["l", "four"], ["s"]),
              helper.make_node("Softmax", ["s"], ["a"], axis=-1), helper.make_node("MatMul", ["a", "v"], ["o"]),
              helper.make_node("Transpose", ["o"], ["y"], perm=[0, 2, 1, 3])]
    graph = helper.make_graph(nodes, "attn", inputs, [value("y", [1, n, 2, 16])],
                              [numpy_helper.from_array(np.array(4.0, np.float32), "four")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]


def test_a_long_query_short_key_attention_is_computed_transposed_with_the_same_numbers():
    import onnx

    rng = np.random.default_rng(0)
    for transposed_inputs in (False, True):
        model = _attention(300, 5, transposed_inputs=transposed_inputs)
        q = rng.standard_normal((1, 300, 2, 16) if transposed_inputs else (1, 2, 300, 16)).astype(np.float32)
        feeds = {"qr" if transposed_inputs else "q": q, "kT": rng.standard_normal((1, 2, 16, 5)).astype(np.float32),
                 "v": rng.standard_normal((1, 2, 5, 16)).astype(np.float32)}
        want = _run(model, feeds)
        assert attn_transposed(model) == 1
        onnx.checker.check_model(model)
        softmax, = (n for n in model.graph.node if n.op_type == "Softmax")
        assert [(a.name, a.i) for a in softmax.attribute] == [("axis", -2)]
        perms = [list(n.attribute[0].ints) for n in model.graph.node if n.op_type == "Transpose"]
        # k, q^T, v^T swapped in; the swap back of the output and the head merge are one Transpose, and so,
        # where q comes through a head split, are that split and q's swap
        q_perm = [0, 2, 3, 1] if transposed_inputs else [0, 1, 3, 2]
        assert perms == [[0, 1, 3, 2], q_perm, [0, 1, 3, 2], [0, 3, 1, 2]]
        np.testing.assert_allclose(_run(model, feeds), want, rtol=1e-5, atol=1e-6)


def test_attn_transposed_leaves_other_attentions_and_old_opsets_alone():
    from onnx import TensorProto, helper

    short_query = _attention(100, 5)  # 100 query rows: not worth it
    long_key = _attention(300, 300)  # a long softmax axis is what the kernels like
    old = _attention(300, 5, opset=12)  # before opset 13, Softmax's axis flattened the rest: -2 means another thing
    shared_v = _attention(300, 5, v_shape=[5, 16])  # one v for every head, broadcast: no 4-D transpose of it
    seen = _attention(300, 5)  # the attention weights are a graph output too: transposing them would change it
    seen.graph.output.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2, 300, 5]))
    with_body = _attention(300, 5)  # a subgraph could read any tensor of the graph
    body = helper.make_graph([helper.make_node("Identity", ["a"], ["z"])], "body", [],
                             [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 300, 5])])
    with_body.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    with_body.graph.node.append(helper.make_node("If", ["cond"], ["w"], then_branch=body, else_branch=body))
    with_body.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 2, 300, 5]))
    assert _run(shared_v, {"q": np.ones((1, 2, 300, 16), np.float32), "kT": np.ones((1, 2, 16, 5), np.float32),
                           "v": np.ones((5, 16), np.float32)}).shape == (1, 300, 2, 16)  # a valid graph
    for model in (short_query, long_key, old, shared_v, seen, with_body):
        before = model.SerializeToString()
        assert attn_transposed(model) == 0 and model.SerializeToString() == before


def test_the_tiny_decoder_rewritten_computes_the_same_and_its_variant_passes_parity(tiny_run, tmp_path):
    import onnx

    root, cfg, _ = tiny_run
    src = root / "build" / cfg.name / "onnx" / "decoder.sim.onnx"
    done = apply_rewrites(src, ["attn-transposed"], tmp_path / "t.onnx")
    graphs = [onnx.load(str(p)).graph for p in (src, tmp_path / "t.onnx")]
    axes = [[next((a.i for a in n.attribute if a.name == "axis"), -1) for n in g.node if n.op_type == "Softmax"]
            for g in graphs]
    # the tiny decoder has one layer: one image-to-token attention; token-to-image and self attention stay
    assert done == {"attn-transposed": 1} and axes[1].count(-2) == 1 and len(axes[1]) == len(axes[0])
    transposes = [[n.op_type for n in g.node].count("Transpose") for g in graphs]
    assert transposes[1] == transposes[0]  # the ones it adds fold into the head split and merge
    assert_same_decoder(src, tmp_path / "t.onnx", seed=3)
    reports = root / "reports" / cfg.name
    conv = pd.read_csv(reports / "convert.csv").set_index("cell")
    assert conv.loc["decoder-fp32-lean-t", "rewrites"].endswith("; attn-transposed: 1 sites")
    assert conv.loc["encoder-fp32-lean-t", "rewrites"].endswith("; attn-transposed: 0 sites (no effect)")
    parity = pd.read_csv(reports / "parity.csv")
    rows = parity[parity["artifact"] == "mnn-fp32-lean-t"]
    assert len(rows) == 3 and rows["pass"].all()
