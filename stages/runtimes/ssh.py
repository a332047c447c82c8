"""SSH targets: the MNN runner on a device of the user's (a Raspberry Pi, a Jetson, an Arm server, a phone under
Termux), for accuracy and latency as that device's CPU and MNN build compute them.

    ssh://[user@]host[:port][?python=CMD&dir=PATH&keep=1&config=FILE]

The system's `ssh` does the work (files go through `cat`, so no SFTP server is needed), with the user's own keys, ~/.ssh/config and known_hosts (BatchMode:
never a password prompt; no password is ever in a config). `python` is the command that runs Python 3 there
(default python3; it needs numpy and MNN), `dir` the folder there (default .cache/sam-deploy under the login's
home), `keep=1` keeps what a run copied, `config` an ssh_config file to use instead of ~/.ssh/config.

On the target: DIR/files/<sha256>/ holds each model (with its .weight file) and input file by content, so a
file is copied once per run and, with keep, a later run copies nothing already there; DIR/runs/<run>/ holds the
runner, requests, outputs and pid files of one run. At the end (also after Ctrl-C) the run folder and the files
this run copied are removed, unless keep. A refused or dropped connection, a crash there (a segfault), a Python
without numpy or MNN, a full disk: each fails that call with a message and the target's last output lines.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from stages.core.errors import ConfigError, PipelineError
from stages.core.isolate import IsolatedResult
from stages.core.signals import deferred
from stages.runtimes.ssh_session import SESSIONS, SESSIONS_LOCK, TargetDown, session, tail

log = logging.getLogger(__name__)

DEFAULT_DIR = ".cache/sam-deploy"


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str = ""
    port: int = 22
    python: str = "python3"
    folder: str = DEFAULT_DIR
    keep: bool = False
    config: str = ""  # an ssh_config file (-F); empty: the user's own

    kind = "ssh"
    cpu = ""
    emulated = False

    @property
    def name(self) -> str:
        return f"ssh://{self.user + '@' if self.user else ''}{self.host}{f':{self.port}' if self.port != 22 else ''}"

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def describe(self) -> str:
        return f"{self.name} (over SSH)"

    def run(self, request: dict, log_file: Path, timeout_s: float) -> IsolatedResult:
        """The runner there with `request`; its local paths ("model", "feeds", "out") are copied there and back.
        Never raises for a fault on the target or the way there: the result says what went wrong."""
        try:
            return session(self).run(request, log_file, timeout_s)
        except TargetDown as e:
            said = tail(log_file)
            return IsolatedResult(ok=False, returncode=None, error=str(e), log_tail=said)

    def probe(self, log_file: Path, timeout_s: float = 300) -> dict:
        """What the target is (MNN version, machine, CPU model, cores, CPU features) and which MNN backends open
        there. A target whose MNN differs from the host's is measured all the same (its rows name its version)."""
        import importlib.metadata

        from stages.ondevice.mnn_runner import MNN_BACKENDS

        res = self.run({"backends": list(MNN_BACKENDS)}, log_file, timeout_s)
        if not res.ok and res.returncode not in (None, 255, 127) and "No module named" not in res.error:
            res = self.run({}, log_file, timeout_s)  # the backend probe itself crashed there: ask without it
            if res.ok:
                res.result["backends"] = {b: None if b == "CPU" else "the backend probe crashed on the target"
                                          for b in MNN_BACKENDS}
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


def parse_ssh(spec: str, where: str = "target") -> SshTarget:
    url = urlsplit(spec)
    expected = "expected ssh://[user@]host[:port][?python=CMD&dir=PATH&keep=1&config=FILE]"
    if url.scheme != "ssh" or not url.hostname or url.path not in ("", "/"):
        raise ConfigError(f"{where}: {spec!r} is not an SSH target; {expected}")
    if url.password is not None:
        raise ConfigError(f"{where}: {spec!r} holds a password; SSH targets log in with the user's keys "
                          f"(ssh-copy-id), never a password in a config")
    try:
        port = url.port or 22
    except ValueError:
        raise ConfigError(f"{where}: {spec!r}: the port must be a number from 1 to 65535") from None
    query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - {"python", "dir", "keep", "config"})
    if unknown:
        raise ConfigError(f"{where}: {spec!r}: unknown option {', '.join(unknown)}; {expected}")
    if query.get("keep", "0") not in ("0", "1", "true", "false"):
        raise ConfigError(f"{where}: {spec!r}: keep must be 1 or 0, got {query['keep']!r}")
    if "config" in query and not Path(query["config"]).is_file():
        raise ConfigError(f"{where}: {spec!r}: the ssh_config file {query['config']} does not exist")
    return SshTarget(url.hostname, url.username or "", port, query.get("python") or "python3",
                     query.get("dir") or DEFAULT_DIR, query.get("keep", "0") in ("1", "true"), query.get("config", ""))


def close_all(targets) -> None:
    """close() every SSH target among `targets` (the others have nothing to clean up), in parallel: all of them
    take at most ssh_session.CLOSE_BOUND_S. After Ctrl-C the runner also sends SIGTERM to the stage (stages/engine/process.py),
    which must not cut this cleanup short: signals that come meanwhile are delivered when it is done."""
    ssh = [t for t in targets if isinstance(t, SshTarget)]
    if not ssh:
        return
    with deferred(), ThreadPoolExecutor(len(ssh), thread_name_prefix="ssh-close") as pool:
        for f in [pool.submit(t.close) for t in ssh]:
            try:
                f.result()
            except Exception as e:  # one target's cleanup failing leaves the others' to finish
                log.warning("closing an SSH target failed: %s: %s", type(e).__name__, e)
