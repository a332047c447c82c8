"""A stage module for tests/test_stop.py: its cleanup outlasts any test (a remote cleanup that hangs)."""

import os
import time


def run(ctx):
    (ctx.root / "stage.pid").write_text(str(os.getpid()))
    try:
        time.sleep(300)
    finally:
        (ctx.root / "cleaning").write_text("")
        time.sleep(300)
