"""A device never takes a stage down, hangs it or loses its rows: the tables of tests/cases/ssh_specs.py (bad
specs, bad device answers) against the real sshd of tests/sshd.py, through the bench and target_parity."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_ssh import SWEEP, _decoder_case, _run

from cases.ssh_specs import BAD_SPECS, DEVICE_FAULTS, FAULT_ON_A_CELL, BadSpec, DeviceFault
from conftest import copy_build, statuses, write_config
from stages.config import load_model_config
from stages.core.errors import ConfigError
from stages.engine.run import run_pipeline
from stages.runtimes.ssh import SshTarget
from stages.runtimes.ssh_session import _Session
from stages.runtimes.targets import parse_target

FAST = {**SWEEP, "runtimes": {"mnn": {**SWEEP["runtimes"]["mnn"], "backends": ["CPU"]}},
        "timing": {"warmup": 0, "min_runs": 2, "min_seconds": 0.05, "max_seconds": 5}}


@pytest.mark.parametrize("row", BAD_SPECS, ids=[r.id for r in BAD_SPECS])
def test_a_bad_spec_is_refused_with_no_side_effect(row: BadSpec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mark = f"sam-mark-{uuid.uuid4().hex[:8]}"
    with pytest.raises(row.raises, match=re.escape(row.message)):
        parse_target(row.spec.replace("MARK", mark), "bench.targets[1]")
    assert not list(tmp_path.iterdir()) and not Path("/tmp", mark).exists()


def test_the_destination_is_never_an_option_and_python_is_quoted():
    t = parse_target("ssh://pi@board:2222?python=python3%20-X%20dev;touch%20x&dir=~/sam%20x")
    argv = _Session(t).ssh_argv("true")
    assert argv[-3:] == ["--", "pi@board", "true"] and argv[argv.index("-p") + 1] == "2222"
    assert t.python_command == "python3 -X 'dev;touch' x" and t.folder_word == "~/'sam x'"
    assert parse_target("ssh://[::1]:2200").name == "ssh://[::1]:2200"
    for bad in ({"host": "-oProxyCommand=x"}, {"host": "h", "user": "-lroot"}, {"host": "h", "port": 0}):
        with pytest.raises(ConfigError):
            SshTarget(**bad)


def _fault_spec(sshd, row: DeviceFault, port: int, folder: Path, mark: Path) -> str:
    python = sys.executable
    if row.answer:
        body = FAULT_ON_A_CELL.format(answer=row.answer).replace("PY", python)
        python = sshd.script(f"fault-{row.id}", body)
    elif row.python:
        python = row.python.replace("PY", python).replace("MARK", str(mark))
    port = {"banner": sshd.banner_port, "stall": sshd.stall_port}.get(row.login, port)
    return sshd.spec(python=python, dir=str(folder), port=port, **row.query)


def _release_stalled(sshd) -> None:
    pids = sshd.folder / "stalled.pids"
    for pid in pids.read_text().split() if pids.exists() else []:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    pids.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def fault_bench(sshd, fp32_build, tmp_path_factory):
    """One bench on the host, a sound SSH target and one target per DEVICE_FAULTS row (each on a port of its
    own, so each has a name of its own): its latency.csv, the targets' names and folders, and the marks."""
    tmp = tmp_path_factory.mktemp("faults")
    root = copy_build(fp32_build[0], tmp / "root")
    cfg_path = write_config(tmp / "tiny_fp32.yaml", base=fp32_build[1])
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(FAST))
    good = sshd.spec(dir=str(tmp / "dev-good"))
    specs = {r.id: _fault_spec(sshd, r, p, tmp / f"dev-{r.id}", tmp / f"mark-{r.id}")
             for r, p in zip(DEVICE_FAULTS, sshd.ports, strict=False)}
    write_config(cfg_path, base=cfg_path, **{"bench.sweep": str(tmp / "sweep.yaml"),
                                            "bench.targets": ["host", good, *specs.values()]})
    (sshd.folder / "stall").touch()
    try:
        results = run_pipeline(load_model_config(str(cfg_path)), root, targets=["bench"])
    finally:
        _release_stalled(sshd)
    lat = pd.read_csv(root / "reports" / "tiny_fp32" / "latency.csv")
    names = {k: parse_target(s).name for k, s in {**specs, "good": good}.items()}
    return statuses(results), lat, names, tmp


def test_bench_keeps_the_host_and_the_other_targets_rows(fault_bench):
    got, lat, names, tmp = fault_bench
    assert got["bench"] == "failed"  # some cells failed; the stage wrote every row
    assert set(lat["target"]) == {"host", *names.values()}
    for target in ("host", names["good"]):
        rows = lat[lat["target"] == target]
        assert len(rows) == 2 and rows["status"].str.startswith("ok").all(), rows["status"].tolist()
    for row in DEVICE_FAULTS:  # every run folder, partial copy and file removed; no command ran from python=
        folder = tmp / f"dev-{row.id}"
        assert not (tmp / f"mark-{row.id}").exists()
        assert not list((folder / "runs").iterdir()) and not list((folder / "files").iterdir()), row.id


@pytest.mark.parametrize("row", DEVICE_FAULTS, ids=[r.id for r in DEVICE_FAULTS])
def test_a_device_fault_fails_its_cells_only(fault_bench, row: DeviceFault):
    _, lat, names, _ = fault_bench
    rows = lat[lat["target"] == names[row.id]].set_index("component")
    for component, want in zip(("encoder", "decoder"), row.bench, strict=True):
        status = rows.loc[component, "status"]
        assert status.startswith(want), (component, status)
        assert want == "ok" or row.message in status, (component, status)


def test_target_parity_keeps_every_row_when_devices_fail(sshd, fp32_only, tmp_path):
    root, cfg_path = fp32_only
    cell = {"cells": ["mnn-fp32@normal"], "images": ["chelsea"], "prompts": ["one_point"], "threads": 1}
    rows = [r for r in DEVICE_FAULTS if r.parity]
    specs = {r.id: _fault_spec(sshd, r, p, tmp_path / f"dev-{r.id}", tmp_path / "mark")
             for r, p in zip(rows, sshd.ports, strict=False)}  # a banner login is a sound target
    write_config(cfg_path, base=cfg_path, targets={k: {"target": s, **cell} for k, s in specs.items()})
    run_pipeline(load_model_config(str(cfg_path)), root, targets=["target_parity"])
    df = pd.read_csv(root / "reports" / "tiny_fp32" / "target_parity.csv")
    want = {r.id: (r.parity, r.message) for r in rows}
    for key, (status, message) in want.items():
        got = df[df["target"] == parse_target(specs[key]).name]["status"]
        assert len(got) == 3 and got.str.startswith(status).all(), (key, got.tolist())
        assert got.str.contains(message, regex=False).all(), (key, got.tolist())
    assert df[df["target"] == "host"]["status"].str.startswith("ok").all()


def test_two_runs_sharing_a_device_folder_keep_each_others_files(sshd, fp32_build, tmp_path):
    """Two runs (two hosts, say) on one device folder: neither removes a file the other still uses; the last
    one out removes them."""
    model, feeds = _decoder_case(fp32_build[0], tmp_path)
    remote = tmp_path / "remote"
    a, b = (parse_target(sshd.spec(host=h, dir=str(remote))) for h in ("127.0.0.1", "localhost"))
    assert _run(a, model, feeds, tmp_path, "a1")[0].ok and _run(b, model, feeds, tmp_path, "b1")[0].ok
    a.close()  # a copied both files; b still uses them
    res, _ = _run(b, model, feeds, tmp_path, "b2")
    assert res.ok, res.why
    b.close()
    assert not list((remote / "runs").iterdir()) and not list((remote / "files").iterdir())
    results: dict[str, list] = {}

    def runs(t, name):  # both at once, each closing while the other may still be running
        results[name] = [_run(t, model, feeds, tmp_path, f"{name}{i}")[0] for i in range(1)]
        t.close()

    threads = [threading.Thread(target=runs, args=(t, n)) for t, n in ((a, "ca"), (b, "cb"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for rs in results.values() for r in rs), [r.why for rs in results.values() for r in rs]
    assert not list((remote / "runs").iterdir()) and not list((remote / "files").iterdir())


def test_a_tilde_folder_is_under_the_logins_home(sshd, fp32_build, tmp_path):
    import shutil

    model, feeds = _decoder_case(fp32_build[0], tmp_path)
    rel = f".cache/sam-deploy-test-{uuid.uuid4().hex[:8]}"
    home = Path(os.path.expanduser(f"~{sshd.user}"))
    t = parse_target(sshd.spec(dir=f"~/{rel}"))
    try:
        res, _ = _run(t, model, feeds, tmp_path, "tilde")
        assert res.ok, res.why
        assert len(list((home / rel / "runs").iterdir())) == 1 and not (home / "~" / rel).exists()
    finally:
        t.close()
        shutil.rmtree(home / rel, ignore_errors=True)
        shutil.rmtree(home / "~" / rel, ignore_errors=True)


def test_partial_copies_of_gone_runs_are_removed_at_start(sshd, tmp_path):
    remote = tmp_path / "remote"
    dead, live, old = (remote / "files" / f"{'a' * 64}.part-{r}"
                       for r in ("deadbeef0000", "1ive00000000", "01d"))
    for p in (dead, live, old, remote / "runs" / "1ive00000000", remote / "runs" / "01d"):
        p.mkdir(parents=True)
    (dead / "content.mnn").write_bytes(b"half a model")
    for p in (old, remote / "runs" / "01d"):  # a run untouched for two days is gone
        os.utime(p, (p.stat().st_atime - 2 * 86400, p.stat().st_mtime - 2 * 86400))
    t = parse_target(sshd.spec(dir=str(remote)))
    t.probe(tmp_path / "probe.log")
    assert live.exists() and not dead.exists() and not old.exists()
    assert sorted(p.name for p in (remote / "runs").iterdir()) == sorted(["1ive00000000", _run_id(t)])
    t.close()


def _run_id(t) -> str:
    from stages.runtimes.ssh_session import SESSIONS

    return SESSIONS[t].run_id


def test_a_tilde_python_is_expanded_there_and_other_words_are_quoted():
    t = parse_target("ssh://pi@board?python=%27~/sam%20venv/bin/python%27%20-X%20utf8")
    assert t.python_command == "~/'sam venv/bin/python' -X utf8"
    assert parse_target("ssh://pi@board?python=python3;touch%20x").python_command == "'python3;touch' x"


def test_a_start_that_fails_there_leaves_no_master_folder_behind(sshd, tmp_path):
    """The master connects, then the run folder cannot be made (a path /proc refuses): each retry used to start
    a new master in a new /tmp/sam-ssh-* folder and leave the last one's."""
    from stages.runtimes.ssh_session import SESSIONS

    t = parse_target(sshd.spec(dir="/proc/sam-deploy-cannot-be-made"))
    first = t.run({}, tmp_path / "one.log", 60)
    assert not first.ok and "making the run folder" in first.error, first.error
    s = SESSIONS[t]
    control = s.control
    assert control and Path(control).exists()
    second = t.run({}, tmp_path / "two.log", 60)
    assert not second.ok and not Path(control).exists()  # the first master's folder went before the retry
    t.close()
    assert not Path(s.control).exists()
