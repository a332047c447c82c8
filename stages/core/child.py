"""The child process of isolate.py: `python -m stages.core.child MODULE FUNCTION REQUEST.json`.

It imports MODULE, calls FUNCTION(request) and writes the dict it returns as JSON to request["result_file"]; an
exception becomes {"error": ...} there, a native crash kills only this process. It imports nothing of the project
itself: each task lives in the module of what uses it (stages/bench/tasks.py, stages/conversion/mnn.py, ...).

MODULE is loaded from its file without running its packages' __init__ (stages/bench/__init__.py is the bench stage,
which imports torch and pandas): a task's child holds only what the task imports, so the peak memory a cell
reports is the cell's own. A task module therefore imports only from lower layers, heavy ones inside functions,
and is not one its own package's __init__ imports (MnnRuntime's probe task is in stages/runtimes/tasks.py, not in
stages/runtimes/mnn.py, which the package imports: loaded first, it would be imported again half-run).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path


def load(module: str):
    """`module` (a dotted name) from its file, importing the top package only."""
    if module in sys.modules:
        return sys.modules[module]
    top, *rest = module.split(".")
    if not rest:
        return importlib.import_module(module)
    base = Path(importlib.import_module(top).__file__).parent.joinpath(*rest)
    path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
    if not path.exists():
        raise ModuleNotFoundError(f"No module named {module!r}")
    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    module, function, req_path = sys.argv[1:4]
    req = json.loads(Path(req_path).read_text())
    try:
        result = getattr(load(module), function)(req)
    except Exception as e:  # reported through the result file; a native crash never gets here
        cause = e.__cause__ if isinstance(e, SystemError) and e.__cause__ else e  # MNN wraps its errors
        result = {"error": f"{type(cause).__name__}: {cause}"}
    Path(req["result_file"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
