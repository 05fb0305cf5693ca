#!/usr/bin/env python3
"""Remove outputs and execution counts from notebooks before committing them.

    .venv/bin/python scripts/strip_notebooks.py [notebooks/*.ipynb]

tests/test_notebooks.py fails while a committed notebook still has outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(path: Path) -> bool:
    """Clear a notebook's outputs and execution counts in place; return whether anything changed."""
    notebook = nbformat.read(path, as_version=4)
    changed = False
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if cell.outputs or cell.execution_count is not None:
            cell.outputs = []
            cell.execution_count = None
            changed = True
    if changed:
        nbformat.write(notebook, path)
    return changed


def main() -> None:
    paths = [Path(arg) for arg in sys.argv[1:]] or sorted(Path("notebooks").glob("*.ipynb"))
    for path in paths:
        if strip(path):
            print(f"stripped {path}")


if __name__ == "__main__":
    main()
