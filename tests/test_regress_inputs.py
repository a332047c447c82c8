"""The regression gate re-times only what changed: a latency cell's fingerprint (its artifact bytes, the code
its timing runs, per runtime, the library versions, its settings) on tiny builds and copies of the source
tree, and `regress` end to end on a docs-only commit, which times nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_regress_ab import _cli, _git, clone  # noqa: F401  (clone: the throwaway clone, a fixture)

from conftest import ROOT_DIR
from stages.tools.ab_stats import SAME_INPUTS
from stages.tools.timed_inputs import fingerprints, timed_inputs

NAME = "tiny_fp32"
SWEEP = ROOT_DIR / "tests" / "configs" / "sweep_ab.yaml"
# a cell of each runtime: the artifacts they time are each their own runtime's
CELLS = pd.DataFrame([
    {"component": "decoder", "runtime": "mnn", "artifact": "mnn-fp32"},
    {"component": "encoder", "runtime": "mnn", "artifact": "mnn-fp32"},
    {"component": "decoder", "runtime": "onnxruntime", "artifact": "onnx-sim"},
    {"component": "e2e", "runtime": "torch", "artifact": "torch"},
])


def _inputs(tree: Path, root: Path, cfg: Path):
    return timed_inputs(tree, root, str(cfg), NAME, SWEEP)


def _compare(base, new) -> pd.DataFrame:
    """Per cell of CELLS: whether its fingerprint differs between the sides, and what differs."""
    df = CELLS.assign(**fingerprints(CELLS, base, new))
    return df.assign(differs=df["inputs_base"] != df["inputs_new"]).set_index(["component", "runtime"])


def _tree(tmp_path: Path) -> Path:
    """A copy of this source tree's code (what a base worktree is), to edit."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT_DIR / "stages", tree / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT_DIR / "pipeline.yaml", tree / "pipeline.yaml")
    return tree


def test_equal_inputs_give_equal_fingerprints_and_name_every_input(fp32_build, fp32_only):
    root, cfg = fp32_only  # a copy of the build in another root: the same bytes
    base, new = _inputs(ROOT_DIR, fp32_build[0], cfg), _inputs(ROOT_DIR, root, cfg)
    df = _compare(base, new)
    assert not df["differs"].any() and (df["inputs_changed"] == "").all()
    assert df["inputs_new"].str.fullmatch(r"[0-9a-f]{16}").all()
    mnn = new.of("decoder", "mnn", "mnn-fp32")
    assert f"artifact:build/{NAME}/mnn/decoder.fp32.mnn" in mnn
    assert f"artifact:build/{NAME}/onnx/encoder.sim.onnx" in mnn  # the embeddings a decoder run is fed
    libraries = {f"library:{lib}" for lib in ("MNN", "onnxruntime", "torch", "numpy")}
    assert {*libraries, "config", "sweep"} <= set(mnn)
    assert "code:stages/bench/tasks.py" in mnn and "code:stages/runtimes/mnn.py" in mnn
    assert "code:stages/runtimes/onnxruntime.py" not in mnn  # another runtime's own code
    assert "code:stages/runtimes/onnxruntime.py" in new.of("decoder", "onnxruntime", "onnx-sim")


def test_an_artifact_whose_bytes_differ_changes_the_cells_that_time_it(fp32_build, fp32_only):
    root, cfg = fp32_only
    mnn = root / "build" / NAME / "mnn" / "decoder.fp32.mnn"
    mnn.write_bytes(mnn.read_bytes() + b"\0")
    df = _compare(_inputs(ROOT_DIR, fp32_build[0], cfg), _inputs(ROOT_DIR, root, cfg))
    assert df["differs"].to_dict() == {("decoder", "mnn"): True, ("encoder", "mnn"): False,
                                       ("decoder", "onnxruntime"): False, ("e2e", "torch"): False}
    assert df.loc[("decoder", "mnn"), "inputs_changed"] == f"artifact:build/{NAME}/mnn/decoder.fp32.mnn"


@pytest.mark.parametrize("runtime", ["mnn", "onnxruntime", "torch"])
def test_one_runtimes_code_changes_that_runtimes_cells_only(fp32_only, tmp_path, runtime):
    root, cfg = fp32_only
    tree = _tree(tmp_path)
    before = _inputs(tree, root, cfg)
    own = tree / "stages" / "runtimes" / f"{runtime}.py"
    own.write_text(own.read_text() + "\n# a change to one runtime's run\n")
    df = _compare(before, _inputs(tree, root, cfg))
    assert df["differs"].to_dict() == {k: k[1] == runtime for k in df.index}
    assert set(df.loc[df["differs"], "inputs_changed"]) == {f"code:stages/runtimes/{runtime}.py"}


@pytest.mark.parametrize("shared", ["bench/tasks.py", "runtimes/base.py"])
def test_code_every_runtime_runs_through_changes_every_cell(fp32_only, tmp_path, shared):
    """The timing loop's module and the interface every runtime runs through: a change there is every cell's."""
    root, cfg = fp32_only
    tree = _tree(tmp_path)
    before = _inputs(tree, root, cfg)
    code = tree / "stages" / shared
    code.write_text(code.read_text() + "\n# a change every runtime's timing runs\n")
    df = _compare(before, _inputs(tree, root, cfg))
    assert df["differs"].all() and (df["inputs_changed"] == f"code:stages/{shared}").all()


def test_a_docs_only_change_times_nothing(clone):  # noqa: F811
    """regress on a commit that changes a docs page only: no bench round runs, every latency cell is "same
    inputs: not re-timed" (never a regression), accuracy is still compared with the committed baseline."""
    repo, root, cfg = clone
    doc = repo / "docs" / "regression-gate.md"
    doc.write_text(doc.read_text() + "\na docs-only change\n")
    _git(repo, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-q", "-am", "docs only")
    try:
        out = _cli(repo, "regress", cfg, root, "--base", "HEAD~1")
    finally:
        _git(repo, "reset", "-q", "--hard", "HEAD~1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    reports = root / "reports" / NAME
    assert not list((reports / "regress").glob("*-latency.csv"))  # no bench round on either side
    log = (root / "build" / NAME / "logs" / "regress.log").read_text()
    assert log.count("$ ") == 1 and "--force" not in log  # one run: the base side's artifacts; no bench round
    ab = pd.read_csv(reports / "regress" / "ab.csv")
    assert len(ab) == 2 and (ab["verdict"] == SAME_INPUTS).all()
    assert (ab["inputs_base"] == ab["inputs_new"]).all()
    df = pd.read_csv(reports / "regress.csv")
    lat = df[df["kind"] == "latency"]
    assert len(lat) == 2 and (lat["verdict"] == SAME_INPUTS).all()
    assert lat["note"].str.contains("not re-timed").all()
    assert (df[df["kind"] == "parity"]["verdict"] == "same").all() and len(df[df["kind"] == "parity"])
    md = (reports / "regress.md").read_text()
    assert "no round: every cell's timed inputs are the same on both sides" in md and SAME_INPUTS in md
    assert "0 regressions" in out.stdout


def test_a_cell_missing_from_the_new_run_keeps_its_verdict_and_same_cells_are_left_out():
    from stages.tools.ab_stats import INPUTS, _keys, with_inputs
    from stages.tools.cells import LAT_KEY

    def cell(variant: str) -> dict:
        return {**dict.fromkeys(LAT_KEY, "x"), "artifact": variant, "inputs_base": variant, "inputs_new": variant,
                "inputs_changed": ""}

    cells = pd.DataFrame([cell("a"), cell("b")])  # the new run has a (changed) and b (same); c is gone
    gone = pd.DataFrame([cell("c")])
    keys = dict(zip("abc", [*_keys(cells), *_keys(gone)], strict=True))
    table = pd.DataFrame({"cell": [keys["a"], keys["b"], keys["c"]],
                          "verdict": ["same", "same", "missing in b"]})
    out = with_inputs(table, cells, cells.iloc[[1]])
    assert list(out["verdict"]) == ["same", "missing in b"]
    assert set(INPUTS) <= set(out.columns)
