"""Stage convert: each simplified ONNX to MNN in every configured variant (fp32, fp16, weight-only int8, ...).

Each conversion runs in its own child process (the converter can segfault) and counts as done only when
the file exists and MNN loads it and runs it once. A failed cell is a failed row; the other cells go on.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.conversion.mnn import converter_argv, mnnconvert, output_names, pin_uuid, static_flags
from stages.core.artifacts import atomic_output, sidecars
from stages.core.isolate import run_isolated
from stages.core.status import Status
from stages.runtimes.onnx_rewrites import apply_rewrites, split_flags
from stages.sam.spec import component_example

log = logging.getLogger(__name__)


class _CellFailed(Exception):
    pass


def run(ctx) -> list[dict]:
    ccfg = ctx.cfg.convert
    rows = []
    feeds_cache: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="convert-") as tmpdir:
        for cell in tqdm(ctx.cells, desc="convert", unit="model"):
            (onnx_src,) = cell.deps
            src = onnx_src
            (out,) = cell.outs
            component, variant = cell.values["component"], cell.values["variant"]
            if component not in feeds_cache:
                feeds_cache[component] = Path(tmpdir) / f"{component}.npz"
                np.savez(feeds_cache[component], **component_example(component, ctx.cfg.seed))
            flags, rewrites = split_flags([*ccfg.variants[variant], *ccfg.extra_args], f"convert.variants.{variant}")
            flags, static = static_flags(src, flags, Path(tmpdir))
            t0 = time.perf_counter()
            logfile = ctx.build / "logs" / f"convert-{cell.key}.log"
            done: dict[str, int] = {}
            try:
                if rewrites:  # the rewritten copy is what MNN's converter reads
                    src = Path(tmpdir) / f"{cell.key}.onnx"
                    try:
                        done = apply_rewrites(onnx_src, rewrites, src)
                    except Exception as e:  # a graph a rewrite cannot handle fails this cell, not the stage
                        raise _CellFailed(f"rewrite {', '.join(rewrites)} failed on {onnx_src}: {e}") from None
                    log.info("convert %s: rewrites %s", cell.key, ", ".join(f"{k} ({v} sites)" for k, v in done.items()))
                with atomic_output(out) as tmp:
                    res = run_isolated(mnnconvert, {"argv": converter_argv(src, tmp, flags), "dst": str(tmp),
                                                      "feeds": str(feeds_cache[component]),
                                                      "outputs": output_names(src)}, logfile, ccfg.timeout_s)
                    if not res.ok:
                        raise _CellFailed(res.why)
                    pin_uuid(tmp)
                status, info = str(Status.ok()), res.result
            except _CellFailed as e:
                status, info = str(Status.failed(e)), {}
                for q in [out, *sidecars(out)]:  # an artifact from an earlier config must not pass for this one
                    q.unlink(missing_ok=True)
                log.error("convert %s failed: %s (log: %s)", cell.key, e, logfile)
            rows.append({"cell": cell.key, "component": component, "variant": variant, **ctx.describe(out),
                         "seconds": round(time.perf_counter() - t0, 2), "flags": " ".join(ccfg.variants[variant] + ccfg.extra_args), "static_shapes": static,
                         "rewrites": "; ".join(f"{k}: {v} sites" + (" (no effect)" if not v else "")
                                               for k, v in done.items()),
                         "smoke_run_ms": round(info.get("run_seconds", float("nan")) * 1000, 1),
                         "log": ctx.rel(logfile), "status": status})
    return rows
