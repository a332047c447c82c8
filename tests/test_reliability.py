"""Reliability: interrupted runs resume, bad inputs get clear messages, nothing leaves the machine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT_DIR, statuses, write_config
from stages.__main__ import main
from stages.config import load_model_config
from stages.core.errors import PipelineError
from stages.engine.lock import Lock
from stages.engine.run import run_pipeline
from stages.sam.samples import load_images


def _with_fp16(cfg_path: Path) -> Path:
    """The fp32-only config plus an fp16 variant: a copied build re-runs from convert on."""
    return write_config(cfg_path, base=cfg_path, **{"convert.variants": {"fp32": [], "fp16": ["--fp16"]},
                                                    "parity.mnn_precisions": {"fp32": ["normal"], "fp16": ["normal"]}})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_finished_looking_file_and_resumes(fp32_only, sig):
    root, cfg_path = fp32_only
    _with_fp16(cfg_path)
    mnn = root / "build" / "tiny_fp32" / "mnn"
    shutil.rmtree(mnn)  # convert starts from nothing
    cmd = [sys.executable, "-m", "stages", "run", "--model", str(cfg_path), "--root", str(root)]
    # A shell without job control starts a background job (`make test &`) with SIGINT ignored, and Python keeps
    # an inherited SIG_IGN: the run under test starts with SIGINT's default, as a terminal's Ctrl-C finds it.
    proc = subprocess.Popen(cmd, cwd=ROOT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list(mnn.glob(".*partial*")):  # a conversion is being written
        time.sleep(0.01)
    assert list(mnn.glob(".*partial*")), "never saw the convert stage writing"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    lock = Lock(root / "build" / "tiny_fp32", root)
    assert "convert" not in lock.stages and "simplify" in lock.stages
    assert not list(mnn.glob(".*partial*"))  # temp files are gone ...
    finished = {p.name for p in mnn.glob("*.mnn")}
    assert finished < {"encoder.fp32.mnn", "encoder.fp16.mnn", "decoder.fp32.mnn", "decoder.fp16.mnn"}
    results = statuses(run_pipeline(load_model_config(str(cfg_path)), root, targets=["convert"]))
    assert results["export_encoder"] == results["simplify"] == "cached"  # ... and the run resumes at convert
    assert results["convert"] == "ran" and len(list(mnn.glob("*.mnn"))) == 4


def test_corrupt_onnx_fails_the_conversion_with_a_message(fp32_only):
    root, cfg_path = fp32_only
    cfg = load_model_config(str(cfg_path))
    sim = root / "build" / "tiny_fp32" / "onnx" / "encoder.sim.onnx"
    sim.write_bytes(sim.read_bytes()[:20000])
    results = statuses(run_pipeline(cfg, root, targets=["convert"], single=True))
    assert results["convert"] == "failed"
    df = pd.read_csv(root / "reports" / "tiny_fp32" / "convert.csv").set_index("cell")
    assert df.loc["encoder-fp32", "status"].startswith("failed: MNN converter wrote no model")
    assert df.loc["decoder-fp32", "status"] == "ok"
    assert not (root / "build" / "tiny_fp32" / "mnn" / "encoder.fp32.mnn").exists()  # the earlier one is gone


def test_truncated_mnn_file_fails_its_parity_cells_only(fp32_only):
    root, cfg_path = fp32_only
    _with_fp16(cfg_path)
    assert statuses(run_pipeline(load_model_config(str(cfg_path)), root, targets=["convert"]))["convert"] == "ran"
    mnn = root / "build" / "tiny_fp32" / "mnn" / "decoder.fp16.mnn"
    mnn.write_bytes(mnn.read_bytes()[: mnn.stat().st_size // 3])
    assert main(["run", "--model", str(cfg_path), "--root", str(root), "parity", "--single"]) == 1
    df = pd.read_csv(root / "reports" / "tiny_fp32" / "parity.csv")
    bad = df[df["status"] != "ok"]
    assert set(bad["cell"]) == {"mnn-fp16@normal"}
    assert bad["status"].str.contains("MNN cannot load").all() and bad["status"].str.contains("decoder.fp16.mnn").all()
    assert df[df["cell"] != "mnn-fp16@normal"]["pass"].all()


def test_image_folders(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    with pytest.raises(PipelineError, match=r"image folder .*imgs is empty"):
        load_images([str(folder)], tmp_path)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "a.png")
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(PipelineError, match=r"notes.txt is not a readable image"):
        load_images([str(folder)], tmp_path)
    (folder / "notes.txt").unlink()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(folder / "gray.png")
    imgs = load_images([str(folder), "chelsea"], tmp_path)
    assert [n for n, _ in imgs] == ["a", "gray", "chelsea"] and all(i.shape[2] == 3 for _, i in imgs)
    with pytest.raises(PipelineError, match=r"'nowhere' is neither a bundled photo"):
        load_images(["nowhere"], tmp_path)


def test_unwritable_output_folder_is_named(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    from conftest import TINY

    assert main(["run", "--model", str(TINY), "--root", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err and str(blocker) in err


SITECUSTOMIZE = '''
import socket, sys
# network sockets are refused; Unix-domain sockets (local IPC: multiprocessing's fork server, which
# runs each stage) are not network access and stay allowed
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
def _refuse(*a, **k):
    raise OSError("network access attempted during a test that forbids it")
def _local_only(real):
    def call(self, *a, **k):
        if self.family != socket.AF_UNIX:
            _refuse()
        return real(self, *a, **k)
    return call
socket.socket.connect = _local_only(_connect)
socket.socket.connect_ex = _local_only(_connect_ex)
socket.create_connection = _refuse
class _NoMnnTools:
    def find_spec(self, name, path=None, target=None):
        if name == "MNN.tools" or name.startswith("MNN.tools."):
            raise ImportError("MNN.tools must never be imported (it pip-installs and phones home)")
        return None
sys.meta_path.insert(0, _NoMnnTools())
# each process records, at exit, which MNN modules it had imported: the test reads the converting process's
import atexit, os
def _record_modules():
    folder = os.environ.get("MODULES_RECORD_DIR")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.txt"), "w") as f:
            f.write("\\n".join(sorted(m for m in sys.modules if m.split(".")[0] in ("MNN", "_tools"))))
atexit.register(_record_modules)
'''


def test_convert_path_runs_offline_and_never_imports_mnn_tools(fp32_only, tmp_path, monkeypatch):
    guard, record = tmp_path / "guard", tmp_path / "modules"
    guard.mkdir()
    record.mkdir()
    (guard / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]))
    # the guard works: a child that tries the network or MNN.tools fails
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
                           capture_output=True, text=True)
    assert "network access attempted" in probe.stderr
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.socket().connect(('127.0.0.1', 9))"],
                           capture_output=True, text=True)
    assert "network access attempted" in probe.stderr
    probe = subprocess.run([sys.executable, "-c", "import MNN.tools"], capture_output=True, text=True)
    assert "must never be imported" in probe.stderr
    root, cfg_path = fp32_only
    _with_fp16(cfg_path)  # convert re-runs; what it needs is in the copied build
    monkeypatch.setenv("MODULES_RECORD_DIR", str(record))
    out = subprocess.run([sys.executable, "-m", "stages", "run", "--model", str(cfg_path), "--root", str(root),
                          "convert"], cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    df = pd.read_csv(root / "reports" / "tiny_fp32" / "convert.csv")
    assert (df["status"] == "ok").all() and len(df) == 4
    # the processes that converted (they loaded MNN's converter, _tools) never imported MNN.tools
    converters = [f.read_text().split() for f in record.glob("*.txt") if "_tools" in f.read_text().split()]
    assert len(converters) == 4, [f.read_text() for f in record.glob("*.txt")]
    assert not [m for mods in converters for m in mods if m.startswith("MNN.tools")]


def test_second_process_on_the_same_model_is_told_the_first_is_running(fp32_only):
    root, cfg_path = fp32_only
    _with_fp16(cfg_path)  # the first run has work to do: convert and parity
    cmd = [sys.executable, "-m", "stages", "run", "--model", str(cfg_path), "--root", str(root), "parity"]
    first = subprocess.Popen(cmd, cwd=ROOT_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = root / "build" / "tiny_fp32" / ".run.lock"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith("pid")):
        time.sleep(0.02)
    second = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=600) == 0  # the first run is not disturbed ...
    assert second.returncode == 2
    assert "another run" in second.stderr and f"pid {first.pid}" in second.stderr
    # ... and its outputs are whole: a third run finds everything up to date
    results = statuses(run_pipeline(load_model_config(str(cfg_path)), root, targets=["parity"]))
    assert set(results.values()) == {"cached"} and len(results) == 5  # parity and the four stages before it
