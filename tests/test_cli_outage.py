"""A batch under an outage and under a rate limit, end to end: the command against an emulator
process.

An outage (every submit answered 503) must stop the batch after the session's streak, record
no failure as settled, and leave everything for a ``--resume`` that finishes it once the
provider is back, paying for each request once. A rate limit must slow the batch down, not
fail its jobs. The tests read the emulator's counters and the batch's files, never a clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flux_async._http import HttpRequest, HttpResponse
from flux_async._throttle import Throttle
from flux_async.cli._app import cli
from flux_async.emulator import DEFAULT_API_KEY, Duration, EmulatorProcess, FaultRates, Scenario
from flux_async.transport import AiohttpTransport

PROMPTS = 120


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario()) as emu:
        yield emu


@pytest.fixture
def emu(emulator_process: EmulatorProcess) -> EmulatorProcess:
    emulator_process.set_scenario(Scenario(seed=3, duration=Duration.fixed(0.05)))
    emulator_process.reset()
    return emulator_process


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"prompt number {i}\n" for i in range(PROMPTS)))
    return path


def run(emu: EmulatorProcess, prompts: Path, out: Path, provider: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    args = [
        "batch", str(prompts), "-o", str(out), "--json",
        "--provider", provider, "--base-url", emu.base_url(provider), "--api-key", DEFAULT_API_KEY,
        *extra,
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    summary: dict[str, Any] = json.loads(result.stdout)
    return result.exit_code, summary, result.stderr


def results(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("provider", ["apimart", "bfl"])
def test_an_outage_stops_the_batch_and_resume_finishes_it_paying_once(
    emu: EmulatorProcess, prompts: Path, tmp_path: Path, provider: str
) -> None:
    # Every submit is turned away with a 503 in the provider's own error envelope: no task is
    # made, so each is retried (within the retry budget) and then counts toward the streak.
    emu.set_scenario(
        Scenario(seed=3, submit_faults=FaultRates(server_error=1.0), server_error_statuses=(503,))
    )
    out = tmp_path / "out"
    code, summary, stderr = run(emu, prompts, out, provider)
    assert code == 4, stderr
    assert summary["outage_stopped"] is True
    assert "stopped submitting" in stderr
    assert "503" in stderr
    assert "--resume" in stderr
    assert "failed during the outage without creating a task" in stderr
    assert "(line " not in stderr  # counted, not listed one by one
    assert "Traceback" not in stderr
    assert results(out) == []  # nothing settled: --resume sends every request again
    assert summary["succeeded"] == summary["failed"] == 0
    assert summary["not_submitted"] == PROMPTS
    assert summary["unresolved"] >= 10  # the streak: failed without a task, no result line
    stats = emu.stats()
    assert stats["tasks_created"] == 0
    # The streak stopped it early: far fewer POSTs than one per line.
    assert stats["requests"]["submit"] < PROMPTS

    emu.set_scenario(Scenario(seed=3, duration=Duration.fixed(0.05)))
    code, summary, stderr = run(emu, prompts, out, provider, "--resume")
    assert code == 0, stderr
    stats = emu.stats()
    assert stats["tasks_created"] == PROMPTS
    assert stats["duplicate_submits"] == 0
    records = results(out)
    assert sorted(r["index"] for r in records) == list(range(PROMPTS))
    assert {r["status"] for r in records} == {"succeeded"}


def test_a_rate_limited_batch_slows_down_and_finishes_in_one_run(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    # 40 requests per second for everything (submits and polls), at the default settings:
    # the emulator answers 429 past it. With a burst of 10, not 40: a client slowed down by a
    # loaded machine (parallel tests) never emptied a bucket of 40, and the limit must be hit.
    # (No burst at all hits it at every request and the batch crawls at the minimum rate.)
    jobs = 60
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(jobs)))
    emu.set_scenario(
        Scenario(seed=3, duration=Duration.fixed(0.05), rate_limit=40.0, rate_limit_burst=10)
    )
    out = tmp_path / "out"
    code, summary, stderr = run(emu, prompts, out, "bfl")
    assert code == 0, stderr
    assert summary["succeeded"] == jobs
    assert summary["failures"] == {}
    stats = emu.stats()
    assert stats["rate_limited"]["rate"] > 0  # the limit was hit...
    assert summary["rate_limited"] == stats["rate_limited"]["rate"]  # ...and every 429 absorbed
    assert stats["tasks_created"] == jobs
    assert stats["duplicate_submits"] == 0
    assert len(results(out)) == jobs


def test_a_hard_submit_rate_cap_is_never_exceeded(
    emu: EmulatorProcess, prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read on the session's own clock (the loop's), never by how fast a request travels: the
    # emulator's creation times moved with the machine's load, so a loaded machine bunched
    # them up while the client kept its pace. Every slot the cap hands out is recorded, and
    # every submit POST as it is handed to the transport.
    slots: list[float] = []
    sends: list[float] = []
    real_delay = Throttle.submit_delay
    real_send = AiohttpTransport.send

    def submit_delay(self: Throttle, now: float, *, reserve: bool = True) -> float:
        delay = real_delay(self, now, reserve=reserve)
        if reserve:
            slots.append(now + delay)
        return delay

    async def send(self: AiohttpTransport, request: HttpRequest, **options: Any) -> HttpResponse:
        if request.method == "POST":
            sends.append(asyncio.get_running_loop().time())
        return await real_send(self, request, **options)

    monkeypatch.setattr(Throttle, "submit_delay", submit_delay)
    monkeypatch.setattr(AiohttpTransport, "send", send)
    out = tmp_path / "out"
    code, _summary, stderr = run(emu, prompts, out, "toapis", "--max-submits-per-second", "200")
    assert code == 0, stderr
    assert emu.stats()["tasks_created"] == PROMPTS
    assert len(slots) == len(sends) == PROMPTS
    slots.sort()
    # Any 21 consecutive slots span at least 0.1 s (20 intervals of 1/200 s), up to rounding.
    spans = [later - earlier for earlier, later in zip(slots, slots[20:], strict=False)]
    assert min(spans) >= 0.1 - 1e-9
    # And no submit is sent before its slot: the k-th send comes no earlier than the k-th slot,
    # so no window holds more sends than the cap allows. (A timer may fire up to the clock's
    # resolution early.)
    assert all(sent >= slot - 1e-6 for sent, slot in zip(sorted(sends), slots, strict=True))
