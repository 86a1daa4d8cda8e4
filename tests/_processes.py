"""The command line as a real process, for tests that signal or kill it: starting it with no API
key from the environment, and waiting on a condition (a file, an emulator counter) with a bound."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable


def start_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m flux_async.cli ARGS`` with pipes for stdout and stderr (and ``env`` added to
    the environment)."""
    env = {**{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "flux_async.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Return once ``condition()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
