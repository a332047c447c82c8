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


def attn_scale_to_query(model) -> int:
    """`(q @ k^T) * s` -> `(q * s) @ k^T` (and `/ s` alike) when q has fewer elements than the product: TinyViT scales each
    attention matrix after the MatMul (onnxruntime fuses that Mul into its FusedMatMul; MNN runs it as a
    pass over every B x heads x N x N matrix); moved onto q it touches N / key_dim times fewer numbers. Equal up
    to float rounding. Returns how many MatMul-Mul pairs were rewritten."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    producer = {o: n for n in model.graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    count = 0
    for mul in list(model.graph.node):
        if mul.op_type not in ("Mul", "Div") or len(mul.input) != 2:
            continue
        if mul.op_type == "Div" and mul.input[1] in producer:
            continue  # only x / constant moves
        mm_out, const = (mul.input if mul.input[0] in producer else mul.input[::-1])
        mm = producer.get(mm_out)
        if mm is None or mm.op_type != "MatMul" or not _is_scalar(model, const) or uses.get(mm_out, 0) != 1:
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


REWRITES: dict[str, Callable] = {"attn-scale-to-query": attn_scale_to_query}


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
