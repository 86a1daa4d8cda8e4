"""A batch killed at any instant, POSTs on the wire included, never pays twice or loses a task.

The batch runs as a real process (``python -m flux_async.cli``) against an emulator process
whose every submit creates its task at once and answers late, so each SIGKILL lands while
POSTs are on the wire. The batch is resumed after each kill and finally run to its end. On
toapis every lost answer is found again by its key; on apimart and BFL, which have no lookup,
the requests whose answers were lost are reported *in doubt* and never sent again. The tests
wait on the emulator's counters and the process, never on a fixed sleep.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _processes import start_cli, wait_for

from flux_async.emulator import DEFAULT_API_KEY, Duration, EmulatorProcess, Scenario

PROMPTS = 10
ANSWER_DELAY = 0.3  # every submit is answered this late, its task created at once
KILLS = (2, 5)  # kill once the emulator has seen this many submits in all


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario()) as emu:
        yield emu


@pytest.fixture
def emu(emulator_process: EmulatorProcess) -> EmulatorProcess:
    emulator_process.set_scenario(
        Scenario(
            seed=3,
            duration=Duration.fixed(0.05),
            submit_faults={"slow": 1.0},
            slow_delay=ANSWER_DELAY,
        )
    )
    emulator_process.reset()
    return emulator_process


def run_batch(emu: EmulatorProcess, prompts: Path, out: Path, provider: str, *more: str) -> subprocess.Popen[str]:
    return start_cli([
        "batch", str(prompts), "-o", str(out), "--json", "--concurrency", "3",
        "--provider", provider, "--base-url", emu.base_url(provider), "--api-key", DEFAULT_API_KEY, *more,
    ])  # fmt: skip


def submits(emu: EmulatorProcess) -> int:
    return int(emu.stats(tasks=False)["requests"]["submit"])


def results(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def crash_and_resume(emu: EmulatorProcess, prompts: Path, out: Path, provider: str) -> tuple[dict[str, Any], str]:
    """Kill the batch with SIGKILL each time the emulator has seen KILLS[i] submits (a POST is
    then on the wire), resume it, and finally let it run to its end: its summary and stderr."""
    for i, target in enumerate(KILLS):
        proc = run_batch(emu, prompts, out, provider, *(["--resume"] if i else []))
        try:
            wait_for(lambda t=target, p=proc: submits(emu) >= t or p.poll() is not None, f"{target} submits")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            proc.kill()
            proc.communicate()
    proc = run_batch(emu, prompts, out, provider, "--resume")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (0, 1), stderr
    return json.loads(stdout), stderr


@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
def test_sigkill_mid_post_at_many_instants_never_pays_twice(
    emu: EmulatorProcess, tmp_path: Path, provider: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"crash prompt number {i}\n" for i in range(PROMPTS)))
    out = tmp_path / "out"

    summary, stderr = crash_and_resume(emu, prompts, out, provider)

    stats = emu.stats()
    assert stats["duplicate_submits"] == 0  # no request was ever sent twice
    created = {task["id"] for task in stats["tasks"]}
    records = results(out)
    done = {r["index"] for r in records}
    doubtful = {int(m) for m in re.findall(r"request (\d+) \(line \d+\) is in doubt", stderr)}
    assert summary["in_doubt"] == len(doubtful)
    assert not done & doubtful
    # Every request is delivered, or reported in doubt: none is silently dropped.
    assert done | doubtful == set(range(PROMPTS))
    delivered = {r["task_id"] for r in records if r["task_id"]}
    assert delivered <= created
    # Every paid task was delivered, or belongs to a request reported in doubt.
    assert len(created - delivered) <= len(doubtful)
    for record in records:
        assert record["status"] == "succeeded", record
        (name,) = record["files"]
        assert (out / name).read_bytes()[:3] in (b"\x89PN", b"\xff\xd8\xff")
    if provider == "toapis":
        # Every lost answer was found again by its key: one task per request, nothing in doubt.
        assert doubtful == set()
        assert len(created) == PROMPTS
        assert summary["exit_code"] == 0
    else:
        # Each kill landed while a POST was on the wire: those requests are in doubt.
        assert len(doubtful) >= len(KILLS)
        assert summary["exit_code"] == 1
        assert "--resubmit-in-doubt" in stderr
        # Sending them again is the user's explicit choice, and then the batch is done.
        proc = run_batch(emu, prompts, out, provider, "--resume", "--resubmit-in-doubt")
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert json.loads(stdout)["in_doubt"] == 0
        assert {r["index"] for r in results(out)} == set(range(PROMPTS))
        assert submits(emu) == stats["requests"]["submit"] + len(doubtful)


def stop_mid_post(emu: EmulatorProcess, proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[str, str]:
    """Send ``sig`` once a POST is on the wire (the first submit, answered ANSWER_DELAY late)."""
    try:
        wait_for(lambda: submits(emu) >= 1, "a submit on the wire")
        proc.send_signal(sig)
        return proc.communicate(timeout=60)
    finally:
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_graceful_stop_mid_post_collects_the_task_that_post_created(
    emu: EmulatorProcess, tmp_path: Path, sig: signal.Signals
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"stop prompt {i}\n" for i in range(PROMPTS)))
    out = tmp_path / "out"
    proc = run_batch(emu, prompts, out, "apimart")
    stdout, stderr = stop_mid_post(emu, proc, sig)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "Stopping" in stderr
    summary = json.loads(stdout)
    created = {task["id"] for task in emu.stats()["tasks"]}
    # Every POST on the wire when the stop came was answered, recorded and collected.
    assert created
    assert {r["task_id"] for r in results(out)} == created
    assert summary["submitted"] == summary["succeeded"] == len(created)
    assert summary["left_accepted"] == 0


@pytest.mark.parametrize("provider", ["toapis", "apimart"])
def test_a_second_ctrl_c_mid_post_exits_and_the_resume_pays_for_nothing_twice(
    emu: EmulatorProcess, tmp_path: Path, provider: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"double stop prompt {i}\n" for i in range(PROMPTS)))
    out = tmp_path / "out"
    proc = run_batch(emu, prompts, out, provider)
    try:
        wait_for(lambda: submits(emu) >= 1, "a submit on the wire")
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        assert "Stopping" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr

    final = run_batch(emu, prompts, out, provider, "--resume")
    stdout, stderr = final.communicate(timeout=60)
    summary = json.loads(stdout)
    stats = emu.stats()
    assert stats["duplicate_submits"] == 0
    done = {r["index"] for r in results(out)}
    doubtful = {int(m) for m in re.findall(r"request (\d+) \(line \d+\) is in doubt", stderr)}
    assert done | doubtful == set(range(PROMPTS))
    if provider == "toapis":
        assert (doubtful, len(stats["tasks"]), final.returncode) == (set(), PROMPTS, 0)
    else:
        assert summary["in_doubt"] == len(doubtful)
        assert len(stats["tasks"]) <= PROMPTS


@pytest.mark.parametrize("provider", ["toapis", "apimart"])
@pytest.mark.parametrize("what", ["intend", "accept"])
def test_a_full_disk_under_the_ledger_stops_the_batch_with_a_message_and_loses_nothing(
    emu: EmulatorProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str, what: str
) -> None:
    from click.testing import CliRunner

    from flux_async import FileLedger
    from flux_async.cli._app import cli

    emu.set_scenario(Scenario(seed=3, duration=Duration.fixed(0.05)))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"disk prompt {i}\n" for i in range(PROMPTS)))
    out = tmp_path / "out"
    real = getattr(FileLedger, what)
    calls = 0

    async def filling_up(self: FileLedger, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 3:  # the disk is full from the fourth write of this kind on
            raise OSError(28, "No space left on device")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(FileLedger, what, filling_up)
    args = [
        "batch", str(prompts), "-o", str(out), "--json", "--concurrency", "1",
        "--provider", provider, "--base-url", emu.base_url(provider), "--api-key", DEFAULT_API_KEY,
    ]  # fmt: skip
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 1, first.output
    assert "Traceback" not in first.stderr
    assert "No space left on device" in first.stderr
    created = [task["id"] for task in emu.stats()["tasks"]]
    if what == "intend":
        assert "nothing was sent" in first.stderr
        assert len(created) == 3  # the fourth request was never sent
    else:
        # The task whose acceptance could not be written is named, with its ref, to resume by
        # hand; it was still waited for and downloaded; nothing was sent after it.
        assert len(created) == 4
        unrecorded = json.loads(first.stdout)["unrecorded_tasks"]
        assert [ref["task_id"] for ref in unrecorded] == created[3:]
        assert created[3] in first.stderr
        assert {r["task_id"] for r in results(out)} == set(created)

    monkeypatch.setattr(FileLedger, what, real)  # space freed
    second = CliRunner().invoke(cli, [*args, "--resume"])
    stats = emu.stats()
    assert stats["duplicate_submits"] == 0
    done = {r["index"] for r in results(out)}
    assert second.exit_code == 0, second.output
    assert done == set(range(PROMPTS))
    assert len(stats["tasks"]) == PROMPTS
