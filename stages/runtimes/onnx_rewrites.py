"""Graph rewrites of a simplified ONNX before MNN conversion: each one a switch of `convert.variants`
(`fp32-scale: [--rewrite, attn-scale-to-query]`), the convert stage applying it to a copy and passing the
rest of the flags to MNN's converter. A rewrite keeps what the graph computes (parity checks each variant
like any other) and changes only its form, towards what MNN runs fast; convert.csv says how many sites each
rewrite changed, so a rewrite that matched nothing is said to have had no effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

FLAG = "--rewrite"


def _is_scalar(model, name: str) -> bool:
    """Whether `name` is a one-element constant initializer."""
    return any(t.name == name and math.prod(t.dims) == 1 for t in model.graph.initializer)


def _shapes(model) -> dict[str, list[int]]:
    """Each tensor's shape as ONNX's shape inference gives it; an unknown or symbolic dim is 0."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
              if v.type.tensor_type.HasField("shape")}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    return shapes


def _producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def _static(shape: list[int] | None) -> bool:
    return bool(shape) and all(d > 0 for d in shape)


def attn_scale_to_query(model) -> int:
    """`(q @ k^T) * s` -> `(q * s) @ k^T` (and `/ s` alike) when q has fewer elements than the product: TinyViT scales each
    attention matrix after the MatMul (onnxruntime fuses that Mul into its FusedMatMul; MNN runs it as a
    pass over every B x heads x N x N matrix); moved onto q it touches N / key_dim times fewer numbers. Equal up
    to float rounding. Returns how many MatMul-Mul pairs were rewritten."""
    import onnx

    shapes, producer, users = _shapes(model), _producers(model), _consumers(model)
    count = 0
    for mul in list(model.graph.node):
        if mul.op_type not in ("Mul", "Div") or len(mul.input) != 2:
            continue
        if mul.op_type == "Div" and mul.input[1] in producer:
            continue  # only x / constant moves
        mm_out, const = (mul.input if mul.input[0] in producer else mul.input[::-1])
        mm = producer.get(mm_out)
        if mm is None or mm.op_type != "MatMul" or not _is_scalar(model, const) or len(users.get(mm_out, [])) != 1:
            continue
        q = mm.input[0]
        # q [..., M, K] @ k [..., K, N] -> [..., M, N]: q is the smaller one when K < N (dynamic dims aside)
        k_dim, n_dim = (shapes.get(q) or [0])[-1], (shapes.get(mm_out) or [0])[-1]
        if not (0 < k_dim < n_dim):
            continue
        scaled = f"{q}__scaled_{count}"
        node = onnx.helper.make_node(mul.op_type, [q, const], [scaled], name=f"{mul.name}__on_query")
        model.graph.node.insert(list(model.graph.node).index(mm), node)
        mm.input[0] = scaled
        mm.output[0] = mul.output[0]  # the MatMul now gives what the Mul gave
        model.graph.node.remove(mul)
        count += 1
    return count


LAYOUT_ONLY = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Tile", "Expand")  # keep the elements' order


def identity_layout(model) -> int:
    """Drop a chain of layout ops that gives back the shape it started from: SAM's decoder repeats the image
    embeddings once per prompt batch (`Unsqueeze -> Tile -> Reshape`, repeats computed at run time), which
    with one batch is the identity; onnxruntime's Tile of 1M floats costs 0.6 ms, MNN's Raster for it 4 ms
    (vit_t decoder, per-op profile). Sound for static shapes: a chain of Reshape / Unsqueeze / Squeeze /
    Flatten keeps the elements in order, and a Tile or Expand in it that ends at its start's element count
    repeated nothing. Returns how many ops were dropped. A graph with subgraphs (If, Loop) is left as it is:
    their bodies may read a tensor this would bypass or drop."""
    if _has_subgraphs(model):
        return 0
    shapes, producer = _shapes(model), _producers(model)
    graph_outputs = {o.name for o in model.graph.output}
    before = len(model.graph.node)
    for n in list(model.graph.node):
        out = n.output[0]
        if n.op_type not in LAYOUT_ONLY or out in graph_outputs or not _static(shapes.get(out)):
            continue
        x = n.input[0]
        while shapes.get(x) != shapes[out]:
            p = producer.get(x)
            x = p.input[0] if p is not None and p.op_type in LAYOUT_ONLY else None
            if x is None:
                break
        if x is None:
            continue
        for m in model.graph.node:
            m.input[:] = [x if i == out else i for i in m.input]
    _drop_dead(model)
    return before - len(model.graph.node)


def _drop_dead(model) -> None:
    """Remove the nodes no graph output depends on."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for n in reversed(list(model.graph.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(n.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))


def batch1_matmul_2d(model) -> int:
    """`[1, M, K] @ [1, K, N]` (static shapes) -> a 2-D MatMul between Reshapes: MNN runs a 3-D MatMul whose B
    is computed as a batched loop (`While`: 2.7 ms for SAM's hypernetwork product `[1, 4, 32] @ [1, 32, 65536]`
    against onnxruntime's 0.5 ms), a 2-D one as its matmul kernel. Same numbers. Returns the MatMuls changed."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    shapes, count = _shapes(model), 0
    for n in list(model.graph.node):
        if n.op_type != "MatMul":
            continue
        a, b, o = (shapes.get(t) for t in (*n.input, n.output[0]))
        if not (_static(a) and _static(b) and _static(o) and len(a) == len(b) == 3 and a[0] == b[0] == 1):
            continue
        p = f"{n.name or n.output[0]}__2d"
        for suffix, shape in (("a", a[1:]), ("b", b[1:]), ("o", o)):
            model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), f"{p}_{suffix}_shape"))
        new = [onnx.helper.make_node("Reshape", [n.input[0], f"{p}_a_shape"], [f"{p}_a"], name=f"{p}_a"),
               onnx.helper.make_node("Reshape", [n.input[1], f"{p}_b_shape"], [f"{p}_b"], name=f"{p}_b"),
               onnx.helper.make_node("MatMul", [f"{p}_a", f"{p}_b"], [f"{p}_o"], name=p),
               onnx.helper.make_node("Reshape", [f"{p}_o", f"{p}_o_shape"], [n.output[0]], name=f"{p}_o")]
        at = list(model.graph.node).index(n)
        model.graph.node.remove(n)
        for i, node in enumerate(new):
            model.graph.node.insert(at + i, node)
        count += 1
    return count


SWAP_LAST = [0, 1, 3, 2]


def attn_transposed(model) -> int:
    """`softmax(q @ k^T * s) @ v` with a long query axis (>= 256, static) and a short key axis (<= 64 or
    dynamic) -> `(v^T @ softmax(k @ q^T * s, axis=-2))^T`: SAM's image-to-token attention (4096 image tokens
    attending to the 5-10 prompt tokens) takes its softmax over rows of 7 numbers, which MNN runs at 1.7 ms per
    [1, 8, 4096, 7] against 0.19 ms over the same numbers as [1, 8, 7, 4096] with axis -2 (session script);
    its two MatMuls get N = 4096 instead of N = 7 or 16. The same numbers up to float rounding; the transposes
    it adds fold into the head split and merge around it. Returns the attention sites rewritten."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13 or _has_subgraphs(model):  # before 13, Softmax flattened from its axis on: -2 meant another thing
        return 0
    shapes, producer, users = _shapes(model), _producers(model), _consumers(model)
    outputs = {o.name for o in model.graph.output}
    count = 0
    for sm in list(model.graph.node):
        site = _attention_site(model, sm, shapes, producer, users, outputs) if sm.op_type == "Softmax" else None
        if site is None:
            continue
        qk, scale, av = site
        x = qk.output[0]
        qk.input[:] = [_transpose(model, qk.input[1], qk), _transpose(model, qk.input[0], qk)]  # k, q^T
        del sm.attribute[:]
        sm.attribute.append(_attr("axis", -2))
        out = av.output[0]
        av.input[:] = [_transpose(model, av.input[1], av), sm.output[0]]  # v^T @ a^T = (a @ v)^T
        av.output[0] = f"{out}__t"
        at = list(model.graph.node).index(av) + 1
        model.graph.node.insert(at, _node("Transpose", [av.output[0]], [out], perm=SWAP_LAST))
        stale = {x, sm.output[0], *(p.output[0] for p in scale)}  # their shapes are transposed now
        kept = [v for v in model.graph.value_info if v.name not in stale]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
        count += 1
    if count:
        _merge_transposes(model)
    return count


def _attention_site(model, sm, shapes, producer, users, outputs):
    """(q @ k MatMul, scalar Mul/Div ops between it and the Softmax, the MatMul after it) when Softmax `sm` is
    one `attn_transposed` rewrites: 4-D operands, softmax over a short last axis of a long static row axis,
    every tensor in between read once and none of them a graph output; else None."""
    s = shapes.get(sm.input[0])
    axis = next((a.i for a in sm.attribute if a.name == "axis"), -1)
    if not s or len(s) != 4 or axis not in (-1, 3) or s[2] < 256 or s[3] > 64:
        return None
    scale, x = [], sm.input[0]  # scalar Mul / Div (x * c, x / c) between the MatMul and the Softmax commute with it
    while (p := producer.get(x)) is not None and p.op_type in ("Mul", "Div") and _is_scalar(model, p.input[1]) \
            and len(users.get(x, [])) == 1 and x not in outputs:
        scale.append(p)
        x = p.input[0]
    qk, after = producer.get(x), users.get(sm.output[0], [])
    if qk is None or qk.op_type != "MatMul" or len(users.get(x, [])) != 1 or x in outputs or len(after) != 1 \
            or after[0].op_type != "MatMul" or after[0].input[0] != sm.output[0] or sm.output[0] in outputs:
        return None
    if any(len(shapes.get(t) or []) != 4 for t in (*qk.input, after[0].input[1])):
        return None  # a broadcast 2-D / 3-D operand: a 4-D Transpose does not apply
    return qk, scale, after[0]


def _has_subgraphs(model) -> bool:
    """Whether a node has a body (If, Loop): it may read a tensor a rewrite bypasses or drops."""
    return any(a.type in (a.GRAPH, a.GRAPHS) for n in model.graph.node for a in n.attribute)


def _consumers(model) -> dict[str, list]:
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def _attr(name: str, value):
    import onnx

    return onnx.helper.make_attribute(name, value)


def _node(op: str, inputs: list[str], outputs: list[str], **attrs):
    import onnx

    return onnx.helper.make_node(op, inputs, outputs, name=f"{outputs[0]}__{op}", **attrs)


def _transpose(model, name: str, before) -> str:
    """`name` with its last two axes swapped, by a Transpose inserted before node `before`; its new name."""
    out = f"{name}__swap{len(model.graph.node)}"
    model.graph.node.insert(list(model.graph.node).index(before), _node("Transpose", [name], [out], perm=SWAP_LAST))
    return out


def _merge_transposes(model) -> None:
    """Transpose(Transpose(x, p), t) -> Transpose(x, p[t]); an identity perm is dropped. Nodes nothing reads
    any more go."""
    producer, graph_outputs = _producers(model), {o.name for o in model.graph.output}
    perm = lambda n: list(next((a.ints for a in n.attribute if a.name == "perm"), []))  # noqa: E731
    for t in list(model.graph.node):
        p = producer.get(t.input[0]) if t.op_type == "Transpose" else None
        if p is None or p.op_type != "Transpose" or not perm(t) or not perm(p):
            continue  # (a Transpose without perm reverses its axes: left as it is)
        outer, inner = perm(t), perm(p)
        both = [inner[i] for i in outer]
        t.input[0] = p.input[0]
        del t.attribute[:]
        t.attribute.append(_attr("perm", both))
        if both == sorted(both) and t.output[0] not in graph_outputs:
            for m in model.graph.node:
                m.input[:] = [t.input[0] if i == t.output[0] else i for i in m.input]
    _drop_dead(model)


REWRITES: dict[str, Callable] = {"attn-scale-to-query": attn_scale_to_query, "identity-layout": identity_layout,
                                 "batch1-matmul-2d": batch1_matmul_2d, "attn-transposed": attn_transposed}


def split_flags(flags: list[str], where: str) -> tuple[list[str], list[str]]:
    """(converter flags, rewrite names) from a variant's flag list; an unknown rewrite is an error naming it."""
    conv, names, it = [], [], iter(flags)
    for f in it:
        if f != FLAG:
            conv.append(f)
            continue
        name = next(it, None)
        if name not in REWRITES:
            raise ValueError(f"{where}: {FLAG} {name!r} is not a rewrite (rewrites: {', '.join(REWRITES)})")
        names.append(name)
    return conv, names


def apply_rewrites(src: Path, names: list[str], dst: Path) -> dict[str, int]:
    """Write `src` with the named rewrites applied to `dst`; how many sites each one changed."""
    import onnx

    model = onnx.load(str(src))
    done = {name: REWRITES[name](model) for name in names}
    onnx.checker.check_model(model)
    big = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit: vit_l / vit_h weights go beside it
    onnx.save(model, str(dst), save_as_external_data=big, location=f"{dst.name}.data" if big else None)
    return done
