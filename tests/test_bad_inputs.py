"""Every bad input of tests/cases/bad_inputs.py: the exit code, one error line with the expected words, no
traceback, and nothing already produced lost (a build, a report, the committed baselines: hashed before and
after)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cases.bad_inputs import ALL, Case
from conftest import ROOT_DIR
from stages.__main__ import main

# what a user already has in the root: the run must leave every byte of it
PRODUCED = {"build/tiny/mnn/encoder.fp32.mnn": b"mnn bytes", "build/tiny/mnn/decoder.fp32.mnn": b"mnn",
            "reports/tiny/latency.csv": "component,p50_ms\n",
            "reports/baselines/tiny/parity.csv": "artifact\n", "reports/measured/run/latency.csv": "x\n",
            "reports/demo/page.png": b"png", "build/vit_t/onnx/encoder.onnx": b"onnx"}


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and any(str(p.relative_to(root)) == k for k in PRODUCED)}


def write(root: Path, files: dict) -> None:
    for rel, content in files.items():
        path = root / rel.format(root=root)
        path.parent.mkdir(parents=True, exist_ok=True)
        content = content() if callable(content) else content
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def run(case: Case, root: Path, capsys) -> tuple[int, str]:
    argv = [a.format(root=root) for a in case.argv]
    if case.how == "cli":
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        return code, capsys.readouterr().err
    if case.how == "process":
        res = subprocess.run([sys.executable, "-m", "stages", *argv], capture_output=True, text=True, timeout=300,
                             cwd=ROOT_DIR, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)})
        return res.returncode, res.stderr
    shutil.copy(ROOT_DIR / "Makefile", root / "Makefile")
    res = subprocess.run(["make", "--no-print-directory", *argv], capture_output=True, text=True, timeout=60,
                         cwd=root)
    return res.returncode, res.stderr


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_bad_input_is_one_clear_line_and_loses_nothing(case, tmp_path, capsys):
    write(tmp_path, PRODUCED)
    write(tmp_path, case.files)
    before = snapshot(tmp_path)
    code, err = run(case, tmp_path, capsys)
    message = case.message.format(root=tmp_path)
    assert code == case.code, f"exit {code}, expected {case.code}; stderr:\n{err}"
    assert message in err, f"expected {message!r} in stderr:\n{err}"
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing produced before is lost or changed


def test_the_table_covers_each_class_of_input():
    ids = {c.id.split("-")[0] for c in ALL}
    assert {"yaml", "name", "checkpoint", "image", "box", "point", "compare", "make"} <= ids
    assert len(ALL) >= 40
    assert len({c.id for c in ALL}) == len(ALL)


def test_clean_removes_one_model_and_clean_all_keeps_the_committed_reports(tmp_path):
    write(tmp_path, {**PRODUCED, "reports/summary.md": "made by a run\n"})
    shutil.copy(ROOT_DIR / "Makefile", tmp_path / "Makefile")
    subprocess.run(["make", "-s", "clean", "MODEL=tiny"], cwd=tmp_path, check=True, timeout=60)
    assert not (tmp_path / "build" / "tiny").exists() and not (tmp_path / "reports" / "tiny").exists()
    assert (tmp_path / "build" / "vit_t" / "onnx" / "encoder.onnx").exists()
    subprocess.run(["make", "-s", "clean-all"], cwd=tmp_path, check=True, timeout=60)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["Makefile", "reports/baselines/tiny/parity.csv", "reports/demo/page.png",
                    "reports/measured/run/latency.csv"]


def test_the_readme_counts_the_bad_inputs_tested():
    import re

    from cases import demo_requests, ssh_specs

    counts = (len(ALL), len(demo_requests.ROWS), len(ssh_specs.BAD_SPECS) + len(ssh_specs.DEVICE_FAULTS))
    text = " ".join((ROOT_DIR / "README.md").read_text().split())
    said = re.search(r"(\d+) bad inputs are tested \((\d+) CLI .*?, (\d+) demo requests, (\d+) SSH", text)
    assert said, "README's reliability section should say how many bad inputs are tested"
    assert tuple(map(int, said.groups())) == (sum(counts), *counts)
