"""The emulated ARM64 target's environment: an arm64 Debian root with Python, and MNN's aarch64 wheel.

Built from Debian and PyPI packages only, under build/targets/arm64/ (shared by every model), once:

  root/   `mmdebstrap --variant=extract --architectures=arm64` of Python 3.11 and the C/C++ runtime (75 MB)
  site/   MNN (the host's version) and numpy for aarch64 / CPython 3.11, from PyPI (about 120 MB)
  ready.json   what was built; its presence means the environment is complete

Run with QEMU's user mode (`qemu-aarch64-static -cpu CPU -L root`): MNN's real aarch64 kernels (Arm82 fp16,
sdot, i8mm) run on this x86 machine, bit-exact with an ARM CPU that has those features. Timing under
emulation means nothing and is never reported; accuracy is exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stages.core import debian
from stages.core.errors import PipelineError

log = logging.getLogger(__name__)

DEBIAN_PACKAGES = ("qemu-user-static", "mmdebstrap")  # on the host
SUITE = "bookworm"
ROOT_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgomp1", "libgcc-s1", "zlib1g",
                 "libffi8", "libexpat1")
PYTHON = "usr/bin/python3.11"
# numpy on the target only reads and writes .npz: any 2.x that has a cp311 aarch64 wheel will do
TARGET_NUMPY = "numpy<2.3"
BUILD_STEP_TIMEOUT_S = 1200  # mmdebstrap fetches ~75 MB, pip ~106 MB: minutes; a stalled mirror fails the step
CPUS = ("max", "cortex-a76", "cortex-a72", "cortex-a55", "cortex-a53", "neoverse-n1", "neoverse-v1")


def default_dir() -> Path:
    """build/targets/arm64 of this project tree (or $SAM_DEPLOY_TARGETS/arm64): one environment for all models."""
    base = os.environ.get("SAM_DEPLOY_TARGETS") or Path(__file__).resolve().parents[2] / "build" / "targets"
    return Path(base) / "arm64"


@dataclass
class ArmEnv:
    folder: Path
    qemu: str

    @property
    def root(self) -> Path:
        return self.folder / "root"

    @property
    def site(self) -> Path:
        return self.folder / "site"

    def command(self, cpu: str, *args: str) -> list[str]:
        """argv that runs the target's Python with `args` on an emulated `cpu`."""
        return [self.qemu, "-cpu", cpu, "-L", str(self.root), "-E", f"PYTHONPATH={self.site}",
                "-E", "PYTHONDONTWRITEBYTECODE=1", str(self.root / PYTHON), *args]

    def mnn_version(self, cpu: str = "max") -> str:
        out = subprocess.run(self.command(cpu, "-c", "import importlib.metadata as m; print(m.version('MNN'))"),
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise PipelineError(f"the ARM64 target's Python cannot read its MNN version: "
                                f"{(out.stderr or out.stdout).strip()[-500:]}")
        return out.stdout.strip().splitlines()[-1]


def check_versions(host: str, target: str, where: Path) -> None:
    """The target must run the MNN the host converted with: a different version computes differently."""
    if host != target:
        raise PipelineError(f"MNN on the ARM64 target is {target}, on the host {host} ({where}); they must be equal. "
                            f"Remove {where} and run `make arm-env` to rebuild it with MNN {host}")


def _host_tools(install: bool) -> str:
    tools = debian.ensure(dict(zip(("qemu-aarch64-static", "mmdebstrap"), DEBIAN_PACKAGES, strict=True)),
                          "the emulated ARM64 target", install)
    return tools["qemu-aarch64-static"]


@contextlib.contextmanager
def _locked(folder: Path):
    """One builder at a time (two test workers, two pipelines): the second waits, then finds it built."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: list[str], what: str, log_file: Path, timeout_s: float = BUILD_STEP_TIMEOUT_S) -> None:
    """One build step (mmdebstrap, pip download / install), its output to the log, bounded in time: the build
    holds a lock other processes wait on."""
    with open(log_file, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        try:
            res = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise PipelineError(f"arm-env: {what} did not finish within {timeout_s:g} s ({log_file}); "
                                "the partial build is removed on the next try") from None
    if res.returncode != 0:
        tail = " | ".join(log_file.read_text(errors="replace").splitlines()[-4:])
        raise PipelineError(f"arm-env: {what} failed (exit {res.returncode}; {log_file}): {tail}")


def ensure(folder: Path | None = None, install: bool = True) -> ArmEnv:
    """The environment, built if it is not there yet (idempotent: a built one is only checked)."""
    folder = Path(folder or default_dir())
    host_mnn = importlib.metadata.version("MNN")
    with _locked(folder):  # apt-get and the build, one process at a time
        env = ArmEnv(folder, _host_tools(install))
        stamp = folder / "ready.json"
        if stamp.exists():
            built = json.loads(stamp.read_text())
            check_versions(host_mnn, built.get("mnn", "?"), folder)
            return env
        log.info("arm-env: building the emulated ARM64 target in %s (Debian %s arm64 root + MNN %s aarch64 wheel)",
                 folder, SUITE, host_mnn)
        log_file = folder / "build.log"
        for sub in ("root", "site", "wheels"):
            shutil.rmtree(folder / sub, ignore_errors=True)
        _run(["mmdebstrap", "--variant=extract", "--architectures=arm64", f"--include={','.join(ROOT_PACKAGES)}",
              SUITE, str(env.root), "http://deb.debian.org/debian"], "mmdebstrap (Debian arm64 root)", log_file)
        platform = ["--platform", "manylinux2014_aarch64", "--python-version", "3.11", "--implementation", "cp",
                    "--only-binary=:all:"]
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "download", "--quiet", "--no-deps", *platform, "-d", str(folder / "wheels"),
              f"MNN=={host_mnn}", TARGET_NUMPY], "pip download (aarch64 wheels of MNN and numpy)", log_file)
        wheels = sorted(str(w) for w in (folder / "wheels").glob("*.whl"))
        _run([*pip, "install", "--quiet", "--no-deps", *platform, "--target", str(env.site), *wheels],
             "pip install --target (aarch64 wheels)", log_file)
        shutil.rmtree(folder / "wheels", ignore_errors=True)
        target_mnn = env.mnn_version()
        check_versions(host_mnn, target_mnn, folder)
        stamp.write_text(json.dumps({"mnn": target_mnn, "suite": SUITE, "root_packages": list(ROOT_PACKAGES),
                                     "numpy": TARGET_NUMPY, "wheels": [Path(w).name for w in wheels]}, indent=1))
        log.info("arm-env: ready (%s)", folder)
    return env
