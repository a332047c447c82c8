"""SSH targets: the MNN runner on a device of the user's (a Raspberry Pi, a Jetson, an Arm server, a phone
under Termux), for accuracy and latency as that device's CPU and MNN build compute them.

    ssh://[user@]host[:port][?python=CMD&dir=PATH&keep=1&config=FILE&timeout=SECONDS]

The system's `ssh` does the work (files go through `cat`, so no SFTP server is needed), with the user's own
keys, ~/.ssh/config and known_hosts (BatchMode: never a password prompt; no password is ever in a config).
`python` is the command that runs Python 3 there (default python3; it needs numpy and MNN; split as the shell
would, each word quoted), `dir` the folder there (default .cache/sam-deploy; a relative or ~ path is under the
login's home), `keep=1` keeps what a run copied, `config` an ssh_config file to use instead of ~/.ssh/config.
`timeout` bounds every step there but the runner's own calls (those have the stage's timeout_s): a command
gets `timeout` seconds (default 60), a copy max(timeout, its size at 1 MB/s); a stalled device fails the call
saying so. host is a host name, IPv4 or [IPv6] address, user a name of [A-Za-z0-9._-] (neither starts with -).

On the target: DIR/files/<sha256>/ holds each model (with its .weight file) and input file by content, so a
file is copied once and, with keep, a later run copies nothing already there; DIR/runs/<run>/ holds the
runner, requests, outputs and pid files of one run, and uses/<sha256>, one per file the run uses. At the end
(also after Ctrl-C) the run folder is removed and, unless keep, each file it used that no other run's folder
names and that no keep run used; a partial copy is removed when it fails and, at the next start, when its run
is gone. Runs sharing DIR (several hosts, several pipelines) take turns on DIR/.lock for those steps. A
refused or dropped connection, a crash there, a Python without numpy or MNN, a full disk, a stall, an answer
that is not the protocol's (garbage, half a file, nothing): each fails that call with a message and the
target's last output lines; the login's banners and MOTD are ignored (the protocol's output is framed by a
marker).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import shlex
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core.errors import ConfigError, PipelineError
from stages.core.isolate import IsolatedResult, describe_exit
from stages.core.signals import deferred
from stages.runtimes.ssh_session import SESSIONS, SESSIONS_LOCK, TargetDown, _Session, session, tail

log = logging.getLogger(__name__)

DEFAULT_DIR = ".cache/sam-deploy"
STEP_S, COPY_BYTES_PER_S = 60.0, 1e6  # a remote step's default bound; a copy's floor rate
EXPECTED = "expected ssh://[user@]host[:port][?python=CMD&dir=PATH&keep=1&config=FILE&timeout=SECONDS]"
HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")  # a host name, IPv4 address, alias
USER_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
PIP_NAMES = {"numpy": "numpy", "MNN": "MNN"}



def _tilde_word(word: str) -> str:
    """`word` quoted for a POSIX shell, but a leading ~ or ~user (a plain name) left bare for it to expand."""
    head, sep, rest = word.partition("/")
    if re.fullmatch(r"~[A-Za-z0-9._-]*", head):
        return head + (sep + shlex.quote(rest) if rest else "")
    return shlex.quote(word)

@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str = ""
    port: int = 22
    python: str = "python3"
    folder: str = DEFAULT_DIR
    keep: bool = False
    config: str = ""  # an ssh_config file (-F); empty: the user's own
    timeout: float = STEP_S

    kind = "ssh"
    cpu = ""
    emulated = False

    def __post_init__(self) -> None:
        why = _problem(self)
        if why:
            raise ConfigError(why)

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port != 22 else ""
        return f"ssh://{self.user + '@' if self.user else ''}{host}{port}"

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def python_command(self) -> str:
        """`python` for the remote shell: its words, each quoted (a `;` or `$(...)` in it is no command), but a
        leading ~ or ~user of the program left for the shell there to expand (`python=~/venv/bin/python`)."""
        words = shlex.split(self.python)
        return " ".join([_tilde_word(words[0]), *map(shlex.quote, words[1:])]) if words else ""

    @property
    def folder_word(self) -> str:
        """`dir` for the remote shell: quoted, but a leading ~ or ~user left for the shell there to expand."""
        return _tilde_word(self.folder)

    def copy_timeout(self, size: int) -> float:
        return max(self.timeout, size / COPY_BYTES_PER_S)

    def describe(self) -> str:
        return f"{self.name} (over SSH)"

    def run(self, request: dict, log_file: Path, timeout_s: float) -> IsolatedResult:
        """The runner there with `request`; its local paths ("model", "feeds", "out") are copied there and
        back. Never raises for a fault on the target or the way there: the result says what went wrong."""
        try:
            return self._run(session(self), request, log_file, timeout_s)
        except TargetDown as e:
            return IsolatedResult(ok=False, returncode=None, error=str(e), log_tail=tail(log_file))
        except (OSError, ValueError, KeyError, TypeError) as e:  # what came back was not the protocol's
            log.exception("target %s", self.name)
            return IsolatedResult(ok=False, returncode=None, error=f"{self.name}: {type(e).__name__}: {e}",
                                  log_tail=tail(log_file))

    def _run(self, s: _Session, request: dict, log_file: Path, timeout_s: float) -> IsolatedResult:
        n = s.next_call()
        req = {**request, **{k: s.stage(Path(request[k])) for k in ("model", "feeds") if k in request}}
        local_out = req.pop("out", None)
        req.update(result_file=f"result-{n}.json", **({"out": f"out-{n}.npz"} if local_out else {}))
        rc = s.call(n, req, log_file, timeout_s)
        said = tail(log_file)
        if rc != 0:
            why = (f"MNN runner on {self.name} timed out after {timeout_s:.0f} s and was killed" if rc is None
                   else self.explain("the MNN runner", rc, said))
            return IsolatedResult(False, rc, error=why, log_tail=said)
        with tempfile.TemporaryDirectory(prefix="sam-ssh-result-") as d:
            got, npz = Path(d) / "result.json", Path(d) / "out.npz"
            s.get(f"{s.run_dir}/result-{n}.json", got, "fetching the result")
            text = got.read_text(errors="replace")
            try:
                result = json.loads(text)
                why = "" if isinstance(result, dict) else f"a JSON {type(result).__name__}"
            except ValueError as e:
                why = str(e)
            if why:
                raise TargetDown(f"the MNN runner on {self.name} answered what is not the protocol's JSON "
                                 f"object ({why}): {text[:160]!r}")
            if local_out and not result.get("error"):
                s.get(f"{s.run_dir}/out-{n}.npz", npz, "fetching the outputs")
                try:
                    with np.load(npz, allow_pickle=False) as z:
                        _ = sum(z[k].size for k in z.files)  # every array read: half a file fails here
                except Exception as e:  # any unreadable file is the device's fault
                    raise TargetDown(f"the outputs the MNN runner on {self.name} wrote are not an .npz "
                                     f"({type(e).__name__}: {e})") from None
                shutil.move(str(npz), local_out)
        s.remote_quiet(f"cd {shlex.quote(s.run_dir)} && rm -f out-{n}.npz call-{n}.pid")
        error = result.get("error", "")
        return IsolatedResult(ok=not error, returncode=rc, result=result, error=str(error), log_tail=said)

    def probe(self, log_file: Path, timeout_s: float = 300) -> dict:
        """What the target is (MNN version, machine, CPU model, cores, CPU features) and which MNN backends
        open there. A target whose MNN differs from the host's is measured all the same (its rows name its
        version)."""
        import importlib.metadata

        from stages.ondevice.mnn_settings import MNN_BACKENDS

        res = self.run({"backends": list(MNN_BACKENDS)}, log_file, timeout_s)
        if not res.ok and res.returncode not in (None, 255, 127) and "No module named" not in res.error:
            res = self.run({}, log_file, timeout_s)  # the backend probe itself crashed there: ask without it
            if res.ok:
                res.result["backends"] = {b: None if b == "CPU" else "the backend probe crashed on the target"
                                          for b in MNN_BACKENDS}
        if res.ok and not (isinstance(res.result.get("cores"), int)
                           and isinstance(res.result.get("backends"), dict)):
            res = IsolatedResult(False, res.returncode, error=f"its answer lacks cores or backends: "
                                 f"{str(res.result)[:200]}", log_tail=res.log_tail)
        if not res.ok:
            raise PipelineError(f"target {self.name} did not answer: {res.why}")
        host = importlib.metadata.version("MNN")
        if res.result.get("mnn_version") != host:
            log.warning("target %s runs MNN %s, the host %s: its rows name its own version", self.name,
                        res.result.get("mnn_version"), host)
        return res.result

    def close(self) -> None:
        """Remove this run's folder on the target and, unless keep, the files it copied there."""
        with SESSIONS_LOCK:
            session = SESSIONS.pop(self, None)
        if session is not None:
            session.close()

    def explain(self, what: str, rc: int, said: str) -> str:
        """One line for a CSV status: what failed there, and what to do about it."""
        lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        text = " ".join(lines)
        if "No space left on device" in text or "disk quota" in text.lower():
            return f"{what} on {self.name}: the target's disk is full ({self.folder}): {last}"
        if rc == 255:
            if "Host key verification failed" in text:
                return (f"{what}: the host key of {self.name} is not in known_hosts: connect once with "
                        f"`ssh -p {self.port} {self.destination}`, check the key and accept it")
            if "Permission denied" in text:
                return (f"{what}: {self.name} refused the login ({last}): install a key there "
                        f"(ssh-copy-id -p {self.port} {self.destination}); passwords are never used")
            return f"{what}: the SSH connection to {self.name} failed or dropped ({last or 'no message'})"
        for module, pip in PIP_NAMES.items():
            if f"No module named '{module}'" in text:
                import importlib.metadata

                version = importlib.metadata.version(pip) if pip == "MNN" else ""
                return (f"{what} on {self.name}: its Python ({self.python}) has no {module}: run "
                        f"`{self.python} -m pip install {pip}{'==' + version if version else ''}` there")
        if rc == 127:
            return (f"{what} on {self.name}: {self.python} was not found there ({last}): install Python 3 "
                    f"with numpy and MNN there, or name it with ?python=/path/to/python3")
        if rc > 128:  # the remote shell's way of saying "killed by signal N"
            return f"{what} on {self.name} {describe_exit(128 - rc)}"
        return f"{what} on {self.name} {describe_exit(rc)}" + (f": {last}" if last else "")


def _problem(t: SshTarget) -> str | None:
    """What makes `t` no target (a host or user that ssh would read as an option, a port out of range...)."""
    if ":" in t.host:
        try:
            ipaddress.IPv6Address(t.host.split("%")[0])
        except ValueError:
            return f"{t.host!r} is not an IPv6 address"
    elif not HOST_NAME.fullmatch(t.host):
        return f"{t.host!r} is not a host name (letters, digits, . _ -, not starting with -), IPv4 or [IPv6]"
    if t.user and not USER_NAME.fullmatch(t.user):
        return f"{t.user!r} is not a user name ([A-Za-z0-9._-], not starting with -)"
    if not 1 <= t.port <= 65535:
        return f"the port must be a number from 1 to 65535, got {t.port}"
    try:
        words = shlex.split(t.python)
    except ValueError as e:
        return f"python={t.python!r} cannot be split into words as a shell would ({e})"
    if not words:
        return "python is empty"
    head = t.folder.partition("/")[0]
    if not t.folder or (head.startswith("~") and head != "~" and not USER_NAME.fullmatch(head[1:])):
        return f"dir={t.folder!r} is not a folder (a path, ~/path or ~user/path)"
    if not 0 < t.timeout <= 86400:  # inf or 1e300 would overflow the waits
        return f"timeout must be a number of seconds above 0 and at most 86400, got {t.timeout}"
    return None


def close_all(targets) -> None:
    """close() every SSH target among `targets` (the others have nothing to clean up), in parallel: all of
    them take at most ssh_session.CLOSE_BOUND_S. After Ctrl-C the runner also sends SIGTERM to the stage
    (stages/engine/process.py), which must not cut this cleanup short: signals that come meanwhile are
    delivered when it is done."""
    ssh = [t for t in targets if isinstance(t, SshTarget)]
    if not ssh:
        return
    with deferred(), ThreadPoolExecutor(len(ssh), thread_name_prefix="ssh-close") as pool:
        for f in [pool.submit(t.close) for t in ssh]:
            try:
                f.result()
            except Exception as e:  # one target's cleanup failing leaves the others' to finish
                log.warning("closing an SSH target failed: %s: %s", type(e).__name__, e)
