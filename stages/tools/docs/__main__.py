"""python -m stages.tools.docs [--check]: render the generated blocks of README.md and docs/ from the CSVs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages.tools.docs.blocks import doc_files, rewrite, stale

ROOT = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages.tools.docs", description=__doc__)
    p.add_argument(
        "--check", action="store_true", help="change nothing; list the blocks that differ, exit 1 if any"
    )
    p.add_argument("--root", type=Path, default=ROOT, help="the repository (README.md, docs/, reports/)")
    args = p.parse_args(argv)
    if args.check:
        bad = stale(args.root)
        for line in bad:
            print(f"differs from the CSVs: {line}")
        return 1 if bad else 0
    for path in doc_files(args.root):
        if rewrite(path, args.root):
            print(f"rendered {path.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
