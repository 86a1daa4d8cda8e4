"""``flux-async batch --redis URL``: batches in several processes on one account share the
provider's caps, the budget and the idempotency keys through Redis (a real server), each
keeping its own journal. Two batch processes against an emulator process; its counters tell."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from _processes import start_cli
from click.testing import CliRunner

from flux_async.cli._app import cli
from flux_async.emulator import DEFAULT_API_KEY, Duration, EmulatorProcess, Scenario

LINES = 24


@pytest.fixture
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario(seed=6, duration=Duration.fixed(0.3))) as process:
        yield process


def prompts(path: Path, tag: str) -> Path:
    path.write_text("".join(f"{tag} lighthouse number {i}\n" for i in range(LINES)))
    return path


def args(emu: EmulatorProcess, file: Path, out: Path, *extra: str) -> list[str]:
    return [
        "batch", str(file), "-o", str(out), "--json", "--provider", "bfl", "--model", "flux-kontext-max",
        "--base-url", emu.base_url("bfl"), "--api-key", DEFAULT_API_KEY, *extra,
    ]  # fmt: skip


def test_two_batches_sharing_redis_never_pass_the_account_cap(
    emu: EmulatorProcess, redis_url: str, tmp_path: Path
) -> None:
    # Each batch alone would run 6 kontext-max tasks; together they must still hold 6.
    procs = [
        start_cli(args(emu, prompts(tmp_path / f"p{i}.txt", f"w{i}"), tmp_path / f"out{i}", "--redis", redis_url))
        for i in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        assert json.loads(stdout)["succeeded"] == LINES
    stats = emu.stats()
    assert stats["tasks_created"] == 2 * LINES
    assert stats["active_high_water"]["bfl/flux-kontext-max"] == 6
    assert stats["rate_limited"]["cap"] == 0


def test_redis_option_mistakes_exit_2_and_send_nothing(emu: EmulatorProcess, tmp_path: Path) -> None:
    file = prompts(tmp_path / "p.txt", "x")
    result = CliRunner().invoke(cli, args(emu, file, tmp_path / "out", "--redis", "http://not-redis"))
    assert result.exit_code == 2, result.output
    assert "not a Redis URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert emu.stats()["requests"]["submit"] == 0
