"""Finding, rendering and checking the generated blocks of the Markdown files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BLOCK = re.compile(
    r"^(<!-- BEGIN generated:(?P<name>[\w-]+)(?: (?P<arg>[^>]*?))? -->\n)(?P<body>.*?)"
    r"(<!-- END generated:(?P=name) -->)$",
    re.S | re.M,
)
MARKER = re.compile(r"<!-- (BEGIN|END) generated:")


@dataclass(frozen=True)
class Block:
    path: Path
    name: str
    arg: str
    body: str
    line: int


def doc_files(root: Path) -> list[Path]:
    """README.md and every Markdown file under docs/ (findings included: they may hold blocks too)."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    return [
        Block(path, m["name"], (m["arg"] or "").strip(), m["body"], text.count("\n", 0, m.start()) + 1)
        for m in BLOCK.finditer(text)
    ]


def unmatched(path: Path) -> int:
    """How many BEGIN / END markers of a file are not part of a well-formed block (each at a line's start)."""
    return len(MARKER.findall(path.read_text())) - 2 * len(blocks(path))


def render(name: str, arg: str, root: Path) -> str:
    """The body a block must have: the renderer's text, ending in a newline."""
    from stages.tools.docs.registry import RENDERERS

    if name not in RENDERERS:
        raise KeyError(f"unknown generated block {name!r}: known are {', '.join(sorted(RENDERERS))}")
    return RENDERERS[name](root, arg).rstrip("\n") + "\n"


def rewrite(path: Path, root: Path) -> bool:
    """Render every block of one file in place; True when the file changed."""
    text = path.read_text()
    new = BLOCK.sub(lambda m: m[1] + render(m["name"], (m["arg"] or "").strip(), root) + m[5], text)
    if new != text:
        path.write_text(new)
    return new != text


def stale(root: Path, files: list[Path] | None = None) -> list[str]:
    """One line per block whose text differs from what the committed CSVs give: 'file:line name'."""
    out = []
    for path in files if files is not None else doc_files(root):
        if unmatched(path):
            out.append(
                f"{path.relative_to(root)}: {unmatched(path)} generated-block markers outside a block"
                " (each BEGIN / END at the start of its own line, names matching)"
            )
        for b in blocks(path):
            if b.body != render(b.name, b.arg, root):
                out.append(
                    f"{path.relative_to(root)}:{b.line} generated:{b.name}{' ' + b.arg if b.arg else ''}"
                )
    return out
