"""MNN's settings as the runner passes them to pymnn: the project's names mapped to the integers MNN reads, the
hints and session modes a sweep may set, and where a SAM decoder's masks are made. One home: the host's runtime,
the sweep's checks and the runner on a device all read these (a sibling of mnn_runner.py, copied with it)."""

from __future__ import annotations

# pymnn's runtime config (getScheduleConfig in pymnn/src/util.h, MNN 3.6.1) takes integers: the backend as
# MNN's forward type (its strings must be upper case: "OpenCL" raises "backend not support" even in builds
# that have OpenCL), precision 0-3, and memory / power 0-2 (a string there is silently ignored). So the
# project's names are mapped to those integers here, and only here.
MNN_PRECISIONS = {"normal": 0, "high": 1, "low": 2, "Low_BF16": 3}
MNN_BACKENDS = {"CPU": 0, "Metal": 1, "CUDA": 2, "OpenCL": 3, "OpenGL": 6, "Vulkan": 7, "NN": 5}
MNN_MODES = {"normal": 0, "high": 1, "low": 2}  # memory and power
# The runtime manager's hints (set_hint: Interpreter::HintMode in MNN 3.6.1's Interpreter.hpp) and session modes
# (set_mode: Interpreter::SessionMode) a sweep mode may set, by MNN's own names; a hint takes an integer (a list
# of them for CPU_CORE_IDS). Those for the CPU's threads and its kernels' choices; none is set unless asked.
MNN_HINTS = {"WINOGRAD_MEMORY_LEVEL": 3, "GEOMETRY_COMPUTE_MASK": 4, "DYNAMIC_QUANT_OPTIONS": 5,
             "CPU_LITTLECORE_DECREASE_RATE": 6, "INIT_THREAD_NUMBER": 13, "CPU_CORE_IDS": 14}
MNN_SESSION_MODES = {"Session_Release": 1, "Session_Memory_Cache": 11, "Session_Codegen_Enable": 13,
                     "Session_Resize_Fix": 15}
UPSAMPLE = ("graph", "fp32")  # where a SAM decoder's masks are made: its in-graph resize, or in fp32 numpy
# the project's one default: a decoder's masks are upsampled from low_res_masks in fp32 numpy (mnn_runner.MnnModel),
# whatever precision MNN computes in; "graph" runs the decoder's own resize
DEFAULT_UPSAMPLE = "fp32"


def hints_problem(hints) -> str | None:
    """None when `hints` is a mapping of MNN_HINTS names to integers (or lists of them), else what is wrong."""
    if not isinstance(hints, dict) or not hints:
        return f"expected a mapping of MNN hint names ({', '.join(MNN_HINTS)}) to integers, got {hints!r}"
    for name, value in hints.items():
        if name not in MNN_HINTS:
            return f"{name!r} is not an MNN hint this project sets (hints: {', '.join(MNN_HINTS)})"
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return f"{name}: expected an integer or a list of integers, got {value!r}"
    return None


def mnn_schedule(backend: str, threads: int, precision: str, memory: str = "normal", power: str = "normal") -> dict:
    """The runtime config MNN reads, with every setting as the integer MNN understands."""
    return {"backend": MNN_BACKENDS[backend], "numThread": threads, "precision": MNN_PRECISIONS[precision],
            "memory": MNN_MODES[memory], "power": MNN_MODES[power]}


def set_hints(runtime_manager, hints: dict, session_mode: str = "") -> None:
    """Set `hints` (MNN_HINTS names) and `session_mode` (a MNN_SESSION_MODES name) on a pymnn runtime manager."""
    for name, value in hints.items():
        runtime_manager.set_hint(MNN_HINTS[name], value)
    if session_mode:
        runtime_manager.set_mode(MNN_SESSION_MODES[session_mode])
