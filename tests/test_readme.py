"""The README's code, checked: every Python block type-checks against the package as installed,
and the web-application example runs against the emulator (including a body without a prompt).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: Names a block may use that an earlier block of the README defines.
PREAMBLE = """\
from __future__ import annotations
from collections.abc import Iterator
import flux_async
session: flux_async.Session
"""
REQUESTS = """\
def requests() -> Iterator[flux_async.GenerationRequest]:
    raise NotImplementedError
"""


def python_blocks() -> list[str]:
    return [match.group(1) for match in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def as_module(code: str) -> str:
    """A block as a module mypy can check: top-level ``await`` goes inside a coroutine."""
    try:
        compile(code, "README.md", "exec", dont_inherit=True)
    except SyntaxError:
        # Any other error is the README's own.
        compile(code, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        code = "async def _readme_block() -> None:\n" + textwrap.indent(code, "    ")
    return PREAMBLE + ("" if "def requests(" in code else REQUESTS) + code


def test_the_readme_has_python_blocks() -> None:
    assert len(python_blocks()) >= 6


# mypy on a cold cache (its own per test) is slow on a loaded machine: under pytest-xdist
# every worker may be running one at the same time.
@pytest.mark.timeout(180)
def test_every_python_block_type_checks(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    files = []
    for number, code in enumerate(python_blocks()):
        path = tmp_path / f"readme_block_{number}.py"
        path.write_text(as_module(code), encoding="utf-8")
        files.append(path.name)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--check-untyped-defs", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), *files],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def web_example() -> str:
    [code] = [code for code in python_blocks() if "def create_image" in code]
    return code


@pytest.mark.anyio
async def test_the_web_application_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Emulator(Scenario(duration=Duration.fixed(0.01))) as emu:
        monkeypatch.setenv("TOAPIS_API_KEY", DEFAULT_API_KEY)
        monkeypatch.setenv("FLUX_ASYNC_BASE_URL", emu.base_url("toapis"))
        namespace: dict[str, object] = {"__name__": "readme_web_example"}
        exec(compile(web_example(), str(README), "exec"), namespace)
        app = namespace["app"]
        assert isinstance(app, web.Application)
        async with TestClient(TestServer(app)) as client:
            made = await client.post("/images", json={"prompt": "a red fox", "size": "1:1"})
            assert made.status == 200
            assert len((await made.json())["urls"]) == 1
            for bad in ({"size": "1:1"}, ["a red fox"], "not json"):
                kwargs = {"data": bad} if isinstance(bad, str) else {"json": bad}
                refused = await client.post("/images", **kwargs)  # type: ignore[arg-type]
                assert refused.status == 400, await refused.text()
            invalid = await client.post("/images", json={"prompt": "x", "size": "5:4"})
            assert invalid.status == 400
            assert (await invalid.json())["field"] == "size"
        await anyio.lowlevel.checkpoint()
    assert emu.stats()["tasks_created"] == 1
