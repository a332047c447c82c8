"""One run's SSH connection to a target (stages/runtimes/ssh.py): a ControlMaster connection, files copied by
content through `cat`, the runner called there with its pid kept (so Ctrl-C can stop it), cleanup at close, and a
one-line explanation for every way it fails."""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stages.core.artifacts import cached_file_sha256
from stages.core.isolate import IsolatedResult, describe_exit

if TYPE_CHECKING:
    from stages.runtimes.ssh import SshTarget

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=2")
CLEANUP_STEP_S, MASTER_EXIT_S = 60, 30  # close(): one cleanup command there, then the master connection's exit
CLOSE_BOUND_S = CLEANUP_STEP_S + MASTER_EXIT_S  # the longest a close() takes

log = logging.getLogger(__name__)

PIP_NAMES = {"numpy": "numpy", "MNN": "MNN"}


class TargetDown(Exception):
    """The target could not be reached, or a step around the runner failed there (copying, a full disk)."""


SESSIONS_LOCK = threading.Lock()
SESSIONS: dict[SshTarget, _Session] = {}


def session(target: SshTarget) -> _Session:
    with SESSIONS_LOCK:
        if target not in SESSIONS:
            SESSIONS[target] = _Session(target)
        session = SESSIONS[target]
    session.start()
    return session


def tail(log_file: Path, lines: int = 12) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class _Session:
    """One run's connection to a target: its folders there, what is there by content, and what was copied."""

    target: SshTarget
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: bool = False
    known: set[str] = field(default_factory=set)  # content hashes already in DIR/files
    copied: list[str] = field(default_factory=list)  # hashes this run copied there
    copied_bytes: int = 0
    reused: int = 0
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    control: str = ""
    folder: str = ""  # the target's folder, absolute, once started

    @property
    def run_dir(self) -> str:
        return f"{self.folder}/runs/{self.run_id}"

    def _options(self) -> list[str]:
        opts = [*SSH_OPTIONS]
        if self.target.config:
            opts = ["-F", self.target.config, *opts]
        if self.control:
            opts += ["-o", f"ControlPath={self.control}/%C", "-o", "ControlMaster=no"]
        return opts

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", *self._options(), "-p", str(self.target.port), self.target.destination, command]

    def remote(self, command: str, what: str, timeout_s: float = 120, stdin: bytes | None = None,
               detached: bool = False) -> str:
        """Run a shell command there; its stdout. A refusal, a drop or a failing command raises TargetDown.
        detached (cleanup): in a session of its own, so a further Ctrl-C at the terminal does not cut it short."""
        try:
            res = subprocess.run(self.ssh_argv(command), input=stdin, capture_output=True, timeout=timeout_s,
                                 stdin=None if stdin is not None else subprocess.DEVNULL, start_new_session=detached)
        except subprocess.TimeoutExpired:
            raise TargetDown(f"{what} on {self.target.name} timed out after {timeout_s:.0f} s") from None
        if res.returncode != 0:
            raise TargetDown(explain(self.target, what, res.returncode, res.stderr.decode(errors="replace")))
        return res.stdout.decode(errors="replace")

    def start(self) -> None:
        with self.lock:
            if self.started:
                return
            self.control = tempfile.mkdtemp(prefix="sam-ssh-")
            # one master connection for the run's many ssh/scp calls (a login costs 0.1-1 s); it stops itself
            # 60 s after the last use, and close() stops it at once. Its output goes to a file: a master holding
            # a pipe open would keep the caller waiting.
            with open(Path(self.control) / "master.log", "w") as out:
                master = ["ssh", *(["-F", self.target.config] if self.target.config else []), *SSH_OPTIONS,
                          "-o", f"ControlPath={self.control}/%C", "-o", "ControlMaster=yes",
                          "-o", "ControlPersist=60", "-f", "-N", "-p", str(self.target.port), self.target.destination]
                try:
                    rc = subprocess.run(master, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60).returncode
                except subprocess.TimeoutExpired:
                    rc = 255
            if rc != 0:
                said = (Path(self.control) / "master.log").read_text(errors="replace")
                shutil.rmtree(self.control, ignore_errors=True)
                self.control = ""
                raise TargetDown(explain(self.target, "connecting", rc, said))
            # the folder as an absolute path there (a relative one is under the login's home; the runner runs
            # in the run folder, so every path it is given must be absolute)
            folder = shlex.quote(self.target.folder)
            listing = self.remote(f"mkdir -p {folder}/files {folder}/runs/{self.run_id} && cd {folder} && pwd && "
                                  f"ls files", "making the run folder").split("\n", 1)
            self.folder = listing[0].strip()
            self.known = {n for n in (listing[1] if len(listing) > 1 else "").split() if len(n) == 64}
            from stages.ondevice import RUNNER_FILES

            for f in RUNNER_FILES:
                self.put(f, f"{self.run_dir}/{f.name}", "copying the runner")
            self.started = True
            log.info("target %s: run folder %s (%d files already there by content)", self.target.name, self.run_dir,
                     len(self.known))

    def put(self, local: Path, there: str, what: str) -> None:
        """Copy a file there through the shell (`cat >`): needs no SFTP server, which boards often lack."""
        with open(local, "rb") as f:
            res = subprocess.run(self.ssh_argv(f"cat > {shlex.quote(there)}"), stdin=f, capture_output=True)
        if res.returncode != 0:
            raise TargetDown(explain(self.target, what, res.returncode, res.stderr.decode(errors="replace")))

    def get(self, there: str, local: Path, what: str) -> None:
        with open(local, "wb") as f:
            res = subprocess.run(self.ssh_argv(f"cat {shlex.quote(there)}"), stdout=f, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise TargetDown(explain(self.target, what, res.returncode, res.stderr.decode(errors="replace")))

    def stage(self, local: Path) -> str:
        """The path there of a local file (and of its `.weight` companion, which MNN loads from beside it),
        copying it once: by content, so what is already there is not copied again. Stored under a name of the
        content's (two variants can be the same bytes: vit_t's decoder.fp32-static.mnn is decoder.fp32.mnn)."""
        weight = local.with_name(local.name + ".weight")
        files = [local, *([weight] if weight.exists() else [])]
        sha = cached_file_sha256(local) if len(files) == 1 else hashlib.sha256(
            "".join(cached_file_sha256(f) for f in files).encode()).hexdigest()
        there = f"{self.folder}/files/{sha}"
        name = "content" + "".join(local.suffixes[-1:])  # MNN reads <model>.weight beside <model>
        with self.lock:
            if sha in self.known:
                self.reused += 1
                return f"{there}/{name}"
            part = f"{there}.part-{self.run_id}"
            self.remote(f"mkdir -p {shlex.quote(part)}", "making a file folder")
            for f, to in zip(files, [name, name + ".weight"], strict=False):
                self.put(f, f"{part}/{to}", f"copying {f.name}")
            self.remote(f"rm -rf {shlex.quote(there)} && mv {shlex.quote(part)} {shlex.quote(there)}",
                        f"storing {local.name}")
            self.known.add(sha)
            self.copied.append(sha)
            self.copied_bytes += sum(f.stat().st_size for f in files)
            return f"{there}/{name}"

    def run(self, request: dict, log_file: Path, timeout_s: float) -> IsolatedResult:
        with self.lock:
            self.calls += 1
            n = self.calls
        req = dict(request)
        for key in ("model", "feeds"):
            if key in req:
                req[key] = self.stage(Path(req[key]))
        local_out = req.pop("out", None)
        if local_out:
            req["out"] = f"out-{n}.npz"
        req["result_file"] = f"result-{n}.json"
        # in the background and waited for, so the shell's exit status tells a signal (128 + N) from a dropped
        # connection (ssh's 255, also what an exec'd process killed by a signal gives), and its pid is known
        command = (f"cd {shlex.quote(self.run_dir)} && cat > request-{n}.json && "
                   f"{{ OPENBLAS_NUM_THREADS=1 {self.target.python} mnn_runner.py request-{n}.json & }} && "
                   f"echo $! > call-{n}.pid && wait $!")
        log_file.parent.mkdir(parents=True, exist_ok=True)
        what = f"MNN runner on {self.target.name}"
        with open(log_file, "w") as out:
            proc = subprocess.Popen(self.ssh_argv(command), stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
            try:
                proc.stdin.write(json.dumps(req).encode())
                proc.stdin.close()
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self._kill_call(n)
                return IsolatedResult(False, None, error=f"{what} timed out after {timeout_s:.0f} s and was killed",
                                      log_tail=tail(log_file))
            except BaseException:  # Ctrl-C: take the call down there too (close() then removes the folder)
                proc.kill()
                proc.wait()
                self._kill_call(n)
                raise
        if rc == -signal.SIGINT:  # Ctrl-C reached this ssh too (it shares the terminal's process group)
            self._kill_call(n)
            raise KeyboardInterrupt
        said = tail(log_file)
        if rc != 0:
            return IsolatedResult(False, rc, error=explain(self.target, "the MNN runner", rc, said), log_tail=said)
        with tempfile.TemporaryDirectory(prefix="sam-ssh-result-") as d:
            try:
                self.get(f"{self.run_dir}/result-{n}.json", Path(d) / f"result-{n}.json", "fetching the result")
                if local_out:
                    self.get(f"{self.run_dir}/out-{n}.npz", Path(d) / f"out-{n}.npz", "fetching the outputs")
            except TargetDown as e:
                return IsolatedResult(False, rc, error=str(e), log_tail=said)
            result = json.loads((Path(d) / f"result-{n}.json").read_text())
            if local_out and (Path(d) / f"out-{n}.npz").exists():
                shutil.move(str(Path(d) / f"out-{n}.npz"), local_out)
        self.remote_quiet(f"cd {shlex.quote(self.run_dir)} && rm -f out-{n}.npz call-{n}.pid")
        error = result.get("error", "")
        return IsolatedResult(ok=not error, returncode=rc, result=result, error=error, log_tail=said)

    def remote_quiet(self, command: str) -> bool:
        """Best effort (cleaning up, detached): a failure is logged, never raised; whether it worked."""
        try:
            self.remote(command, "cleaning up", timeout_s=CLEANUP_STEP_S, detached=True)
            return True
        except TargetDown as e:
            log.warning("%s", e)
            return False

    def _kill_call(self, n: int) -> None:
        self.remote_quiet(f"cd {shlex.quote(self.run_dir)} && kill -9 $(cat call-{n}.pid) 2>/dev/null; true")

    def close(self) -> None:
        if self.started:
            gone = [] if self.target.keep else [f"{self.folder}/files/{sha}" for sha in self.copied]
            # killed and waited for (<= 10 s): a dying runner writing into the folder would make rm leave it
            kill = (f"for p in {shlex.quote(self.run_dir)}/call-*.pid; do [ -f \"$p\" ] || continue; pid=$(cat \"$p\"); "
                    f"kill -9 $pid 2>/dev/null; i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 100 ]; do "
                    f"sleep 0.1; i=$((i+1)); done; done; ")
            done = self.remote_quiet(kill + ("true" if self.target.keep else "rm -rf " + " ".join(shlex.quote(p) for p in [self.run_dir, *gone])))
            log.info("target %s: copied %d files (%.1f MB), %d already there; %s", self.target.name, len(self.copied),
                     self.copied_bytes / 1e6, self.reused, f"kept in {self.folder}" if self.target.keep else
                     "run folder and copied files removed" if done else f"{self.run_dir} may be left there")
        if self.control:
            try:  # a master that does not answer in time stops itself (ControlPersist)
                subprocess.run(["ssh", *self._options()[:-2], "-O", "exit", "-p", str(self.target.port),
                                self.target.destination], capture_output=True, stdin=subprocess.DEVNULL,
                               timeout=MASTER_EXIT_S, start_new_session=True)
            except (subprocess.TimeoutExpired, OSError) as e:
                log.warning("target %s: the SSH master connection was not stopped (%s)", self.target.name, e)
            finally:
                shutil.rmtree(self.control, ignore_errors=True)


def explain(target: SshTarget, what: str, rc: int, said: str) -> str:
    """One line for a CSV status: what failed there, and what to do about it."""
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    text = " ".join(lines)
    if "No space left on device" in text or "disk quota" in text.lower():
        return f"{what} on {target.name}: the target's disk is full ({target.folder}): {last}"
    if rc == 255:
        if "Host key verification failed" in text:
            return (f"{what}: the host key of {target.name} is not in known_hosts: connect once with `ssh -p "
                    f"{target.port} {target.destination}`, check the key and accept it")
        if "Permission denied" in text:
            return (f"{what}: {target.name} refused the login ({last}): install a key there (ssh-copy-id -p "
                    f"{target.port} {target.destination}); passwords are never used")
        return f"{what}: the SSH connection to {target.name} failed or dropped ({last or 'no message'})"
    for module, pip in PIP_NAMES.items():
        if f"No module named '{module}'" in text:
            import importlib.metadata

            version = importlib.metadata.version(pip) if pip == "MNN" else ""
            return (f"{what} on {target.name}: its Python ({target.python}) has no {module}: run `{target.python} -m "
                    f"pip install {pip}{'==' + version if version else ''}` there")
    if rc == 127:
        return (f"{what} on {target.name}: {target.python} was not found there ({last}): install Python 3 with "
                f"numpy and MNN there, or name it with ?python=/path/to/python3")
    if rc > 128:  # the remote shell's way of saying "killed by signal N"
        return f"{what} on {target.name} {describe_exit(128 - rc)}"
    return f"{what} on {target.name} {describe_exit(rc)}" + (f": {last}" if last else "")


