"""Run an MNN model on a target: the one piece of this project that runs on the device (or its emulation).

Needs only the standard library, numpy and MNN, so it runs wherever a phone-class Python has those: the
host, the emulated ARM64 target (QEMU user mode, stages/runtimes/targets.py), later a board over SSH. The host's
MnnRuntime loads and runs models through MnnModel below, so every MNN number comes from the same code.

    python mnn_runner.py REQUEST.json

REQUEST: {} (a probe: only what the target is), {"backends": [names]} (which MNN backends open there), or
          {"model": path, "feeds": .npz with "case::input" keys, "out": .npz to write ("case::output"; optional
          when timing), "settings": {"threads", "precision", "backend", "memory", "power", "shape_mutable",
          "rearrange", "upsample", "hints", "session_mode"}, "timing": {"warmup", "min_runs", "min_seconds", "max_seconds", "ci_pct"}
          (optional: the bench's stop rule, applied to each case), "result_file": .json to write}
RESULT:  {"mnn_version", "machine", "cpu_features" (what MNN reports about the CPU it runs on), "cpu_model", "cores",
          "python", "inputs", "outputs", "load_seconds", "run_seconds": [one per case], "cases", "timings": [one per
          case, with timing], "peak_rss_mb", "os_threads"} or {"error": "..."}
Every case runs in the order given; a crash (segfault) leaves no result file and the caller reports the exit.
A target gets this file and its siblings mnn_settings.py, process.py and timing.py (stdlib) and masks.py (numpy)
side by side (stages/ondevice/__init__.py: RUNNER_FILES), and nothing else of the project.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # on a target: one BLAS thread, set before numpy loads it (see single_threaded_blas)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

try:  # on a target the siblings lie beside this file; in the project they are in stages/ondevice/
    import mnn_settings
    from masks import IMAGE_SIZE, resized_shape, upsample_masks  # noqa: F401
    from process import captured_stdout, cpu_model, process_stats, single_threaded_blas
except ImportError:
    from stages.ondevice import mnn_settings
    from stages.ondevice.masks import IMAGE_SIZE, resized_shape, upsample_masks  # noqa: F401
    from stages.ondevice.process import captured_stdout, cpu_model, process_stats, single_threaded_blas

CASE_SEP = "::"
FEATURES_PREFIX = "The device supports:"
class RunnerError(Exception):
    """A request MNN cannot serve (bad setting, missing or foreign model file): a message, not a crash."""


_FEATURES: list[str] = []  # what MNN printed at import


def import_mnn():
    """Import MNN, keeping the CPU-feature line it prints at import ("The device supports: i8sdot:1, fp16:1,
    i8mm: 1, sve2: 1, sme2: 0"): what MNN picks its kernels by on this CPU."""
    if "MNN" not in sys.modules:
        with captured_stdout(_FEATURES):
            import MNN  # noqa: F401
    import MNN

    return MNN


def cpu_features() -> str:
    """MNN's own account of this CPU, e.g. "i8sdot:1 fp16:1 i8mm:1 sve2:1 sme2:0" ('' if it printed none)."""
    import_mnn()
    for line in _FEATURES:
        if line.startswith(FEATURES_PREFIX):
            return " ".join(p.replace(" ", "") for p in line[len(FEATURES_PREFIX):].split(",") if p.strip())
    return ""


_IO_NAMES: dict[tuple, tuple[list[str], list[str]]] = {}


def _io_names(path: Path, module) -> tuple[list[str], list[str]]:
    """A file's input and output names, asked of MNN once per file (and size and mtime) in a process: pymnn's
    Module.get_info() keeps about 4 MB per call, which a server loading variants again and again piles up."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _IO_NAMES:
        info = module.get_info()
        _IO_NAMES[key] = (list(info["inputNames"]), list(info["outputNames"]))
    return list(_IO_NAMES[key][0]), list(_IO_NAMES[key][1])


class MnnModel:
    """An MNN model loaded with one runtime config; run(feeds) -> outputs, all float32 NCHW."""

    def __init__(self, path, threads: int = 1, precision: str = "normal", backend: str = "CPU",
                 memory: str = "normal", power: str = "normal", shape_mutable: bool = True, rearrange: bool = False,
                 upsample: str = mnn_settings.DEFAULT_UPSAMPLE, hints: dict | None = None, session_mode: str = ""):
        """upsample (a SAM decoder only): "graph" runs the whole decoder; "fp32" loads it without the resize of
        its masks to orig_im_size (the module stops at low_res_masks and iou_predictions) and makes `masks`
        here with upsample_masks, in fp32, whatever precision MNN computes in."""
        mnn = import_mnn()
        import MNN.expr as F
        import MNN.nn as nn

        s = mnn_settings
        for what, value, known in (("precision", precision, s.MNN_PRECISIONS), ("backend", backend, s.MNN_BACKENDS),
                                   ("memory", memory, s.MNN_MODES), ("power", power, s.MNN_MODES),
                                   ("upsample", upsample, s.UPSAMPLE)):
            if value not in known:  # MNN would ignore or misread it without a word: refuse it here
                raise RunnerError(f"MNN {what} {value!r} is not one of {', '.join(known)}")
        if hints is not None and (why := s.hints_problem(hints)):
            raise RunnerError(f"MNN hints: {why}")
        if session_mode and session_mode not in s.MNN_SESSION_MODES:
            raise RunnerError(f"MNN session_mode {session_mode!r} is not one of {', '.join(s.MNN_SESSION_MODES)}")
        if not Path(path).is_file():
            raise RunnerError(f"MNN model {path} does not exist")
        self.version = mnn.version()
        self._F = F
        self.path = Path(path)
        self.settings = {"backend": backend, "precision": precision, "memory": memory, "power": power}
        self.upsample, self.upsample_seconds = upsample, 0.0
        try:
            self.runtime_manager = nn.create_runtime_manager((s.mnn_schedule(backend, threads, precision, memory, power),))
        except Exception as e:
            raise RunnerError(f"MNN could not open backend {backend} ({e.__cause__ or e})") from None
        try:  # before the module loads: the backend reads them at creation
            s.set_hints(self.runtime_manager, hints or {}, session_mode)
        except Exception as e:  # pymnn raises a bare Exception for a value it cannot read
            raise RunnerError(f"MNN refused hints {hints} / session_mode {session_mode!r}: {e}") from None
        self.settings.update({k: v for k, v in (("hints", dict(hints or {})), ("session_mode", session_mode)) if v})
        self.module = self._load(nn, [], [], shape_mutable, rearrange)
        self.input_names, self.output_names = _io_names(self.path, self.module)
        self._inputs, self._outputs = self.input_names, self.output_names
        if upsample == "fp32" and not ({"masks", "low_res_masks"} <= set(self.output_names)
                                       and "orig_im_size" in self.input_names):
            # not a SAM decoder, or one without low_res_masks (MNN's full-int8 decoder): it runs whole, and its
            # `upsample` says so (a caller checking the interface names what the file is)
            self.upsample = "graph"
        self.settings["upsample"] = self.upsample
        if self.upsample == "fp32":
            self._inputs = [n for n in self.input_names if n != "orig_im_size"]
            self._outputs = [n for n in self.output_names if n != "masks"]
            self.module = self._load(nn, self._inputs, self._outputs, shape_mutable, rearrange)

    def _load(self, nn, inputs: list[str], outputs: list[str], shape_mutable: bool, rearrange: bool):
        """The module from `inputs` to `outputs` ([] and []: the whole graph); MNN computes only what they need."""
        try:
            module = nn.load_module_from_file(str(self.path), inputs, outputs, runtime_manager=self.runtime_manager,
                                              shape_mutable=shape_mutable, rearrange=rearrange)
        except Exception:  # MNN raises SystemError for a truncated or foreign file
            module = None
        if module is None:
            raise RunnerError(f"MNN cannot load {self.path} (not an MNN model, or truncated)")
        return module

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        F = self._F
        inputs = [F.const(np.ascontiguousarray(feeds[n], dtype=np.float32), list(feeds[n].shape), F.NCHW)
                  for n in self._inputs]
        outs = self.module.forward(inputs)
        result = {}
        for name, var in zip(self._outputs, outs, strict=True):
            if var.data_format == F.NC4HW4:
                var = F.convert(var, F.NCHW)
            result[name] = np.array(var.read(), copy=True)
        if self._outputs is not self.output_names:  # upsample fp32: the masks, made here
            t0 = time.perf_counter()
            with single_threaded_blas():
                result["masks"] = upsample_masks(result["low_res_masks"], feeds["orig_im_size"])
            self.upsample_seconds = time.perf_counter() - t0
        return {n: result[n] for n in self.output_names}


def save_cases(path, cases: dict[str, dict[str, np.ndarray]]):
    """Many runs' feeds in one .npz: key "case::input" (the runner runs every case and answers in kind)."""
    np.savez(path, **{f"{case}{CASE_SEP}{k}": v for case, feeds in cases.items() for k, v in feeds.items()})
    return path


def load_cases(path) -> dict[str, dict[str, np.ndarray]]:
    """A .npz of save_cases (or the runner's answer) as {case: {name: array}}."""
    data = np.load(path)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in data.files:
        case, name = key.rsplit(CASE_SEP, 1)
        out.setdefault(case, {})[name] = data[key]
    return out


def about() -> dict:
    """What the target is: MNN's version, the machine, its CPU and cores, and the CPU features MNN reports."""
    mnn = import_mnn()
    return {"mnn_version": mnn.version(), "machine": platform.machine(), "cpu_features": cpu_features(),
            "cpu_model": cpu_model(), "cores": os.cpu_count() or 0,
            "python": platform.python_version(), "numpy_version": np.__version__}


def backends(names: list[str]) -> dict[str, str | None]:
    """name -> None when MNN opens that backend here, else why not. MNN either raises or prints "Can't Find
    type=N backend, use 0 instead" and silently runs on the CPU: both mean unavailable."""
    import MNN.nn as nn

    import_mnn()
    out: dict[str, str | None] = {}
    for name in names:
        if name == "CPU":
            out[name] = None
            continue
        if name not in mnn_settings.MNN_BACKENDS:
            out[name] = f"MNN knows no backend {name!r}"
            continue
        said: list[str] = []
        try:
            with captured_stdout(said):
                nn.create_runtime_manager((mnn_settings.mnn_schedule(name, 1, "normal"),))
        except Exception as e:
            out[name] = f"MNN backend {name} is not available: {e}"
            continue
        fell_back = any("Can't Find type=" in line for line in said)
        out[name] = f"MNN backend {name} is not in this MNN build (MNN falls back to the CPU)" if fell_back else None
    return out


def _stop_rule(spec: dict):
    """The bench's stop rule, from stages/ondevice/timing.py: beside this file on a target (imported only when timing:
    its `statistics` import costs seconds under QEMU), or the project's own on the host."""
    try:
        import timing
    except ImportError:
        from stages.ondevice import timing

        sys.modules["timing"] = timing
    return timing.StopRule(**spec)


def serve(req: dict) -> dict:
    """Load the model once and run every case; write the outputs; return what ran and where. A request
    without a model is a probe: only what the target is."""
    if "backends" in req:
        return {**about(), "backends": backends(req["backends"])}
    if "model" not in req:
        return about()
    print(f"mnn_runner: {platform.machine()} python {platform.python_version()}: {req['model']} "
          f"{json.dumps(req.get('settings', {}))}", flush=True)
    t0 = time.perf_counter()
    model = MnnModel(req["model"], **req.get("settings", {}))
    load_seconds = time.perf_counter() - t0
    outs, times, timings = {}, [], []
    cases = load_cases(req["feeds"])
    rule = _stop_rule(req["timing"]) if req.get("timing") else None
    for case, feeds in cases.items():
        t0 = time.perf_counter()
        for name, value in model.run(feeds).items():
            outs[f"{case}{CASE_SEP}{name}"] = value
        times.append(time.perf_counter() - t0)
        if rule is not None:  # the bench's stop rule, after the run above (which also checked the outputs)
            from timing import measure, timing_columns  # importable once _stop_rule ran

            timing = measure(lambda feeds=feeds: model.run(feeds), rule)
            timings.append(timing_columns(timing, first_run_s=times[-1]))
    bad = sorted({k.rsplit(CASE_SEP, 1)[1] for k, v in outs.items() if not np.all(np.isfinite(v))})
    if req.get("out"):
        np.savez(req["out"], **outs)
    return {**about(), "inputs": model.input_names, "upsample": model.upsample, "nonfinite_outputs": bad,
            "outputs": model.output_names, "load_seconds": load_seconds, "run_seconds": times, "cases": len(cases),
            "timings": timings, "upsample_seconds": model.upsample_seconds, **process_stats()}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: mnn_runner.py REQUEST.json", file=sys.stderr)
        return 2
    req = json.loads(Path(argv[0]).read_text())
    try:
        result = serve(req)
    except RunnerError as e:
        result = {"error": str(e)}
    Path(req["result_file"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
