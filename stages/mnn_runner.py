"""Run an MNN model on a target: the one piece of this project that runs on the device (or its emulation).

Needs only the standard library, numpy and MNN, so it runs wherever a phone-class Python has those: the
host, the emulated ARM64 target (QEMU user mode, stages/targets.py), later a board over SSH. The host's
MnnRuntime loads and runs models through MnnModel below, so every MNN number comes from the same code.

    python mnn_runner.py REQUEST.json

REQUEST: {} (a probe: only the RESULT's first four keys), or {"model": path, "feeds": .npz with "case::input" keys, "out": .npz to write ("case::output"),
          "settings": {"threads", "precision", "backend", "memory", "power", "shape_mutable", "rearrange"},
          "result_file": .json to write}
RESULT:  {"mnn_version", "machine", "cpu_features" (what MNN reports about the CPU it runs on), "python", "inputs",
          "outputs", "load_seconds", "run_seconds": [one per case], "cases"} or {"error": "..."}
Every case runs in the order given; a crash (segfault) leaves no result file and the caller reports the exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# pymnn's runtime config (getScheduleConfig in pymnn/src/util.h, MNN 3.6.1) takes integers: the backend as
# MNN's forward type (its strings must be upper case: "OpenCL" raises "backend not support" even in builds
# that have OpenCL), precision 0-3, and memory / power 0-2 (a string there is silently ignored). So the
# project's names are mapped to those integers here, and only here.
MNN_PRECISIONS = {"normal": 0, "high": 1, "low": 2, "Low_BF16": 3}
MNN_BACKENDS = {"CPU": 0, "Metal": 1, "CUDA": 2, "OpenCL": 3, "OpenGL": 6, "Vulkan": 7, "NN": 5}
MNN_MODES = {"normal": 0, "high": 1, "low": 2}  # memory and power
CASE_SEP = "::"
FEATURES_PREFIX = "The device supports:"


class RunnerError(Exception):
    """A request MNN cannot serve (bad setting, missing or foreign model file): a message, not a crash."""


def mnn_schedule(backend: str, threads: int, precision: str, memory: str = "normal", power: str = "normal") -> dict:
    """The runtime config MNN reads, with every setting as the integer MNN understands."""
    return {"backend": MNN_BACKENDS[backend], "numThread": threads, "precision": MNN_PRECISIONS[precision],
            "memory": MNN_MODES[memory], "power": MNN_MODES[power]}


@contextlib.contextmanager
def captured_stdout(into: list[str]):
    """Capture what native code prints on file descriptor 1 (MNN prints the CPU features with printf),
    echo it to the real stdout afterwards (the caller's log keeps it), and add its lines to `into`."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            into.extend(text.splitlines())


_FEATURES: list[str] = []


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


class MnnModel:
    """An MNN model loaded with one runtime config; run(feeds) -> outputs, all float32 NCHW."""

    def __init__(self, path, threads: int = 1, precision: str = "normal", backend: str = "CPU",
                 memory: str = "normal", power: str = "normal", shape_mutable: bool = True, rearrange: bool = False):
        mnn = import_mnn()
        import MNN.expr as F
        import MNN.nn as nn

        for what, value, known in (("precision", precision, MNN_PRECISIONS), ("backend", backend, MNN_BACKENDS),
                                   ("memory", memory, MNN_MODES), ("power", power, MNN_MODES)):
            if value not in known:  # MNN would ignore or misread it without a word: refuse it here
                raise RunnerError(f"MNN {what} {value!r} is not one of {', '.join(known)}")
        if not Path(path).is_file():
            raise RunnerError(f"MNN model {path} does not exist")
        self.version = mnn.version()
        self._F = F
        self.path = Path(path)
        self.settings = {"backend": backend, "precision": precision, "memory": memory, "power": power}
        try:
            self.runtime_manager = nn.create_runtime_manager((mnn_schedule(backend, threads, precision, memory, power),))
        except Exception as e:
            raise RunnerError(f"MNN could not open backend {backend} ({e.__cause__ or e})") from None
        try:
            self.module = nn.load_module_from_file(str(path), [], [], runtime_manager=self.runtime_manager,
                                                   shape_mutable=shape_mutable, rearrange=rearrange)
        except Exception:  # MNN raises SystemError for a truncated or foreign file
            self.module = None
        if self.module is None:
            raise RunnerError(f"MNN cannot load {path} (not an MNN model, or truncated)")
        info = self.module.get_info()
        self.input_names = list(info["inputNames"])
        self.output_names = list(info["outputNames"])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        F = self._F
        inputs = [F.const(np.ascontiguousarray(feeds[n], dtype=np.float32), list(feeds[n].shape), F.NCHW)
                  for n in self.input_names]
        outs = self.module.forward(inputs)
        result = {}
        for name, var in zip(self.output_names, outs, strict=True):
            if var.data_format == F.NC4HW4:
                var = F.convert(var, F.NCHW)
            result[name] = np.array(var.read(), copy=True)
        return result


def _cases(path: str) -> dict[str, dict[str, np.ndarray]]:
    data = np.load(path)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in data.files:
        case, name = key.rsplit(CASE_SEP, 1)
        out.setdefault(case, {})[name] = data[key]
    return out


def about() -> dict:
    """What the target is: MNN's version, the machine and the CPU features MNN reports."""
    mnn = import_mnn()
    return {"mnn_version": mnn.version(), "machine": platform.machine(), "cpu_features": cpu_features(),
            "python": platform.python_version(), "numpy_version": np.__version__}


def serve(req: dict) -> dict:
    """Load the model once and run every case; write the outputs; return what ran and where. A request
    without a model is a probe: only what the target is."""
    if "model" not in req:
        return about()
    print(f"mnn_runner: {platform.machine()} python {platform.python_version()}: {req['model']} "
          f"{json.dumps(req.get('settings', {}))}", flush=True)
    t0 = time.perf_counter()
    model = MnnModel(req["model"], **req.get("settings", {}))
    load_seconds = time.perf_counter() - t0
    outs, times = {}, []
    cases = _cases(req["feeds"])
    for case, feeds in cases.items():
        t0 = time.perf_counter()
        for name, value in model.run(feeds).items():
            outs[f"{case}{CASE_SEP}{name}"] = value
        times.append(time.perf_counter() - t0)
    np.savez(req["out"], **outs)
    return {**about(), "inputs": model.input_names,
            "outputs": model.output_names, "load_seconds": load_seconds, "run_seconds": times, "cases": len(cases)}


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
