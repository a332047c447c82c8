"""MNN behind the Runtime interface: the Module API through the runner that also runs on targets
(stages/ondevice/mnn_runner.py), which backends this MNN build really has, and what each setting computes in."""

from __future__ import annotations

import collections
import importlib.metadata
import time
from pathlib import Path

import numpy as np

from stages.core.errors import PipelineError
from stages.ondevice.mnn_runner import MnnModel, RunnerError

# MNN's settings as the integers pymnn reads: defined beside the runner that also runs on targets (one copy)
from stages.ondevice.mnn_settings import (
    DEFAULT_UPSAMPLE,
    MNN_BACKENDS,
    MNN_PRECISIONS,
    MNN_SESSION_MODES,
    UPSAMPLE,
    hints_problem,
)
from stages.runtimes.base import OpTimes, Runtime, Same
from stages.sam.spec import SPECS


def external_hint(path: Path) -> str:
    """MNN loads a model converted with --saveExternalData without its `.weight` file and runs it to NaN,
    saying only "Can't open file" on stdout: name the file when it is missing."""
    weight = Path(path).with_name(Path(path).name + ".weight")
    if weight.exists():
        return ""
    return (f"; if it was converted with --saveExternalData, its weights file {weight} must sit beside it "
            f"(copy both files together)")


class MnnRuntime(Runtime):
    name = "mnn"
    backends = tuple(MNN_BACKENDS)
    cpu_backend = "CPU"
    precisions = tuple(MNN_PRECISIONS)
    # memory/power: the runtime config's modes. shape_mutable=False: the module keeps the shapes of its
    # first run (inputs of a new shape trigger a resize); rearrange=True: weights are laid out once at load.
    # upsample: where a decoder's full-size masks are made: "fp32" (the default) loads the decoder without its
    # in-graph resize and upsamples low_res_masks in fp32 numpy (mnn_runner.upsample_masks); "graph" runs it.
    # hints / session_mode: the runtime manager's set_hint / set_mode, by MNN's names (mnn_settings.MNN_HINTS)
    mode_options = {"memory": ("low", "normal", "high"), "power": ("low", "normal", "high"),
                    "shape_mutable": (True, False), "rearrange": (True, False), "upsample": UPSAMPLE,
                    "hints": hints_problem, "session_mode": tuple(MNN_SESSION_MODES)}

    def __init__(self, path: Path, threads: int = 1, precision: str = "normal", backend: str = "CPU",
                 memory: str = "normal", power: str = "normal", shape_mutable: bool = True,
                 rearrange: bool = False, component: str = "", upsample: str = DEFAULT_UPSAMPLE,
                 hints: dict | None = None, session_mode: str = "", **_):
        """component "decoder": `upsample` applies (default fp32: masks made outside the graph); otherwise the
        model runs whole."""
        upsample = upsample if component in SPECS and SPECS[component].makes_masks else "graph"
        try:  # the same loader the targets run (stages/ondevice/mnn_runner.py)
            self.model = MnnModel(path, threads, precision, backend, memory, power, shape_mutable, rearrange, upsample,
                                  hints, session_mode)
        except RunnerError as e:
            raise PipelineError(str(e)) from None
        self.path, self.settings = self.model.path, self.model.settings
        self.module = self.model.module
        self.input_names, self.output_names = self.model.input_names, self.model.output_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.run(feeds)

    @classmethod
    def version(cls) -> str:
        return importlib.metadata.version("MNN")

    @classmethod
    def unavailable(cls, backend: str) -> str | None:
        return _mnn_backend_probe(backend)

    @classmethod
    def profile(cls, path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int, scratch: Path) -> OpTimes:
        """Per-op times through MNN's Session callbacks (MNN's own op type names and FLOP counts), at precision
        normal. A Session cannot run a graph whose shapes depend on an input's values: give it fixed shapes."""
        interp, session = _session(path, feeds, threads)
        interp.runSession(session)  # warm-up
        out = OpTimes()
        counts: collections.Counter = collections.Counter()
        mflop: dict[str, float] = collections.defaultdict(float)
        for i in range(runs):
            times: dict[str, float] = collections.defaultdict(float)
            start: list[float] = [0.0]

            def begin(tensors, info, start=start):
                start[0] = time.perf_counter()
                return True

            def end(tensors, info, times=times, first=(i == 0), start=start):
                k = info.getType()
                times[k] += time.perf_counter() - start[0]
                if first:
                    counts[k] += 1
                    mflop[k] += info.getFlops()
                return True

            t0 = time.perf_counter()
            interp.runSessionWithCallBackInfo(session, begin, end)
            out.walls.append(time.perf_counter() - t0)
            out.per_run.append(times)
        out.counts, out.mflop, out.graph_ops = dict(counts), dict(mflop), sum(counts.values())
        return out

    @classmethod
    def arithmetic(cls, backend: str, precision: str, options: dict, kind: str, cpu_flags: set[str]) -> dict:
        """MNN's CPU computes fp16 only at precision low on an ARMv8.2 CPU with fp16 arithmetic (asimdhp), bf16
        only with SME2; its GPU backends compute fp16 unless precision is high. A weight-quantized model
        computes int8 (dynamic: activations quantized at run time) only at memory low; otherwise its weights
        are expanded to float at load and only the file is smaller."""
        notes = []
        if backend != "CPU":
            fp16 = precision != "high"
            notes.append(f"GPU backend {'fp16' if fp16 else 'fp32'}")
        elif precision == "low":
            fp16 = "asimdhp" in cpu_flags
            notes.append("precision low in fp16" if fp16 else "precision low computes fp32 on this CPU (no fp16 arithmetic)")
        elif precision == "Low_BF16":
            fp16 = False
            notes.append("bf16" if "sme2" in cpu_flags else "Low_BF16 computes fp32 on this CPU (MNN's bf16 kernels need SME2)")
        else:
            fp16 = False
            notes.append(f"precision {precision}: fp32")
        memory = options.get("memory", "normal")
        if kind == "full-int8":
            int8 = True
            notes.append("full int8 model")
        elif kind == "weight-int8":
            int8 = memory == "low"
            notes.append("dynamic int8 (memory low)" if int8 else "int8 weights expanded to float at load (memory "
                         f"{memory})")
        else:
            int8 = False
        return {"fp16_compute": "yes" if fp16 else "no", "int8_compute": "yes" if int8 else "no",
                "compute_note": "; ".join(notes)}

    @classmethod
    def identical_to(cls, precision: str, options: dict, kind: str, backend: str, cpu_flags: set[str]) -> Same | None:
        """On a CPU without fp16 arithmetic, precision low computes exactly what normal does (measured: outputs
        bit-identical); Low_BF16 likewise without SME2. On such a CPU (x86) memory low on a float model computes
        what memory normal does (measured on vit_t's fp32, fp16 and fp32-static encoders: bit-identical); it
        changes the arithmetic of weight-quantized models only (dynamic int8)."""
        if backend != "CPU":
            return None
        if precision == "low" and "asimdhp" not in cpu_flags:
            return Same("normal", options, "precision low computes exactly what precision normal does")
        if precision == "Low_BF16" and "sme2" not in cpu_flags:
            return Same("normal", options, "precision Low_BF16 computes exactly what precision normal does")
        if options.get("memory") == "low" and kind == "float" and "asimdhp" not in cpu_flags:
            return Same(precision, {k: v for k, v in options.items() if k != "memory"},
                        "memory low computes exactly what memory normal does for a float model")
        return None


def _session(path: Path, feeds: dict[str, np.ndarray], threads: int):
    """An MNN Interpreter and a Session on the CPU with `feeds` copied into its inputs."""
    import MNN

    interp = MNN.Interpreter(str(path))
    session = interp.createSession({"numThread": threads, "precision": "normal"})
    inputs = interp.getSessionInputAll(session)
    for name, t in inputs.items():
        interp.resizeTensor(t, feeds[name].shape)
    interp.resizeSession(session)
    for name, t in inputs.items():
        x = np.ascontiguousarray(feeds[name], dtype=np.float32)
        t.copyFrom(MNN.Tensor(x.shape, MNN.Halide_Type_Float, x, MNN.Tensor_DimensionType_Caffe))
    return interp, session


_PROBED: dict[str, str | None] = {}


def _mnn_backend_probe(backend: str) -> str | None:
    """Ask a child process to open an MNN runtime on `backend`. MNN either raises or prints
    "Can't Find type=N backend, use 0 instead" and silently runs on the CPU: both mean unavailable."""
    if backend == "CPU":
        return None
    if backend not in _PROBED:
        import tempfile

        from stages.core.isolate import run_isolated
        from stages.runtimes.tasks import mnn_probe

        with tempfile.TemporaryDirectory() as d:
            res = run_isolated(mnn_probe, {"backend": backend}, Path(d) / "probe.log", timeout_s=60)
        if "Can't Find type=" in res.log_tail:
            _PROBED[backend] = f"MNN backend {backend} is not in this MNN build (MNN falls back to the CPU)"
        elif not res.ok:
            _PROBED[backend] = f"MNN backend {backend} is not available: {res.why}"
        else:
            _PROBED[backend] = None
    return _PROBED[backend]
