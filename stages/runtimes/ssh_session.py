"""One run's SSH connection to a target (stages/runtimes/ssh.py): a ControlMaster connection, files copied by
content through `cat`, the runner called there with its pid kept (so Ctrl-C can stop it), cleanup at close, a
bound on every step, and a one-line explanation for every way it fails. What a command there prints for the
protocol is framed by a marker of the run's, so a login's banner or MOTD around it is ignored."""

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
from typing import TYPE_CHECKING, BinaryIO

from stages.core.artifacts import cached_file_sha256

if TYPE_CHECKING:
    from stages.runtimes.ssh import SshTarget

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=2")
CLEANUP_STEP_S, MASTER_EXIT_S = 60, 30  # close(): one cleanup command there, then the master's exit
CLOSE_BOUND_S = CLEANUP_STEP_S + MASTER_EXIT_S  # the longest a close() takes
STALE_MIN = 24 * 60  # a run folder or partial copy untouched this long (minutes) is a dead run's
q = shlex.quote

log = logging.getLogger(__name__)


class TargetDown(Exception):
    """The target could not be reached, or a step around the runner failed there (copying, a full disk, a
    stall, an answer that is not the protocol's)."""


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
    known: set[str] = field(default_factory=set)  # content hashes in DIR/files this run holds a reference to
    copied: list[str] = field(default_factory=list)  # hashes this run copied there
    copied_bytes: int = 0
    reused: int = 0
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    control: str = ""
    folder: str = ""  # the target's folder, absolute, once started
    mark: str = field(default_factory=lambda: f"::sam-deploy-{uuid.uuid4().hex}::")

    @property
    def run_dir(self) -> str:
        return f"{self.folder}/runs/{self.run_id}"

    def _options(self) -> list[str]:
        opts = [*(["-F", self.target.config] if self.target.config else []), *SSH_OPTIONS]
        if self.control:
            opts += ["-o", f"ControlPath={self.control}/%C", "-o", "ControlMaster=no"]
        return opts

    def ssh_argv(self, command: str, options: tuple[str, ...] = ()) -> list[str]:
        # `--`: the destination is never read as an option (it is checked to be a name too)
        return ["ssh", *self._options(), *options, "-p", str(self.target.port), "--", self.target.destination,
                *([command] if command else [])]

    def remote(self, command: str, what: str, timeout_s: float | None = None,
               stdin: bytes | BinaryIO | None = None, detached: bool = False) -> bytes:
        """Run a shell command there; what it printed between the markers. A refusal, a drop, a failing
        command, a stall past timeout_s (the target's `timeout` unless given) or an unmarked answer raises
        TargetDown. detached (cleanup): in a session of its own, so a further Ctrl-C does not cut it short."""
        timeout_s = timeout_s or self.target.timeout
        framed = f"printf '%s\\n' {self.mark}; ( {command} ); s=$?; printf '\\n%s\\n' {self.mark}; exit $s"
        feed = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": stdin or subprocess.DEVNULL}
        try:
            res = subprocess.run(self.ssh_argv(framed), capture_output=True, timeout=timeout_s,
                                 start_new_session=detached, **feed)
        except subprocess.TimeoutExpired:
            raise TargetDown(f"{what} on {self.target.name} timed out after {timeout_s:.0f} s (a stalled "
                             f"device? each step there gets the spec's ?timeout=SECONDS, default 60, a copy "
                             f"at least its size at 1 MB/s)") from None
        if res.returncode != 0:
            said = res.stderr.decode(errors="replace")
            raise TargetDown(self.target.explain(what, res.returncode, said))
        mark = self.mark.encode()
        start, end = res.stdout.find(mark + b"\n"), res.stdout.rfind(b"\n" + mark)
        if start < 0 or end < start:
            said = " | ".join((res.stdout + res.stderr).decode(errors="replace").strip().splitlines()[-3:])
            raise TargetDown(f"{what} on {self.target.name}: the answer is not the protocol's (no marker "
                             f"around it; the login shell ran something else?): {said or 'nothing'}")
        return res.stdout[start + len(mark) + 1:end]

    def start(self) -> None:
        with self.lock:
            if self.started:
                return
            if self.control:  # an earlier start got its master up, then failed there: stop that one first
                self.close()
            self.control = tempfile.mkdtemp(prefix="sam-ssh-")
            # one master connection for the run's many ssh calls (a login costs 0.1-1 s); it stops itself 60 s
            # after the last use, and close() stops it at once. Its output goes to a file: a master holding a
            # pipe open would keep the caller waiting.
            with open(Path(self.control) / "master.log", "w") as out:
                master = ("-o", "ControlMaster=yes", "-o", "ControlPersist=60", "-f", "-N")
                self.control, control = "", self.control
                argv = self.ssh_argv("", ("-o", f"ControlPath={control}/%C", *master))
                try:
                    rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                        timeout=max(self.target.timeout, 15)).returncode
                except subprocess.TimeoutExpired:
                    rc = 255
            if rc != 0:
                said = (Path(control) / "master.log").read_text(errors="replace")
                shutil.rmtree(control, ignore_errors=True)
                raise TargetDown(self.target.explain("connecting", rc, said))
            self.control = control
            # the folder as an absolute path there (relative and ~ paths are under the login's home; the
            # runner runs in the run folder, so every path it is given must be absolute). Partial copies of
            # runs that are gone, and run folders untouched for a day (their runs died), are removed.
            stale = (f"for p in files/*.part-*; do [ -e \"$p\" ] || continue; "
                     f"if [ ! -d \"runs/${{p##*.part-}}\" ] || [ -n \"$(find \"$p\" -maxdepth 0 -mmin "
                     f"+{STALE_MIN})\" ]; then rm -rf \"$p\"; fi; done; "
                     f"find runs -mindepth 1 -maxdepth 1 -mmin +{STALE_MIN} -exec rm -rf {{}} + ; ")
            folder = self.target.folder_word
            said = self.remote(f"mkdir -p {folder}/files {folder}/runs/{self.run_id}/uses && cd {folder} && "
                               f"{self._locked(stale + 'pwd')}", "making the run folder")
            self.folder = said.decode(errors="replace").strip().splitlines()[-1]
            from stages.ondevice import RUNNER_FILES

            try:
                for f in RUNNER_FILES:
                    self.put(f, f"{self.run_dir}/{f.name}", "copying the runner")
            except TargetDown:
                self.remote_quiet(f"rm -rf {q(self.run_dir)}")
                raise
            self.started = True
            log.info("target %s: run folder %s", self.target.name, self.run_dir)

    def _locked(self, body: str) -> str:
        """`body` while holding DIR/.lock (a folder: mkdir is atomic everywhere); one held for 30 s is a dead
        run's and is taken over."""
        lock = q(f"{self.folder or '.'}/.lock")
        return (f"(i=0; until mkdir {lock} 2>/dev/null; do i=$((i+1)); "
                f"if [ $i -gt 300 ]; then rmdir {lock}; i=0; fi; sleep 0.1; done; "
                f"{{ {body}; }}; s=$?; rmdir {lock}; exit $s)")

    def put(self, local: Path, there: str, what: str) -> None:
        """Copy a file there through the shell (`cat >`): needs no SFTP server, which boards often lack."""
        size = local.stat().st_size
        with open(local, "rb") as f:
            said = self.remote(f"cat > {q(there)} && wc -c < {q(there)}", what,
                               self.target.copy_timeout(size), f)
        if said.strip() != str(size).encode():
            raise TargetDown(f"{what} on {self.target.name}: {said.strip()[:40]!r} of {size} bytes arrived")

    def get(self, there: str, local: Path, what: str) -> None:
        said = self.remote(f"f={q(there)}; [ -f \"$f\" ] || {{ echo \"the device wrote no $f\" >&2; "
                           f"exit 3; }}; wc -c < \"$f\"", what).strip()
        if not said.isdigit():
            raise TargetDown(f"{what} on {self.target.name}: its size there is {said[:40]!r}")
        data = self.remote(f"cat {q(there)}", what, self.target.copy_timeout(int(said)))
        if len(data) != int(said):
            raise TargetDown(f"{what} on {self.target.name}: {len(data)} of {int(said)} bytes came back")
        local.write_bytes(data)

    def stage(self, local: Path) -> str:
        """The path there of a local file (and of its `.weight` companion, which MNN loads from beside it),
        copying it once: by content, so what is already there is not copied again. Stored under a name of the
        content's (two variants can be the same bytes: vit_t's decoder.fp32-static.mnn is decoder.fp32.mnn).
        This run's reference (runs/<run>/uses/<sha>) is made first, under the lock: no other run removes the
        file while this one may use it."""
        weight = local.with_name(local.name + ".weight")
        files = [local, *([weight] if weight.exists() else [])]
        sha = cached_file_sha256(local) if len(files) == 1 else hashlib.sha256(
            "".join(cached_file_sha256(f) for f in files).encode()).hexdigest()
        there, part = f"{self.folder}/files/{sha}", f"{self.folder}/files/{sha}.part-{self.run_id}"
        name = "content" + "".join(local.suffixes[-1:])  # MNN reads <model>.weight beside <model>
        # .transient: copied by a run without keep; a keep run (copying or finding it) takes that away
        mode = f"rm -f {q(there)}/.transient" if self.target.keep else "true"
        with self.lock:
            if sha in self.known:
                self.reused += 1
                return f"{there}/{name}"
            uses = q(f"{self.run_dir}/uses/{sha}")
            said = self.remote(self._locked(f"touch {uses} && if [ -d {q(there)} ]; then {mode} && "
                                            f"echo there; fi"), f"looking for {local.name} there")
            if said.strip() == b"there":
                self.reused += 1
            else:
                try:
                    mark = "" if self.target.keep else f" && touch {q(part)}/.transient"
                    self.remote(f"rm -rf {q(part)} && mkdir -p {q(part)}{mark}", "making a folder")
                    for f, to in zip(files, [name, name + ".weight"], strict=False):
                        self.put(f, f"{part}/{to}", f"copying {f.name}")
                    self.remote(self._locked(f"if [ -d {q(there)} ]; then rm -rf {q(part)} && {mode}; "
                                             f"else mv {q(part)} {q(there)}; fi"), f"storing {local.name}")
                except TargetDown:
                    self.remote_quiet(f"rm -rf {q(part)}")  # a partial copy is never left there
                    raise
                self.copied.append(sha)
                self.copied_bytes += sum(f.stat().st_size for f in files)
            self.known.add(sha)
            return f"{there}/{name}"

    def next_call(self) -> int:
        with self.lock:
            self.calls += 1
            return self.calls

    def call(self, n: int, req: dict, log_file: Path, timeout_s: float) -> int | None:
        """Call n: the runner there with `req` (its paths already there); its exit status, or None when it ran
        past timeout_s (it was killed there)."""
        # in the background and waited for, so the shell's exit status tells a signal (128 + N) from a dropped
        # connection (ssh's 255, also what an exec'd process killed by a signal gives), and its pid is known
        command = (f"cd {q(self.run_dir)} && cat > request-{n}.json && {{ OPENBLAS_NUM_THREADS=1 "
                   f"{self.target.python_command} mnn_runner.py request-{n}.json & }} && "
                   f"echo $! > call-{n}.pid && wait $!")
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as out:
            proc = subprocess.Popen(self.ssh_argv(command), stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.STDOUT)
            try:
                proc.stdin.write(json.dumps(req).encode())
                proc.stdin.close()
                rc = proc.wait(timeout=timeout_s)
            except BaseException as e:  # past its time, or Ctrl-C: take the call down there too
                proc.kill()
                proc.wait()
                self._kill_call(n)
                if isinstance(e, subprocess.TimeoutExpired):
                    return None
                raise
        if rc == -signal.SIGINT:  # Ctrl-C reached this ssh too (it shares the terminal's process group)
            self._kill_call(n)
            raise KeyboardInterrupt
        return rc

    def remote_quiet(self, command: str) -> bool:
        """Best effort (cleaning up, detached): a failure is logged, never raised; whether it worked."""
        try:
            self.remote(command, "cleaning up", min(self.target.timeout, CLEANUP_STEP_S), detached=True)
            return True
        except TargetDown as e:
            log.warning("%s", e)
            return False

    def _kill_call(self, n: int) -> None:
        self.remote_quiet(f"cd {q(self.run_dir)} && kill -9 $(cat call-{n}.pid) 2>/dev/null; true")

    def close(self) -> None:
        if self.started:
            # killed and waited for (<= 10 s): a dying runner writing into the folder would make rm leave it
            kill = (f"for p in {q(self.run_dir)}/call-*.pid; do [ -f \"$p\" ] || continue; "
                    f"pid=$(cat \"$p\"); kill -9 $pid 2>/dev/null; i=0; while kill -0 $pid 2>/dev/null "
                    f"&& [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; done; ")
            # a file this run used goes if a run without keep copied it, no keep run used it, and no other run
            # (its folder) still names it
            gone = (f"cd {q(self.folder)} && rm -rf {q(self.run_dir)} && for s in {' '.join(self.known)}; do "
                    f"for u in runs/*/uses/$s; do [ -e \"$u\" ] && continue 2; done; "
                    f"[ -f files/$s/.transient ] && rm -rf files/$s; done; true")
            done = self.remote_quiet(kill + ("true" if self.target.keep else self._locked(gone)))
            log.info("target %s: copied %d files (%.1f MB), %d already there; %s", self.target.name,
                     len(self.copied), self.copied_bytes / 1e6, self.reused, f"kept in {self.folder}"
                     if self.target.keep else "run folder and unused files removed" if done else
                     f"{self.run_dir} may be left there")
        if self.control:
            try:  # a master that does not answer in time stops itself (ControlPersist)
                subprocess.run(self.ssh_argv("", ("-O", "exit")), capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=MASTER_EXIT_S, start_new_session=True)
            except (subprocess.TimeoutExpired, OSError) as e:
                log.warning("target %s: the SSH master connection was not stopped (%s)", self.target.name, e)
            finally:
                shutil.rmtree(self.control, ignore_errors=True)
