"""How the package looks to a user's tools once installed (as CI installs it: editable).

A type checker run on a user's script, outside the repository, must find the package and its
types: an editable install made with an import hook leaves every name ``Any`` to mypy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """\
import flux_async


async def main() -> None:
    async with flux_async.Session("toapis") as session:
        result = await session.generate(model="flux-kontext-pro", prompt="a red fox")
        reveal_type(result)
"""


def test_mypy_finds_the_installed_package_from_a_users_directory(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "script.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert "import-not-found" not in proc.stdout, proc.stdout
    assert 'Revealed type is "flux_async.models.GenerationResult"' in proc.stdout, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
