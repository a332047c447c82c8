"""The docs as a product: README.md's size, generated blocks equal to what the committed CSVs give, no history
(commit hashes, "was ... now") in README, docs outside findings/, configs or the docstrings of stages/, and
`make help` naming every .PHONY target."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stages.tools.docs.blocks import BLOCK, blocks, doc_files, render, stale

ROOT = Path(__file__).resolve().parent.parent
MAX_README_LINES, MAX_README_CHARS = 250, 20_000
HEX = re.compile(r"(?<![0-9A-Za-z_])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![0-9A-Za-z_])")
WAS_NOW = re.compile(r"\bwas\b[^.;:\n]{0,100}?\bnow\b", re.I)
# Known hits in files this change could not edit: (path, matched text). Empty: there are none today.
KNOWN: set[tuple[str, str]] = set()


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= MAX_README_LINES, f"README.md: {len(text.splitlines())} lines"
    assert len(text) <= MAX_README_CHARS, f"README.md: {len(text)} characters"


def test_every_generated_block_matches_the_committed_csvs():
    assert sum(len(blocks(p)) for p in doc_files(ROOT)) >= 5
    bad = stale(ROOT)
    assert not bad, "blocks differ from the CSVs (run `make docs`):\n" + "\n".join(bad)


def test_a_planted_wrong_number_is_caught(tmp_path):
    """The check is not vacuous: one digit changed inside the results block of a copy fails it."""
    for d in ("reports/measured", "reports/baselines"):
        shutil.copytree(ROOT / d, tmp_path / d)
    readme = (ROOT / "README.md").read_text()
    m = next(m for m in BLOCK.finditer(readme) if m["name"] == "results")
    body = re.sub(r"\d+\.\d", lambda n: n[0][:-1] + str((int(n[0][-1]) + 1) % 10), m["body"], count=1)
    (tmp_path / "README.md").write_text(readme[: m.start("body")] + body + readme[m.end("body") :])
    assert stale(tmp_path, [tmp_path / "README.md"]) == [
        f"README.md:{readme.count(chr(10), 0, m.start()) + 1} generated:results"
    ]


def test_a_stray_marker_is_caught(tmp_path):
    (tmp_path / "x.md").write_text(
        "text\n  <!-- BEGIN generated:results -->\n<!-- END generated:results -->\n"
    )
    assert "markers outside a block" in stale(tmp_path, [tmp_path / "x.md"])[0]


def test_an_unknown_block_is_an_error():
    with pytest.raises(KeyError, match="unknown generated block 'nope'"):
        render("nope", "", ROOT)


def _docstrings(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if (
                node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
                and isinstance(node.body[0].value.value, str)
            ):
                yield node.body[0].lineno, node.body[0].value.value


def _texts():
    """(file, first line, text): README, docs/ outside findings/, configs/, every docstring of stages/."""
    for p in doc_files(ROOT):
        if "findings" not in p.relative_to(ROOT).parts:
            yield p, 1, p.read_text()
    for p in sorted((ROOT / "configs").rglob("*.yaml")):
        yield p, 1, p.read_text()
    for p in sorted((ROOT / "stages").rglob("*.py")):
        for line, text in _docstrings(p):
            yield p, line, text


def _commits(candidates: set[str]) -> set[str]:
    """The candidates that name a commit of this repository."""
    if not candidates:
        return set()
    out = subprocess.run(
        ["git", "cat-file", "--batch-check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        input="".join(f"{c}^{{commit}}\n" for c in sorted(candidates)),
        timeout=60,
    )
    lines = out.stdout.splitlines()
    return {c for c, line in zip(sorted(candidates), lines, strict=True) if not line.endswith("missing")}


def test_no_history_in_docs_configs_or_docstrings():
    hits = []
    found = [(p, line, text, m) for p, line, text in _texts() for m in HEX.finditer(text)]
    real = _commits({m[0] for *_, m in found})
    for p, line, text, m in found:
        if m[0] in real:
            hits.append((p, line + text.count("\n", 0, m.start()), f"commit hash {m[0]}"))
    for p, line, text in _texts():
        for m in WAS_NOW.finditer(text):
            hits.append((p, line + text.count("\n", 0, m.start()), f"history: {m[0]!r}"))
    new = [
        f"{p.relative_to(ROOT)}:{n}: {what}"
        for p, n, what in hits
        if (str(p.relative_to(ROOT)), what.split(": ", 1)[-1].strip("'")) not in KNOWN
    ]
    assert not new, "say what the code does, not its history (history goes to CHANGELOG.md):\n" + "\n".join(
        new
    )


def test_the_history_check_sees_a_planted_hash_and_was_now():
    head = subprocess.run(
        ["git", "rev-parse", "--short=9", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout.strip()
    assert _commits({head, "abcdef1234"}) == {head}
    assert WAS_NOW.search("the resize was dense and is now banded")


def test_make_help_lists_every_phony_target():
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)[1].split()
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    listed = set(re.findall(r"^make ([\w-]+)", out, re.M))
    assert "docs" in phony
    assert not set(phony) - listed, f"make help lacks: {sorted(set(phony) - listed)}"
