"""Targets: where an MNN model is run for parity. Each runs the same script, stages/ondevice/mnn_runner.py.

  host              this machine's Python and MNN
  arm64[:CPU]       MNN's aarch64 wheel under QEMU user mode on an emulated CPU (default `max`: fp16, sdot,
                    i8mm, SVE2; `cortex-a53`: ARMv8.0, no fp16 arithmetic). See stages/runtimes/arm_env.py.

Protocol (what an SSH target will speak too): the runner script, the model file, the inputs (.npz of
"case::input" arrays) and the MNN settings go in; the outputs (.npz), per-case run times and the CPU features
MNN reports come back. A crash on the target fails that call with the target's last log lines; it never
raises. Times from an emulated target are never reported as latency.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from stages.core.errors import ConfigError, PipelineError
from stages.core.isolate import IsolatedResult, run_process
from stages.ondevice import RUNNER, RUNNER_FILES

KINDS = ("host", "arm64", "ssh")


@dataclass(frozen=True)
class Target:
    kind: str  # host | arm64
    cpu: str = ""  # the emulated CPU model (arm64)

    @property
    def name(self) -> str:
        return self.kind + (f":{self.cpu}" if self.cpu and self.cpu != "max" else "")

    @property
    def emulated(self) -> bool:
        return self.kind == "arm64"

    def describe(self) -> str:
        return "host" if self.kind == "host" else f"arm64 (QEMU user mode, -cpu {self.cpu or 'max'})"

    def argv(self, runner: Path) -> list[str]:
        if self.kind == "host":
            return [sys.executable, str(runner)]
        from stages.runtimes import arm_env

        return arm_env.ensure().command(self.cpu or "max", str(runner))

    def run(self, request: dict, log_file: Path, timeout_s: float) -> IsolatedResult:
        """Run the runner on this target with `request` (see stages/ondevice/mnn_runner.py). The runner is
        copied next to the request, so neither side imports anything from this project's tree."""
        with tempfile.TemporaryDirectory(prefix="sam-deploy-target-") as d:
            for f in RUNNER_FILES:
                shutil.copy2(f, Path(d) / f.name)
            runner = Path(d) / RUNNER.name
            return run_process(self.argv(runner), request, log_file, timeout_s,
                               what=f"MNN runner on {self.name}")

    def close(self) -> None:
        """Nothing to clean up on this machine (an SSH target removes its remote run folder)."""

    def probe(self, log_file: Path, timeout_s: float = 300) -> dict:
        """MNN version, machine and CPU features of the target; the target's MNN must be the host's."""
        res = self.run({}, log_file, timeout_s)
        if not res.ok:
            raise PipelineError(f"target {self.name} did not answer: {res.why}")
        host = importlib.metadata.version("MNN")
        if res.result.get("mnn_version") != host:
            raise PipelineError(f"MNN on target {self.name} is {res.result.get('mnn_version')}, on the host "
                                f"{host}: they must be equal (the target would compute with other kernels)")
        return res.result


HOST = Target("host")


def parse_target(spec: str, where: str = "target"):
    """'host', 'arm64', 'arm64:<cpu>' (a QEMU CPU model) or 'ssh://[user@]host[:port][?python=...&dir=...]'
    (stages/runtimes/ssh.py)."""
    from stages.runtimes.arm_env import CPUS

    if str(spec).startswith("ssh:"):
        return parse_ssh(str(spec), where)
    kind, _, cpu = str(spec).partition(":")
    if kind not in KINDS or kind == "ssh":
        raise ConfigError(f"{where}: {spec!r} is not a target; expected one of: host, arm64, arm64:<cpu> "
                          f"(cpu: {', '.join(CPUS)}), ssh://[user@]host[:port]")
    if kind == "host" and cpu:
        raise ConfigError(f"{where}: the host target takes no CPU model ({spec!r})")
    if kind == "arm64" and cpu and cpu not in CPUS:
        raise ConfigError(f"{where}: {cpu!r} is not a CPU model this project knows for arm64 "
                          f"({', '.join(CPUS)})")
    return Target(kind, cpu or ("max" if kind == "arm64" else ""))


def parse_ssh(spec: str, where: str = "target"):
    """An ssh:// spec (stages/runtimes/ssh.py), each key checked; a host or user that ssh would read as an
    option is refused."""
    from stages.runtimes.ssh import DEFAULT_DIR, EXPECTED, STEP_S, SshTarget

    try:
        url = urlsplit(spec)
        host = url.hostname
    except ValueError as e:  # a bracket that is no IPv6 address
        raise ConfigError(f"{where}: {spec!r} is not an SSH target ({e}); {EXPECTED}") from None
    if url.scheme != "ssh" or not host or url.path not in ("", "/"):
        raise ConfigError(f"{where}: {spec!r} is not an SSH target; {EXPECTED}")
    if url.password is not None:
        raise ConfigError(f"{where}: {spec!r} holds a password; SSH targets log in with the user's keys "
                          f"(ssh-copy-id), never a password in a config")
    try:
        port = 22 if url.port is None else url.port
    except ValueError:
        raise ConfigError(f"{where}: {spec!r}: the port must be a number from 1 to 65535") from None
    query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - {"python", "dir", "keep", "config", "timeout"})
    if unknown:
        raise ConfigError(f"{where}: {spec!r}: unknown option {', '.join(unknown)}; {EXPECTED}")
    if query.get("keep", "0") not in ("0", "1", "true", "false"):
        raise ConfigError(f"{where}: {spec!r}: keep must be 1 or 0, got {query['keep']!r}")
    if "config" in query and not Path(query["config"]).is_file():
        raise ConfigError(f"{where}: {spec!r}: the ssh_config file {query['config']} does not exist")
    try:
        timeout = float(query.get("timeout") or STEP_S)
    except ValueError:
        raise ConfigError(f"{where}: {spec!r}: timeout must be a number of seconds, got "
                          f"{query['timeout']!r}") from None
    try:
        return SshTarget(host, url.username or "", port, query.get("python") or "python3",
                         query.get("dir") or DEFAULT_DIR, query.get("keep", "0") in ("1", "true"),
                         query.get("config", ""), timeout)
    except ConfigError as e:
        raise ConfigError(f"{where}: {spec!r}: {e}; {EXPECTED}") from None



def feature_flags(features: str) -> set[str]:
    """MNN's CPU report ("i8sdot:1 fp16:1 i8mm:1 sve2:1 sme2:0") as the /proc/cpuinfo flags the runtimes'
    arithmetic rules read (asimdhp: fp16 arithmetic, asimddp: sdot, i8mm, sve2, sme2)."""
    names = {"fp16": "asimdhp", "i8sdot": "asimddp", "i8mm": "i8mm", "sve2": "sve2", "sme2": "sme2"}
    flags = set()
    for item in features.split():
        key, _, value = item.partition(":")
        if value.strip() == "1" and key in names:
            flags.add(names[key])
    return flags
