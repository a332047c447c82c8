"""Shared fixtures: tiny SAMs (real modules, small widths) run through the real pipeline once per session.

Each tiny pipeline is built once; a test that changes files or re-runs stages works on a copy of it. The lock
file holds paths relative to the root, so a copied build is up to date in its new place.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from stages.config import load_model_config
from stages.engine.run import run_pipeline

HERE = Path(__file__).resolve().parent
ROOT_DIR = HERE.parent
TINY = HERE / "configs" / "tiny_vit_t.yaml"
ALL_STAGES = ["export_encoder", "export_decoder", "simplify", "convert", "quantize", "parity", "bench", "profile",
              "report"]
# the smallest useful tiny config: one MNN variant, one photo, no full int8
FP32_ONLY = {"convert.variants": {"fp32": []}, "name": "tiny_fp32", "parity.images": ["chelsea"],
             "parity.mnn_precisions": {"fp32": ["normal"]}, "quantize.variants": {}}


# `make test` runs two pytest-xdist workers (--dist worksteal). Each session pipeline below is built once per
# pytest run, by whichever worker needs it first, in a folder both workers share (shared_build); the other
# worker waits for it and reuses it. Tests read these builds and copy them before changing anything.


def shared_build(tmp_path_factory, name: str, make):
    """`make(folder)` run once per pytest run (across xdist workers: an flock on a folder they share); its
    return value, pickled, is every later caller's."""
    import fcntl
    import os
    import pickle

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / f"shared-{name}"
    with open(shared / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / f"shared-{name}.pkl"
        if done.exists():
            return pickle.loads(done.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
        folder.mkdir()
        value = make(folder)
        done.write_bytes(pickle.dumps(value))
        return value


# The slow tier (`make test-slow`, run by CI after `make test`): tests whose set-up or body takes minutes (the
# emulated ARM64 target, a throwaway clone's regress, the external-weights pipeline, a bench over a dozen
# faulty SSH devices); single tests are marked @pytest.mark.slow where they are.
SLOW_FIXTURES = {"arm", "clone", "external_run", "fault_bench"}


def pytest_itemcollected(item):
    """The slow tier's tests, by the fixtures they use."""
    if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.slow)


def pytest_collection_modifyitems(items):
    """Tests on the tiny pipeline first, those on the fp32 one last, the rest between: xdist's worksteal hands
    each worker a contiguous half, so one worker builds the tiny pipeline while the other runs the tests that
    need none and then builds the fp32 one, instead of both waiting for the same build."""
    def rank(item) -> int:
        names = set(getattr(item, "fixturenames", ()))
        return 0 if "tiny_run" in names else 2 if names & {"fp32_build", "fp32_only"} else 1

    items.sort(key=rank)  # stable: the order within each rank is kept


def write_config(path: Path, base: Path = TINY, **overrides) -> Path:
    """A copy of a model config with dotted keys overridden, e.g. {"export.opset": 16}."""
    data = yaml.safe_load(base.read_text())
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def statuses(results) -> dict[str, str]:
    return {r.stage: r.status for r in results}


def assert_same_decoder(a: Path, b: Path, seed: int) -> None:
    """Two SAM decoder ONNX files give the same outputs in onnxruntime, at 1 and at 4 points (a rewrite that
    keeps what the graph computes)."""
    import numpy as np
    import onnxruntime as ort

    from stages.sam.spec import decoder_example

    emb = np.random.default_rng(seed).standard_normal((1, 256, 64, 64)).astype(np.float32)
    sa, sb = (ort.InferenceSession(str(p)) for p in (a, b))
    for points in (1, 4):
        feeds = decoder_example(emb, name="chelsea", num_points=points)
        for x, y in zip(sa.run(None, feeds), sb.run(None, feeds), strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)


def copy_build(src_root: Path, dst_root: Path) -> Path:
    """A finished build in another root; copy2 keeps mtimes, so the lock's file-hash cache stays valid."""
    shutil.copytree(src_root, dst_root, symlinks=True)
    return dst_root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Root, config and results of one full pipeline run on the tiny vit_t (every variant, full int8)."""
    def make(root: Path):
        return root, run_pipeline(load_model_config(str(TINY)), root)

    root, results = shared_build(tmp_path_factory, "tiny", make)
    return root, load_model_config(str(TINY)), results


@pytest.fixture(scope="session")
def fp32_build(tmp_path_factory):
    """Root, config path and stage statuses of one fp32-only tiny pipeline, built once for the pytest run."""
    def make(tmp: Path):
        cfg_path = write_config(tmp / "tiny_fp32.yaml", **FP32_ONLY)
        results = run_pipeline(load_model_config(str(cfg_path)), tmp / "root")
        return tmp / "root", cfg_path, statuses(results)

    return shared_build(tmp_path_factory, "fp32", make)


@pytest.fixture
def fp32_only(fp32_build, tmp_path):
    """A copy of the finished fp32-only build in a fresh root, and a copy of its config (edit it freely)."""
    src_root, src_cfg, _ = fp32_build
    root = copy_build(src_root, tmp_path / "root")
    cfg_path = tmp_path / "tiny_fp32.yaml"
    shutil.copy(src_cfg, cfg_path)
    return root, cfg_path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 (tests/sshd.py), for the session; skipped, with the reason, where Debian's
    openssh-server cannot be installed (not root, no apt)."""
    import sshd as server

    from stages.core.errors import PipelineError

    try:
        s = server.start(tmp_path_factory.mktemp("sshd"))
    except PipelineError as e:
        pytest.skip(f"no sshd on this machine: {e}")
    yield s
    server.stop(s)


@pytest.fixture(scope="session")
def arm():
    """The emulated ARM64 target (stages/runtimes/arm_env.py), built once; skipped where it cannot be installed."""
    from stages.core.errors import PipelineError
    from stages.runtimes import arm_env

    try:
        return arm_env.ensure()
    except PipelineError as e:
        pytest.skip(f"the emulated ARM64 target cannot be built on this machine: {e}")


@pytest.fixture
def copy_tree():
    return copy_build


@contextlib.contextmanager
def killing_worker(sig: int, task: str = "", parent: bool = False, match: str = "", skip: int = 0,
                   after_s: float = 0.0) -> Iterator[list[int]]:
    """While the body runs, send `sig` to the first `python -m stages.core.child MODULE TASK` process seen (any task when
    task is empty), or to its parent (the stage's own process) when parent is true; with `match`, to the first
    process whose command line contains it instead (e.g. qemu-aarch64); `skip` such processes are let be first,
    and the one hit is given `after_s` seconds to start working. Yields the pids hit."""
    found: list[int] = []
    spared: set[int] = set()
    stop = threading.Event()

    def loop() -> None:
        me = psutil.Process()
        while not stop.is_set():
            for child in me.children(recursive=True):
                try:
                    cmd = child.cmdline()
                    hit = match in " ".join(cmd) if match else "stages.core.child" in cmd and (not task or task in cmd)
                    if hit and len(spared) < skip:
                        spared.add(child.pid)
                    elif hit and child.pid not in spared:
                        stop.wait(after_s)
                        victim = child.parent() if parent else child
                        victim.send_signal(sig)
                        found.append(victim.pid)
                        return
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.005)

    killer = threading.Thread(target=loop)
    killer.start()
    try:
        yield found
    finally:
        stop.set()
        killer.join()
