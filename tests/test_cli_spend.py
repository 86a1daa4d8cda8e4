"""Money on the command line: a dry run's estimate, a budget that stops a batch and resumes
under a larger one without paying twice, prices given by hand, costs in results.jsonl."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flux_async.cli._app import cli
from flux_async.emulator import DEFAULT_API_KEY, Duration, EmulatorProcess, Scenario

KEY_VARS = ("TOAPIS_API_KEY", "APIMART_API_KEY", "BFL_API_KEY", "FLUX_ASYNC_API_KEY", "FLUX_ASYNC_BASE_URL")


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario()) as emu:
        yield emu


@pytest.fixture
def emu(emulator_process: EmulatorProcess) -> EmulatorProcess:
    emulator_process.set_scenario(Scenario(seed=4, duration=Duration.fixed(0.02)))
    emulator_process.reset()
    return emulator_process


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args, env=dict.fromkeys(KEY_VARS), catch_exceptions=False)


def batch(emu: EmulatorProcess, source: Path, out: Path, provider: str, *more: str) -> list[str]:
    return [
        "batch", str(source), "-o", str(out), "--json", "--no-report", "--provider", provider,
        "--base-url", emu.base_url(provider), "--api-key", DEFAULT_API_KEY, *more,
    ]  # fmt: skip


def prompts(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps({"prompt": f"spend prompt {i}", "model": "flux-kontext-max" if i % 4 == 0 else "flux-kontext-pro"})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("concurrency", ["1", "16"])
def test_a_budget_stops_the_batch_and_a_larger_one_finishes_it_without_paying_twice(
    emu: EmulatorProcess, tmp_path: Path, concurrency: str
) -> None:
    source = tmp_path / "prompts.txt"
    source.write_text("".join(f"budget prompt {i}\n" for i in range(50)))  # 50 x $0.04 = $2.00
    out = tmp_path / "out"
    first = invoke(batch(emu, source, out, "bfl", "--max-spend", "1.00", "--concurrency", concurrency))
    assert first.exit_code == 3, first.output  # the documented budget status
    summary = json.loads(first.stdout)
    assert summary["budget_stopped"] is True
    tasks = emu.stats()["tasks"]
    assert len(tasks) <= 25  # in-flight reservations included: never past $1.00
    assert summary["spent_usd"] == pytest.approx(0.04 * len(tasks))
    assert summary["spent_usd"] <= 1.00 + 1e-9

    second = invoke(batch(emu, source, out, "bfl", "--max-spend", "2.00", "--resume", "--concurrency", concurrency))
    assert second.exit_code == 0, second.output
    stats = emu.stats()
    assert len(stats["tasks"]) == 50
    assert stats["duplicate_submits"] == 0
    assert {r["index"] for r in results(out) if r["status"] == "succeeded"} == set(range(50))
    again = json.loads(second.stdout)
    assert again["carried_over_usd"] == pytest.approx(0.04 * len(tasks))
    assert again["spent_usd"] + again["carried_over_usd"] == pytest.approx(2.00)


@pytest.mark.parametrize("provider", ["bfl", "apimart"])
def test_the_dry_run_total_is_what_the_real_run_settles(emu: EmulatorProcess, tmp_path: Path, provider: str) -> None:
    source = prompts(tmp_path, 12)
    dry = invoke(batch(emu, source, tmp_path / "dry", provider, "--dry-run"))
    assert dry.exit_code == 0, dry.output
    estimate = json.loads(dry.stdout)
    assert emu.stats()["requests"]["submit"] == 0  # nothing sent
    assert not (tmp_path / "dry").exists()
    assert (estimate["jobs"], estimate["images"]) == (12, 12)

    out = tmp_path / "out"
    real = invoke(batch(emu, source, out, provider))
    assert real.exit_code == 0, real.output
    settled = json.loads(real.stdout)["spent_usd"]
    assert settled == pytest.approx(estimate["usd"])
    lines = results(out)
    assert sum(r["cost"] for r in lines) == pytest.approx(estimate["usd"])
    assert {r["cost_source"] for r in lines} == {"reported"}  # both providers report it
    assert emu.stats()["charged_usd"] == pytest.approx(estimate["usd"])


def test_prices_by_hand_price_toapis_and_bad_ones_are_usage_errors(emu: EmulatorProcess, tmp_path: Path) -> None:
    source = prompts(tmp_path, 4)  # 1 max, 3 pro
    out = tmp_path / "out"
    refused = invoke(batch(emu, source, out, "toapis", "--max-spend", "5"))
    assert refused.exit_code == 2
    assert "--price flux-kontext-max=USD" in refused.stderr
    assert emu.stats()["requests"]["submit"] == 0
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"flux-kontext-max": 0.1}))
    dry = invoke(batch(emu, source, out, "toapis", "--dry-run", "--prices", str(table), "--price", "flux-kontext-pro=0.05"))
    assert json.loads(dry.stdout)["usd"] == pytest.approx(0.1 + 3 * 0.05)
    for bad in (["--price", "flux-kontext-pro"], ["--price", "flux-kontext-pro=cheap"], ["--price", "no-such-model=1"],
                ["--prices", str(tmp_path / "missing.json")]):  # fmt: skip
        result = invoke(batch(emu, source, out, "toapis", "--dry-run", *bad))
        assert result.exit_code == 2, (bad, result.output)
        assert "Traceback" not in result.output
    run = invoke(batch(emu, source, out, "toapis", "--max-spend", "5", "--prices", str(table), "--price", "flux-kontext-pro=0.05"))
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout)
    assert summary["spent_usd"] == pytest.approx(0.25)  # toapis reports nothing: the table's figure
    assert {r["cost_source"] for r in results(out)} == {"price_table"}
