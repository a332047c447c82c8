"""The files that run on a device: the MNN runner and its siblings. They need only the standard library, numpy and
MNN, import nothing of the project but each other, and are copied side by side to a target (RUNNER_FILES)."""

from pathlib import Path

RUNNER = Path(__file__).resolve().with_name("mnn_runner.py")
RUNNER_FILES = tuple(RUNNER.with_name(f) for f in ("mnn_runner.py", "mnn_settings.py", "masks.py", "process.py",
                                                    "timing.py"))
