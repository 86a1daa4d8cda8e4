"""Resumable batches: a batch process killed or interrupted mid-way, then resumed.

The batch runs as a real process (``python -m flux_async.cli``) against an emulator process, so
SIGKILL and SIGINT hit it exactly as they would in a terminal. The first run's jobs last long
enough (2.5 s) that the stop always lands while tasks are in flight; jobs created by the resumed
run are quick. The tests wait on the journal file and the emulator's counters, never on a fixed
sleep.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _processes import start_cli as start
from _processes import wait_for
from click.testing import CliRunner

from flux_async.cli._app import cli
from flux_async.emulator import DEFAULT_API_KEY, Duration, EmulatorProcess, Scenario

PROMPTS = 20
WINDOW = 8
SLOW = 2.5


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario()) as emu:
        yield emu


@pytest.fixture
def emu(emulator_process: EmulatorProcess) -> EmulatorProcess:
    # Long enough for every job to still be in flight when the batch is stopped, even on a
    # loaded machine (the stop lands a few milliseconds after the window fills).
    emulator_process.set_scenario(Scenario(seed=9, duration=Duration.fixed(SLOW)))
    emulator_process.reset()
    return emulator_process


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"prompt number {i}\n" for i in range(PROMPTS)))
    return path


def batch_args(
    emu: EmulatorProcess, prompts: Path, out: Path, provider: str, window: int = WINDOW
) -> list[str]:
    return [
        "batch", str(prompts), "-o", str(out), "--json",
        "--concurrency", "4", "--max-outstanding", str(window),
        "--provider", provider, "--base-url", emu.base_url(provider), "--api-key", DEFAULT_API_KEY,
    ]  # fmt: skip


def ledger(out: Path) -> list[dict[str, Any]]:
    """The batch's ledger records (``journal.jsonl`` after its header), complete lines only."""
    path = out / "journal.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[1:-1]  # the last piece is empty or cut short
    return [json.loads(line) for line in lines]


def journal(out: Path) -> list[dict[str, Any]]:
    """The accepted tasks on record, each with the request index its key names."""
    return [
        {"index": int(r["key"].rsplit("-", 1)[1]), "ref": r["ref"]} for r in ledger(out) if r["op"] == "accept"
    ]


def results(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def resume(emu: EmulatorProcess, prompts: Path, out: Path, provider: str) -> dict[str, Any]:
    """Rerun with --resume (in-process), with quick jobs from now on and a wider window (neither
    is part of what a resumed batch must match)."""
    emu.set_scenario(Scenario(seed=9, duration=Duration.fixed(0.1)))
    args = [*batch_args(emu, prompts, out, provider, window=64), "--resume"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def assert_complete_without_duplicates(emu: EmulatorProcess, out: Path) -> None:
    stats = emu.stats()
    assert stats["tasks_created"] == PROMPTS
    assert stats["requests"]["submit"] == PROMPTS
    assert stats["duplicate_submits"] == 0
    records = results(out)
    assert sorted(r["index"] for r in records) == list(range(PROMPTS))
    assert {r["status"] for r in records} == {"succeeded"}
    assert {r["task_id"] for r in records} == {t["id"] for t in stats["tasks"]}
    for record in records:
        (name,) = record["files"]
        assert name.startswith(f"{record['index']}-")
        assert (out / name).read_bytes()[:3] in (b"\x89PN", b"\xff\xd8\xff")
    entries = journal(out)
    assert len(entries) == len({e["index"] for e in entries}) == PROMPTS


@pytest.mark.parametrize("provider", ["toapis", "bfl"])
def test_killed_batch_resumes_without_paying_twice(
    emu: EmulatorProcess, prompts: Path, tmp_path: Path, provider: str
) -> None:
    out = tmp_path / "out"
    proc = start(batch_args(emu, prompts, out, provider))
    try:
        # The window is full (WINDOW accepted, none finished): nothing is on the wire.
        wait_for(lambda: len(journal(out)) == WINDOW, "a full window in the journal")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # Everything the provider accepted was in the journal before the process died.
    stats = emu.stats()
    assert stats["tasks_created"] == len(journal(out)) == WINDOW
    assert results(out) == []

    summary = resume(emu, prompts, out, provider)

    assert summary["reattached"] == WINDOW
    assert summary["submitted"] == PROMPTS - WINDOW
    assert summary["succeeded"] == PROMPTS
    assert_complete_without_duplicates(emu, out)


def test_first_ctrl_c_stops_submitting_and_waits_for_jobs_in_flight(
    emu: EmulatorProcess, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = start(batch_args(emu, prompts, out, "apimart"))
    try:
        wait_for(lambda: len(journal(out)) == WINDOW, "a full window in the journal")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "waiting for 8 job(s) in flight" in stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    assert (summary["submitted"], summary["succeeded"]) == (WINDOW, WINDOW)
    assert summary["not_submitted"] == PROMPTS - WINDOW
    # Nothing was submitted after the interrupt, and every job in flight was collected.
    assert emu.stats()["tasks_created"] == WINDOW
    assert sorted(r["index"] for r in results(out)) == sorted(e["index"] for e in journal(out))

    summary = resume(emu, prompts, out, "apimart")
    assert (summary["previous_done"], summary["reattached"], summary["submitted"]) == (
        WINDOW,
        0,
        PROMPTS - WINDOW,
    )
    assert_complete_without_duplicates(emu, out)


def test_second_ctrl_c_exits_at_once_with_the_journal_intact(
    emu: EmulatorProcess, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = start(batch_args(emu, prompts, out, "toapis"))
    try:
        wait_for(lambda: len(journal(out)) == WINDOW, "a full window in the journal")
        proc.send_signal(signal.SIGINT)
        # The second Ctrl-C, once the first has been seen.
        assert proc.stderr is not None
        first_line = proc.stderr.readline()
        assert "Stopping" in first_line
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    # It did not wait for the jobs in flight: nothing finished, everything stays journaled.
    assert results(out) == []
    assert len(journal(out)) == emu.stats()["tasks_created"] == WINDOW
    assert json.loads(stdout)["not_submitted"] == PROMPTS - WINDOW

    summary = resume(emu, prompts, out, "toapis")
    assert summary["reattached"] == WINDOW
    assert_complete_without_duplicates(emu, out)


def test_a_key_revoked_mid_batch_loses_nothing(
    emu: EmulatorProcess, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = start(batch_args(emu, prompts, out, "toapis"))
    try:
        wait_for(lambda: len(journal(out)) == WINDOW, "a full window in the journal")
        # From now on the key is refused: every poll of the accepted tasks gets a 401.
        emu.set_scenario(Scenario(seed=9, duration=Duration.fixed(SLOW), api_keys=("another-key",)))
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert "AuthenticationError" in stderr
    assert "--resume" in stderr
    summary = json.loads(stdout)
    assert (summary["left_accepted"], summary["not_submitted"]) == (WINDOW, PROMPTS - WINDOW)
    assert summary["failed"] == 0  # nothing was settled as a failure...
    assert results(out) == []  # ...so no result line keeps --resume from collecting them
    assert emu.stats()["tasks_created"] == WINDOW

    summary = resume(emu, prompts, out, "toapis")
    assert (summary["reattached"], summary["submitted"]) == (WINDOW, PROMPTS - WINDOW)
    assert_complete_without_duplicates(emu, out)
