"""The decoder as the profile converts it: cut at low_res_masks, and MNN's converter never losing an output in
silence (its --saveStaticModel drops low_res_masks from SAM's decoder: "Can't find low_res_masks output")."""

from __future__ import annotations

import numpy as np

from stages.conversion.mnn import converter_argv, mnnconvert, output_names, static_flags
from stages.core.isolate import run_isolated
from stages.profile import cut_outputs, fix_shapes
from stages.sam.spec import SPECS, decoder_feeds


def test_a_converted_decoder_keeps_every_output_or_says_which_it_lost(fp32_build, tmp_path):
    sim = fp32_build[0] / "build" / "tiny_fp32" / "onnx" / "decoder.sim.onnx"
    values, dims = SPECS["decoder"].fixed_inputs(1, (120, 90))
    fixed, cut = tmp_path / "fixed.onnx", tmp_path / "cut.onnx"
    fix_shapes(sim, fixed, values, dims)
    kept = cut_outputs(fixed, cut, {"masks"})
    assert set(kept) == {"iou_predictions", "low_res_masks"} and output_names(cut) == list(kept)
    emb = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    feeds = decoder_feeds(emb, np.array([[40.0, 30.0]], np.float32), np.ones(1, np.float32), (120, 90))
    np.savez(tmp_path / "feeds.npz", **{k: v for k, v in feeds.items() if k not in values})
    for static in (False, True):
        flags, said = static_flags(cut, ["--saveStaticModel"] if static else [], tmp_path)
        assert said == ("yes" if static else "no")
        dst = tmp_path / f"cut-{said}.mnn"
        res = run_isolated(mnnconvert, {"argv": converter_argv(cut, dst, flags), "dst": str(dst),
                                        "feeds": str(tmp_path / "feeds.npz"), "outputs": output_names(cut)},
                           tmp_path / f"convert-{said}.log", 300)
        if res.ok:  # every output of the ONNX is in the MNN file
            assert set(res.result["outputs"]) == set(kept), res.result
        else:  # or the row says which one MNN's converter dropped (vit_t's decoder: low_res_masks; tiny: none)
            assert static and "dropped output(s) low_res_masks" in res.why, res.why
    # the check itself: an output the file lacks fails the conversion, by name
    res = run_isolated(mnnconvert, {"argv": converter_argv(cut, tmp_path / "c.mnn", []), "dst": str(tmp_path / "c.mnn"),
                                    "feeds": str(tmp_path / "feeds.npz"), "outputs": [*output_names(cut), "masks"]},
                       tmp_path / "convert-check.log", 300)
    assert not res.ok and "dropped output(s) masks" in res.why, res.why
