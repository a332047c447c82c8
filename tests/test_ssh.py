"""SSH targets against a real sshd on 127.0.0.1 (tests/sshd.py): the runner there, files copied once by content,
the bench on several targets in parallel, and faults that fail one cell with a message while the run goes on.
The "device" is this machine (its Python, or the emulated ARM64 Python of stages/runtimes/arm_env.py)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from conftest import ROOT_DIR, statuses, write_config
from stages.config import load_model_config
from stages.core.errors import ConfigError, PipelineError
from stages.engine.run import run_pipeline
from stages.ondevice.mnn_runner import load_cases, save_cases
from stages.runtimes.targets import HOST, parse_target
from stages.sam.spec import decoder_feeds
from stages.tools.compare import RegressConfig, compare_runs, load_run

MNN_VERSION = importlib.metadata.version("MNN")
# two MNN cells a target (encoder, decoder), long enough to be hit mid-cell
SWEEP = {"components": ["encoder", "decoder"], "decoder": {"points": [1], "out_sizes": [[64, 64]]},
         "runtimes": {"mnn": {"backends": ["CPU", "OpenCL"], "variants": ["fp32"], "precisions": ["normal"]},
                      "onnxruntime": {"backends": ["CPUExecutionProvider"], "variants": ["onnx-sim"],
                                      "precisions": ["fp32"]}},
         "threads": [1], "timing": {"warmup": 0, "min_runs": 3, "min_seconds": 1.5, "max_seconds": 10},
         "roofline": {"matmul_n": 128, "min_seconds": 0.01}, "timeout_s": 120}


def _decoder_case(root, tmp_path):
    model = root / "build" / "tiny_fp32" / "mnn" / "decoder.fp32.mnn"
    emb = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    feeds = save_cases(tmp_path / "feeds.npz", {"case": decoder_feeds(
        emb, np.array([[40.0, 30.0]], np.float32), np.array([1.0], np.float32), (90, 120))})
    return model, feeds


def _run(target, model, feeds, tmp_path, name="out", timing=None, **settings):
    out = tmp_path / f"{name}.npz"
    res = target.run({"model": str(model), "feeds": str(feeds), "out": str(out), "settings": {"threads": 1, **settings},
                      **({"timing": timing} if timing else {})}, tmp_path / f"{name}.log", 300)
    return res, out


@pytest.mark.parametrize("spec,match", [
    ("ssh://", "is not an SSH target"),
    ("ssh://pi:secret@board", "holds a password"),
    ("ssh://pi@board:99999", "port must be a number"),
    ("ssh://pi@board?pyhton=python3", "unknown option pyhton"),
    ("ssh://pi@board?keep=maybe", "keep must be 1 or 0"),
    ("ssh://pi@board?config=/no/such/ssh_config", "ssh_config file /no/such/ssh_config does not exist"),
    ("sftp://pi@board", "is not a target; expected one of: host, arm64"),
])
def test_bad_ssh_specs_are_named(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_target(spec, "bench.targets[1]")


def test_ssh_spec_fields_and_config_errors(tmp_path):
    t = parse_target("ssh://pi@raspberrypi.local:2222?python=/opt/py/bin/python3&dir=/data/sam&keep=1")
    assert (t.name, t.user, t.host, t.port, t.python, t.folder, t.keep) == (
        "ssh://pi@raspberrypi.local:2222", "pi", "raspberrypi.local", 2222, "/opt/py/bin/python3", "/data/sam", True)
    assert parse_target("ssh://board").name == "ssh://board" and parse_target("ssh://board").python == "python3"
    bad = write_config(tmp_path / "m.yaml", **{"bench.targets": ["host", "ssh://pi:pw@board"]})
    with pytest.raises(ConfigError, match=r"m\.yaml.*bench\.targets\[1\].*holds a password"):
        load_model_config(str(bad))
    emulated = write_config(tmp_path / "e.yaml", **{"bench.targets": ["arm64"]})
    with pytest.raises(ConfigError, match=r"bench\.targets\[0\]: 'arm64' is emulated: its times are not latencies"):
        load_model_config(str(emulated))
    twice = write_config(tmp_path / "t.yaml", **{"bench.targets": ["ssh://pi@b", "ssh://pi@b?python=python3.12"]})
    with pytest.raises(ConfigError, match=r"bench\.targets\[1\]: .* names target ssh://pi@b twice"):
        load_model_config(str(twice))


def test_probe_runs_there_and_faults_say_what_to_do(sshd, tmp_path):
    t = parse_target(sshd.spec(dir=str(tmp_path / "remote")))
    about = t.probe(tmp_path / "probe.log")
    t.close()
    assert about["mnn_version"] == MNN_VERSION and about["cores"] == os.cpu_count() and about["cpu_model"]
    assert about["backends"]["CPU"] is None
    assert "not in this MNN build" in about["backends"]["OpenCL"]  # the probe ran MNN there
    faults = {
        sshd.spec(port=_closed_port()): r"SSH connection to ssh://\S+ failed or dropped \(.*Connection refused",
        sshd.spec(python="/usr/bin/python3"): r"has no numpy: run `/usr/bin/python3 -m pip install numpy` there",
        sshd.spec(python=sshd.script("no-mnn", f"PYTHONPATH={_numpy_only(tmp_path)} exec {sys.executable} -S \"$@\"\n")):
            rf"has no MNN: run `\S+ -m pip install MNN=={MNN_VERSION}` there",
        sshd.spec(python="/no/such/python3"): r"/no/such/python3 was not found there",
    }
    for spec, match in faults.items():
        target = parse_target(spec.replace("?", f"?dir={tmp_path / 'faults'}&", 1))
        with pytest.raises(PipelineError, match=match):
            target.probe(tmp_path / "fault.log")
        target.close()
    assert not list((tmp_path / "faults" / "runs").iterdir())  # each fault's run folder removed


def _numpy_only(tmp_path):
    """A site folder with numpy and nothing else (a Python on the target without MNN)."""
    import numpy

    site = tmp_path / "numpy-only"
    site.mkdir()
    pkg = os.path.dirname(numpy.__file__)
    for name in ("numpy", "numpy.libs"):
        if os.path.exists(os.path.join(os.path.dirname(pkg), name)):
            (site / name).symlink_to(os.path.join(os.path.dirname(pkg), name))
    return site


def _closed_port() -> int:
    from sshd import free_port

    return free_port()


def test_files_copied_once_by_content_kept_only_when_asked(sshd, fp32_build, tmp_path):
    model, feeds = _decoder_case(fp32_build[0], tmp_path)
    remote = tmp_path / "remote"
    t = parse_target(sshd.spec(dir=str(remote)))
    res, out = _run(t, model, feeds, tmp_path, "a")
    assert res.ok, res.why
    res2, out2 = _run(t, model, feeds, tmp_path, "b", precision="low")
    assert res2.ok, res2.why
    host, _ = _run(HOST, model, feeds, tmp_path, "host")
    for o in (out, out2):  # what came back is what the host's runner computes (same machine, same MNN)
        np.testing.assert_allclose(load_cases(o)["case"]["masks"], load_cases(tmp_path / "host.npz")["case"]["masks"],
                                   rtol=1e-5, atol=1e-5)
    from stages.runtimes.ssh_session import SESSIONS as _SESSIONS

    session = _SESSIONS[t]
    assert (len(session.copied), session.reused) == (2, 2)  # model and feeds once each, then found by content
    t.close()
    assert not list((remote / "runs").iterdir()) and not list((remote / "files").iterdir())
    kept = parse_target(sshd.spec(dir=str(remote), keep=True))
    assert _run(kept, model, feeds, tmp_path, "c")[0].ok
    kept.close()
    assert len(list((remote / "files").iterdir())) == 2 and len(list((remote / "runs").iterdir())) == 1
    again = parse_target(sshd.spec(dir=str(remote), keep=True))
    assert _run(again, model, feeds, tmp_path, "d")[0].ok
    assert (len(_SESSIONS[again].copied), _SESSIONS[again].reused) == (0, 2)  # a second run copies nothing
    again.close()


def test_dropped_connection_and_crash_fail_the_call_and_the_next_one_runs(sshd, fp32_build, tmp_path):
    model, feeds = _decoder_case(fp32_build[0], tmp_path)
    mark = tmp_path / "mark"
    # a stand-in python that, while `mark` exists, drops the SSH session serving it (kills that sshd process)
    # or crashes MNN's process with SIGSEGV once it is running
    drop = sshd.script("drop", f'if [ -f {mark} ]; then rm -f {mark}; kill -9 $(awk \'{{print $4}}\' /proc/$PPID/stat); '
                               f'sleep 5; fi\nexec {sys.executable} "$@"\n')
    crash = sshd.script("crash", f'if [ -f {mark} ]; then rm -f {mark}; {sys.executable} "$@" & p=$!; sleep 1; '
                                 f'kill -SEGV $p; wait $p; exit $?; fi\nexec {sys.executable} "$@"\n')
    for python, match in ((drop, r"SSH connection to \S+ failed or dropped"),
                          (crash, r"MNN runner on \S+ killed by signal SIGSEGV")):
        t = parse_target(sshd.spec(python=python, dir=str(tmp_path / "remote")))
        assert _run(t, model, feeds, tmp_path, "before")[0].ok
        mark.touch()  # the hit call times for 20 s (the bench's stop rule), so it is running when hit
        res, _ = _run(t, model, feeds, tmp_path, "hit",
                      timing={"warmup": 0, "min_runs": 1, "min_seconds": 20, "max_seconds": 30})
        assert not res.ok and re.search(match, res.error), res.error
        res, _ = _run(t, model, feeds, tmp_path, "after")
        assert res.ok, res.why
        t.close()
    assert not list((tmp_path / "remote" / "runs").iterdir())


def test_bench_on_two_ssh_targets_beside_the_host(sshd, fp32_only, tmp_path):
    """Host and two SSH targets in one bench run; the second target crashes in its first cell and goes on."""
    import yaml

    root, cfg_path = fp32_only
    mark = tmp_path / "mark"
    mark.touch()
    crash = sshd.script("crash-bench", f'if [ -f {mark} ] && grep -q timing "$2"; then rm -f {mark}; '
                                       f'{sys.executable} "$@" & p=$!; sleep 0.5; kill -SEGV $p; wait $p; exit $?; fi\n'
                                       f'exec {sys.executable} "$@"\n')
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
    a = sshd.spec(dir=str(tmp_path / "a"))
    b = sshd.spec(host="localhost", python=crash, dir=str(tmp_path / "b"))
    write_config(cfg_path, base=cfg_path, **{"bench.sweep": str(sweep), "bench.targets": ["host", a, b]})
    results = run_pipeline(load_model_config(str(cfg_path)), root, targets=["bench", "report"])
    assert statuses(results)["bench"] == "failed"  # a failed cell fails the stage, with every row kept
    crashed = pd.read_csv(root / "reports" / "tiny_fp32" / "latency.csv")
    crashed = crashed[crashed["target"] == parse_target(b).name]
    assert crashed["status"].str.startswith("failed").sum() == 1 and "SIGSEGV" in " ".join(crashed["status"])
    assert crashed["status"].str.startswith("ok").sum() == 1  # its next cell ran
    results = run_pipeline(load_model_config(str(cfg_path)), root, targets=["bench", "report"])  # mark is gone
    assert statuses(results)["bench"] == "ran" and statuses(results)["report"] == "ran"
    lat = pd.read_csv(root / "reports" / "tiny_fp32" / "latency.csv")
    names = {"host", parse_target(a).name, parse_target(b).name}
    assert set(lat["target"]) == names
    host = lat[lat["target"] == "host"]
    assert set(host["runtime"]) == {"mnn", "onnxruntime"} and host["status"].str.startswith("ok").sum() == 4
    for name in names - {"host"}:
        rows = lat[lat["target"] == name]
        assert set(rows["runtime"]) == {"mnn"}  # a target gets the sweep's MNN cells
        ok = rows[rows["status"].str.startswith("ok")]
        assert (ok["target_mnn"] == MNN_VERSION).all() and (ok["cores"] == os.cpu_count()).all()
        assert (ok["roofline"] == "none").all() and ok["matmul_gflops"].isna().all() and (ok["runs"] >= 3).all()
        assert (ok["machine"] == name).all() and ok["cell"].str.endswith("@" + name).all()
        opencl = rows[rows["backend"] == "OpenCL"]["status"]
        assert opencl.str.contains(f"OpenCL is not in this MNN build.*on {name}").all()
    assert lat["status"].str.startswith("ok").sum() == 4 + 2 + 2
    assert not list((tmp_path / "a" / "runs").iterdir()) and not list((tmp_path / "b" / "files").iterdir())
    summary = (root / "reports" / "tiny_fp32" / "summary.md").read_text()
    assert summary.count("\n### ssh://") == 2 and "\n### host\n" in summary and "latency_per_target.png" in summary
    assert (root / "reports" / "tiny_fp32" / "plots" / "latency_per_target.png").stat().st_size > 0
    # compare: each target's rows against that target's own; a target absent from one side is missing, never
    # matched with another target's rows
    run = load_run(str(root / "reports" / "tiny_fp32"))
    cmp = compare_runs(run, run, RegressConfig())
    lat_cmp = cmp[cmp["kind"] == "latency"]
    assert set(lat_cmp["verdict"]) == {"same"} and lat_cmp["cell"].str.startswith("ssh://").sum() == 4
    only_a = load_run(str(root / "reports" / "tiny_fp32") + f"::target={parse_target(a).name}")
    assert len(only_a.latency) == (lat["target"] == parse_target(a).name).sum()


def test_ctrl_c_cleans_the_remote_folder(sshd, fp32_only, tmp_path):
    import yaml

    root, cfg_path = fp32_only
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({**SWEEP, "runtimes": {"mnn": SWEEP["runtimes"]["mnn"]},
                                     "timing": {"warmup": 0, "min_runs": 1, "min_seconds": 60, "max_seconds": 90}}))
    remote = tmp_path / "remote"
    write_config(cfg_path, base=cfg_path, **{"bench.sweep": str(sweep),
                                            "bench.targets": [sshd.spec(dir=str(remote))]})
    log = tmp_path / "run.log"  # what the run said, for the message if it never reaches the target
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stages", "run", "--model", str(cfg_path), "--root", str(root),
                                 "bench"], cwd=ROOT_DIR, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)

    def runners(timing_only: bool = False):
        found = []
        for p in psutil.process_iter(["cmdline"]):
            cmd, cwd = p.info["cmdline"] or [], _cwd(p)
            if "mnn_runner.py" in cmd[:-1] and str(remote) in cwd:
                # the target's probe is a runner call too, and ends in a second: wait for a timing call
                if not timing_only or '"timing"' in _read(Path(cwd) / cmd[cmd.index("mnn_runner.py") + 1]):
                    found.append(p)
        return found

    deadline = time.monotonic() + 240
    while not (timing := runners(timing_only=True)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert timing, (f"the runner never started on the target (the run's exit status: {proc.poll()}); its log "
                    f"ends:\n{log.read_text()[-3000:]}")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
    assert proc.wait(timeout=120) != 0
    time.sleep(0.5)
    assert not runners()  # the runner there was stopped
    assert not list((remote / "runs").iterdir()) and not list((remote / "files").iterdir())


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _cwd(p) -> str:
    try:
        return p.cwd()
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return ""


def test_arm64_python_over_ssh_computes_fp16(sshd, arm, fp32_build, tmp_path):
    """The emulated ARM64 Python as the target's python: an ARM board over SSH, end to end."""
    model, feeds = _decoder_case(fp32_build[0], tmp_path)
    python = sshd.script("python3-arm64", " ".join(arm.command("max")) + ' "$@"\n')
    t = parse_target(sshd.spec(python=python, dir=str(tmp_path / "remote")))
    about = t.probe(tmp_path / "probe.log", timeout_s=600)
    assert about["machine"] == "aarch64" and "fp16:1" in about["cpu_features"].split()
    normal, out_n = _run(t, model, feeds, tmp_path, "normal")
    low, out_l = _run(t, model, feeds, tmp_path, "low", precision="low")
    t.close()
    assert normal.ok and low.ok, (normal.why, low.why)
    n, lo = (load_cases(o)["case"]["low_res_masks"] for o in (out_n, out_l))
    assert not np.array_equal(n, lo) and np.array_equal(lo.astype(np.float16).astype(np.float32), lo)


def test_full_disk_there_fails_the_call_saying_so(sshd, fp32_build, tmp_path):
    model, feeds = _decoder_case(fp32_build[0], tmp_path)
    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        t = parse_target(sshd.spec(dir=str(disk / "sam")))
        res, _ = _run(t, model, feeds, tmp_path, "full")
        t.close()
        assert not res.ok and f"the target's disk is full ({disk / 'sam'})" in res.error, res.error
        assert "No space left on device" in res.error
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_target_parity_on_an_ssh_target(sshd, fp32_only, tmp_path):
    """targets.<name>.target: ssh://...: the cells run there and on the host against the same PyTorch reference
    (the "device" is this machine: both give the same numbers)."""
    root, cfg_path = fp32_only
    remote = tmp_path / "remote"
    spec = sshd.spec(dir=str(remote))
    write_config(cfg_path, base=cfg_path, targets={"board": {"target": spec, "cells": ["mnn-fp32@normal"],
                                                             "images": ["chelsea"], "prompts": ["one_point"],
                                                             "threads": 1}})
    got = statuses(run_pipeline(load_model_config(str(cfg_path)), root, targets=["target_parity"]))
    assert got["target_parity"] == "ran", got
    df = pd.read_csv(root / "reports" / "tiny_fp32" / "target_parity.csv")
    there, host = (df[df["target"] == n].set_index("component") for n in (parse_target(spec).name, "host"))
    assert len(there) == 3 and (there["status"] == "ok").all() and (there["emulated"] == False).all()  # noqa: E712
    assert (there["target_cpu"] != "host").all() and (there["target_mnn"] == MNN_VERSION).all()
    np.testing.assert_allclose(there["cosine"].dropna(), host["cosine"].dropna())
    assert not list((remote / "runs").iterdir()) and not list((remote / "files").iterdir())


def test_a_relative_folder_is_under_the_logins_home(sshd, fp32_build, tmp_path):
    """The default folder (.cache/sam-deploy) is relative: the runner, which runs in the run folder, must still
    be given paths it can open."""
    import uuid
    from pathlib import Path

    model, feeds = _decoder_case(fp32_build[0], tmp_path)
    rel = f".cache/sam-deploy-test-{uuid.uuid4().hex[:8]}"
    t = parse_target(sshd.spec(dir=rel))
    res, _ = _run(t, model, feeds, tmp_path, "rel")
    t.close()
    assert res.ok, res.why
    home = Path(os.path.expanduser(f"~{sshd.user}"))
    assert not list((home / rel / "runs").iterdir()) and not list((home / rel / "files").iterdir())
    import shutil

    shutil.rmtree(home / rel)


def test_two_files_of_the_same_bytes_are_copied_once_and_both_load(sshd, fp32_build, tmp_path):
    """Two variants can be byte-identical (vit_t's decoder.fp32-static.mnn is decoder.fp32.mnn): stored under a
    name of the content's, both load."""
    import shutil

    model, feeds = _decoder_case(fp32_build[0], tmp_path)
    twin = tmp_path / "decoder.twin.mnn"
    shutil.copy(model, twin)
    t = parse_target(sshd.spec(dir=str(tmp_path / "remote")))
    assert _run(t, model, feeds, tmp_path, "a")[0].ok
    res, _ = _run(t, twin, feeds, tmp_path, "twin")
    assert res.ok, res.why
    from stages.runtimes.ssh_session import SESSIONS as _SESSIONS

    assert len(_SESSIONS[t].copied) == 2  # the model and the feeds; the twin was there by content
    t.close()
