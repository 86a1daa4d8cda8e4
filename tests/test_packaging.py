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


MISTAKES = """\
import flux_async


async def main(session: flux_async.Session) -> None:
    await session.generate(model="flux-kontext-pro", prompt="a fox", sise="1:1")
    await session.generate(model="flux-kontext-pro", prompt="a fox", n="2")
    await session.generate(prompt="a fox")
    flux_async.GenerationRequest(model="flux-kontext-pro", prompt="a fox", images=5)
"""


# mypy on a cold cache (its own per test) is slow on a loaded machine: under pytest-xdist
# every worker may be running one at the same time.
@pytest.mark.timeout(180)
def test_a_type_checker_checks_generate_keywords_and_image_inputs(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "mistakes.py").write_text(MISTAKES)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "mistakes.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    # One error per line of the script after its header: each mistake is caught where it is made.
    flagged = {int(line.split(":")[1]) for line in proc.stdout.splitlines() if ": error:" in line}
    assert flagged == {5, 6, 7, 8}, proc.stdout


# mypy on a cold cache (its own per test) is slow on a loaded machine: under pytest-xdist
# every worker may be running one at the same time.
@pytest.mark.timeout(180)
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
        timeout=170,
    )
    assert "import-not-found" not in proc.stdout, proc.stdout
    assert 'Revealed type is "flux_async.models.GenerationResult"' in proc.stdout, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
