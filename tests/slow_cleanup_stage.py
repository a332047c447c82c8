"""A stage module for tests/test_stop.py: on Ctrl-C it cleans up for CLEANUP_S seconds (default: longer than
any test waits, a remote cleanup that hangs), then writes `cleaned`."""

import os
import time


def run(ctx):
    (ctx.root / "stage.pid").write_text(str(os.getpid()))
    try:
        time.sleep(300)
    finally:
        (ctx.root / "cleaning").write_text("")
        time.sleep(float(os.environ.get("CLEANUP_S", "300")))
        (ctx.root / "cleaned").write_text("")
