"""onnxruntime behind the Runtime interface: one InferenceSession on one execution provider."""

from __future__ import annotations

import collections
import importlib.metadata
import json
import time
from pathlib import Path

import numpy as np

from stages.core.errors import PipelineError
from stages.runtimes.base import OpTimes, Runtime

ORT_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
                 "OpenVINOExecutionProvider", "DnnlExecutionProvider", "CoreMLExecutionProvider",
                 "XnnpackExecutionProvider", "ROCMExecutionProvider")



class OrtRuntime(Runtime):
    name = "onnxruntime"
    backends = ORT_PROVIDERS
    cpu_backend = "CPUExecutionProvider"
    fixed_precision = "fp32"  # onnxruntime runs the graph's own (float) types: parity names its rows fp32
    # spinning: the intra-op pool's threads spin after each parallel section before they sleep
    # (session.intra_op.allow_spinning; onnxruntime's default is on)
    mode_options = {"spinning": (True, False)}

    def __init__(self, path: Path, threads: int = 1, precision: str = "fp32",
                 backend: str = "CPUExecutionProvider", profile_prefix: str = "", spinning: bool = True, **_):
        """profile_prefix: run with onnxruntime's profiler on, its trace written to files with this prefix."""
        import onnxruntime as ort

        why = self.unavailable(backend)
        if why:
            raise PipelineError(why)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=[backend])
        except Exception as e:
            raise PipelineError(f"onnxruntime cannot load {path}: {e}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs, strict=True))

    @classmethod
    def version(cls) -> str:
        return importlib.metadata.version("onnxruntime")

    @classmethod
    def shares_process_why(cls, opts: dict) -> str | None:
        if opts.get("spinning", True):
            return ("onnxruntime's intra-op threads spin after each call and take the cores from the next call of "
                    "the other runtime in the same process (measured: docs/findings/2026-12-07-ort-spinning.md); "
                    "give onnxruntime a mode with spinning: false for this comparison")
        return None

    @classmethod
    def profile(cls, path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int, scratch: Path) -> OpTimes:
        """onnxruntime's profiler on the CPU: node kernel times (it counts no FLOPs)."""
        rt = cls(path, threads=threads, profile_prefix=f"{scratch}-ort")
        rt.run(feeds)  # warm-up
        out = OpTimes()
        for _ in range(runs):
            t0 = time.perf_counter()
            rt.run(feeds)
            out.walls.append(time.perf_counter() - t0)
        trace = json.loads(Path(rt.session.end_profiling()).read_text())
        nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        per_node = len(nodes) // (runs + 1)
        for i in range(runs):
            times: dict[str, float] = collections.defaultdict(float)
            for e in nodes[(i + 1) * per_node:(i + 2) * per_node]:
                times[e["args"]["op_name"]] += e["dur"] / 1e6
            out.per_run.append(times)
        counts: collections.Counter = collections.Counter(e["args"]["op_name"] for e in nodes[per_node:2 * per_node])
        out.counts, out.mflop = dict(counts), {k: float("nan") for k in counts}
        out.graph_ops = per_node
        return out

    @classmethod
    def int8_kernels(cls, cpu_flags: set[str]) -> str:
        """onnxruntime's x86 int8 kernels (MLAS, uint8 activations x int8 weights) multiply with VNNI's vpdpbusd
        where the CPU has it (32-bit sums), else with AVX2's vpmaddubsw, whose int16 pair sums saturate: the
        same int8 model then gives other outputs (vit_t's dynamic-int8 decoder: mask IoU 0.96 on an Intel
        AVX512-VNNI machine, 0.58 on an AMD AVX2 one). ARM's sdot/i8mm kernels sum in 32 bits."""
        if cpu_flags & {"avx512_vnni", "avx_vnni"}:
            return "x86-vnni"
        if "avx2" in cpu_flags:
            return "x86-avx2-saturating"
        return "arm" if cpu_flags & {"asimd", "asimddp"} else "other"

    @classmethod
    def arithmetic(cls, backend: str, precision: str, options: dict, kind: str, cpu_flags: set[str]) -> dict:
        out = super().arithmetic(backend, precision, options, kind, cpu_flags)
        if kind == "full-int8":
            k = cls.int8_kernels(cpu_flags)
            out["int8_kernels"] = k
            if k == "x86-avx2-saturating":
                out["compute_note"] += " (u8s8 with AVX2 vpmaddubsw: int16 sums saturate; a VNNI CPU computes otherwise)"
            elif k == "x86-vnni":
                out["compute_note"] += " (u8s8 with VNNI: 32-bit sums)"
        return out

    @classmethod
    def unavailable(cls, backend: str) -> str | None:
        import onnxruntime as ort

        have = ort.get_available_providers()
        if backend not in have:
            return f"onnxruntime execution provider {backend} is not installed (installed: {', '.join(have)})"
        return None
