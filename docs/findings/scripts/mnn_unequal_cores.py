"""MNN's CPU thread pool on a 2-core machine: how its multi-thread speed-up depends on every core being equally fast.

Standalone (numpy, MNN, onnxruntime; nothing of this project), so it can go to MNN as it is:

    python mnn_unequal_cores.py encoder.mnn encoder.onnx out.csv [repeats]

For each load (none; a busy loop pinned to the last CPU, so one core is shared and runs the pool's thread there at
half speed) and each thread count (1, 2, 4), `repeats` fresh processes each load the model in MNN and in onnxruntime
(intra-op spinning off, so neither runtime's idle threads take the other's cores), warm both, then alternate 6
calls of each on the same input. One CSV row per process: the median ms of each runtime, their ratio, and how many
of the process's threads were busy (>= 80% of the wall time) during MNN's calls.
"""
import csv
import json
import os
import subprocess
import sys
import time

FIELDS = ["load", "threads", "process", "mnn_p50_ms", "ort_p50_ms", "mnn_over_ort", "mnn_busy_threads",
          "mnn_version", "ort_version", "cpu"]


def _ticks() -> dict[str, int]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[tid] = int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return out


def child(mnn_path: str, onnx_path: str, threads: int) -> dict:
    import MNN
    import MNN.expr as F
    import MNN.nn as nn
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    rm = nn.create_runtime_manager(({"backend": 0, "numThread": threads, "precision": 0, "memory": 0, "power": 0},))
    module = nn.load_module_from_file(mnn_path, [], [], runtime_manager=rm)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def mnn():
        np.array(module.forward([F.const(x, list(x.shape), F.NCHW)])[0].read())

    def onnx():
        sess.run(None, {name: x})

    mnn(), onnx()
    times = {"mnn": [], "ort": []}
    busy_ticks: dict[str, int] = {}
    mnn_wall = 0.0
    for _ in range(6):
        t0, k0 = time.perf_counter(), _ticks()
        mnn()
        dt, k1 = time.perf_counter() - t0, _ticks()
        mnn_wall += dt
        times["mnn"].append(dt * 1e3)
        for tid, t in k1.items():
            busy_ticks[tid] = busy_ticks.get(tid, 0) + t - k0.get(tid, 0)
        t0 = time.perf_counter()
        onnx()
        times["ort"].append((time.perf_counter() - t0) * 1e3)
    hz = os.sysconf("SC_CLK_TCK")
    busy = sum(1 for t in busy_ticks.values() if t / hz >= 0.8 * mnn_wall)
    p50 = {k: float(np.median(v)) for k, v in times.items()}
    return {"mnn_p50_ms": round(p50["mnn"], 1), "ort_p50_ms": round(p50["ort"], 1),
            "mnn_over_ort": round(p50["mnn"] / p50["ort"], 3), "mnn_busy_threads": busy,
            "mnn_version": MNN.version(), "ort_version": ort.__version__}


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return f"{names[0] if names else '?'} x{os.cpu_count()}"


def _busy_loop(cpu: int) -> subprocess.Popen:
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], argv[2], int(argv[3]))))
        return 0
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    mnn_path, onnx_path, out = argv[:3]
    repeats = int(argv[3]) if len(argv) == 4 else 3
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for load in ("none", f"busy loop on cpu{os.cpu_count() - 1}"):
            busy = _busy_loop(os.cpu_count() - 1) if load != "none" else None
            try:
                for threads in (1, 2, 4):
                    for process in range(repeats):
                        r = subprocess.run([sys.executable, __file__, "--child", mnn_path, onnx_path, str(threads)],
                                           capture_output=True, text=True, timeout=600)
                        row = json.loads(r.stdout.strip().splitlines()[-1])
                        row.update(load=load, threads=threads, process=process, cpu=_cpu())
                        writer.writerow(row)
                        f.flush()
                        print(json.dumps(row), flush=True)
            finally:
                if busy:
                    busy.kill()
                    busy.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
