"""Stopping a run: held signals are not passed on to the processes a cleanup starts, a signal held during a
cleanup is delivered after it, and a second Ctrl-C stops a stage whose cleanup hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from conftest import ROOT_DIR


def _python(code: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    """Python running `code` in its own session, with SIGINT's default (as a terminal's Ctrl-C finds it; a
    background `make test &` starts with SIGINT ignored)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT_DIR), str(Path(__file__).parent)]),
           **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT_DIR, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_a_stage_holding_signals_starts_children_that_can_be_stopped():
    proc = _python("""
        import os, signal, subprocess
        from stages.engine.process import _interrupt_once
        signal.signal(signal.SIGTERM, _interrupt_once)
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the stage's first signal: it unwinds
        except KeyboardInterrupt:
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # the next ones are held: it goes on with its cleanup
        print(subprocess.run(["grep", "SigIgn", "/proc/self/status"], capture_output=True, text=True).stdout)
    """)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    ignored = int(out.split()[-1], 16)  # the signals a cleanup's child (an ssh) would ignore
    assert not ignored & (1 << (signal.SIGINT - 1)) and not ignored & (1 << (signal.SIGTERM - 1)), out


def test_a_signal_during_a_deferred_block_comes_after_it():
    proc = _python("""
        import os, signal, time
        from stages.core.signals import deferred, hold
        said = []
        try:
            with deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                said.append("block finished")
        except KeyboardInterrupt:
            said.append("then interrupted")
        signal.signal(signal.SIGTERM, lambda s, f: said.append("SIGTERM, after the outer block"))
        with deferred():  # nested, as the bench's cleanup around close_all's
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
            said.append("inner done")
        said.append("outer done")
        signal.signal(signal.SIGINT, hold)
        with deferred():
            os.kill(os.getpid(), signal.SIGINT)
        said.append("held before: held after")
        print(said)
    """)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert out.strip().splitlines()[-1] == str(["block finished", "then interrupted", "inner done",
                                                "SIGTERM, after the outer block", "outer done",
                                                "held before: held after"])


def _stage_run(tmp_path: Path, cleanup_s: float) -> tuple[subprocess.Popen, psutil.Process]:
    """A runner with one stage (tests/slow_cleanup_stage.py) whose cleanup takes cleanup_s, once the stage runs."""
    proc = _python(f"""
        from pathlib import Path
        from stages.engine.graph import Stage, StageContext
        from stages.engine.process import in_own_process
        stage = Stage("slow", "slow_cleanup_stage", [], [])
        root = Path({str(tmp_path)!r})
        try:
            in_own_process(stage, StageContext(stage, None, root, root, root, "random-seed-0"))
        except KeyboardInterrupt:
            print("interrupted")
    """, env_extra={"CLEANUP_S": str(cleanup_s)})
    deadline = time.monotonic() + 120
    while not (tmp_path / "stage.pid").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert (tmp_path / "stage.pid").exists(), proc.communicate()[0]
    return proc, psutil.Process(int((tmp_path / "stage.pid").read_text()))


def _kill(proc: subprocess.Popen, stage: psutil.Process | None) -> None:
    """Whatever an assertion left running."""
    for p in (stage, psutil.Process(proc.pid) if proc.poll() is None else None):
        try:
            if p is not None:
                p.kill()
        except psutil.Error:
            pass


def test_a_second_ctrl_c_stops_a_stage_whose_cleanup_hangs(tmp_path):
    proc, stage = _stage_run(tmp_path, 300)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the stage starts its cleanup, the runner waits for it
        deadline = time.monotonic() + 60
        while not (tmp_path / "cleaning").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        assert proc.poll() is None and stage.is_running()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C again: stop now
        out, _ = proc.communicate(timeout=60)
        assert "interrupted" in out and "Ctrl-C again to stop it now" in out, out
        assert "killed before its cleanup was done" in out, out
        try:
            stage.wait(timeout=10)
        except psutil.TimeoutExpired:
            raise AssertionError(f"the stage process {stage.pid} is still running after the runner ended") from None
    finally:
        _kill(proc, stage)


def test_one_ctrl_c_waits_for_a_cleanup_that_ends(tmp_path):
    proc, stage = _stage_run(tmp_path, 3)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
        assert "interrupted" in out and (tmp_path / "cleaned").exists(), out  # the cleanup ran to its end
        assert "killed" not in out, out
    finally:
        _kill(proc, stage)


def test_a_stage_past_its_timeout_is_stopped_after_its_cleanup_and_fails_saying_so(tmp_path):
    proc = _python(f"""
        from pathlib import Path
        from stages.engine.graph import Stage, StageContext
        from stages.engine.process import in_own_process
        stage = Stage("slow", "slow_cleanup_stage", [], [], timeout_s=3)
        root = Path({str(tmp_path)!r})
        kind, why, *_ = in_own_process(stage, StageContext(stage, None, root, root, root, "random-seed-0"))
        print(kind, why)
    """, env_extra={"CLEANUP_S": "1"})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "error stage slow did not finish within 3 s (timeout_s in pipeline.yaml): stopped" in out, out
    assert (tmp_path / "cleaned").exists(), out  # stopped as at Ctrl-C: its cleanup ran to its end
