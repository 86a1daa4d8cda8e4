"""``flux-async batch --redis URL``: batches in several processes on one account share the
provider's caps, the budget and the idempotency keys through Redis (a real server), each
keeping its own journal. Two batch processes against an emulator process; its counters tell."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from _processes import start_cli, wait_for
from _redis import RedisServer, redis_server_or_skip
from click.testing import CliRunner

from flux_async.cli._app import cli
from flux_async.emulator import DEFAULT_API_KEY, Duration, EmulatorProcess, Scenario

LINES = 24


@pytest.fixture
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario(seed=6, duration=Duration.fixed(0.3))) as process:
        yield process


@pytest.fixture
def emulator_process_toapis() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario(seed=7, duration=Duration.fixed(0.3))) as process:
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


# -- a shared batch: one file split between processes ---------------------------------------------


def shared_args(emu: EmulatorProcess, file: Path, out: Path, redis_url: str, *extra: str) -> list[str]:
    return [
        "batch", str(file), "-o", str(out), "--json", "--provider", "toapis", "--base-url",
        emu.base_url("toapis"), "--api-key", DEFAULT_API_KEY, "--redis", redis_url, *extra,
    ]  # fmt: skip


def result_lines(*dirs: Path) -> list[dict[str, object]]:
    """Every result line written in the output directories (however many processes wrote there)."""
    found = []
    for out in dirs:
        path = out / "results.jsonl"
        if path.exists():
            found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


def test_three_processes_share_one_batch_of_1000_lines_each_line_once(
    emulator_process_toapis: EmulatorProcess, redis_url: str, tmp_path: Path
) -> None:
    emu = emulator_process_toapis
    lines = 1000
    file = tmp_path / "prompts.txt"
    file.write_text("".join(f"a shared lighthouse number {i}\n" for i in range(lines)))
    # Two processes write into one directory, the third into its own of the same name (as on
    # another machine): all three run the same batch.
    shared_dir, other_dir = tmp_path / "a" / "out", tmp_path / "b" / "out"
    outs = [shared_dir, shared_dir, other_dir]
    procs = [start_cli(shared_args(emu, file, out, redis_url, "--max-outstanding", "48")) for out in outs]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    summaries = []
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
        summaries.append(json.loads(stdout))
    found = result_lines(shared_dir, other_dir)
    indices = sorted(int(str(r["index"])) for r in found)
    assert indices == list(range(lines))  # every line, once
    assert all(r["status"] == "succeeded" for r in found)
    # Every image is where its result line says.
    for out in (shared_dir, other_dir):
        for r in result_lines(out):
            assert all((out / str(f)).is_file() for f in r["files"])  # type: ignore[attr-defined]
    stats = emu.stats(tasks=False)
    assert stats["tasks_created"] == lines
    assert stats["duplicate_submits"] == 0
    # The work was split: each process settled some lines, and each one's summary counts the
    # whole batch (its own lines, and the others' as done by other processes).
    for summary in summaries:
        assert 0 < summary["succeeded"] < lines
        assert summary["succeeded"] + summary["elsewhere"] + summary["previous_done"] == lines
    assert sum(s["succeeded"] for s in summaries) == lines
    # Each directory also lists the whole batch, as recorded in Redis, with where each line's
    # images are.
    for out in (shared_dir, other_dir):
        listed = [json.loads(line) for line in (out / "shared-results.jsonl").read_text().splitlines()]
        assert [r["index"] for r in listed] == list(range(lines))
        assert {r["output"] for r in listed} == {str(shared_dir), str(other_dir)}


def test_a_shared_batch_survives_kill_9_of_its_processes_and_is_finished_by_a_new_one(
    emulator_process_toapis: EmulatorProcess, redis_url: str, tmp_path: Path
) -> None:
    emu = emulator_process_toapis
    lines = 120
    file = tmp_path / "prompts.txt"
    file.write_text("".join(f"a stubborn lighthouse number {i}\n" for i in range(lines)))
    outs = [tmp_path / f"m{i}" / "out" for i in range(3)]
    env_lease = {"FLUX_ASYNC_REDIS_LEASE": "1"}
    procs = [
        start_cli(shared_args(emu, file, outs[i], redis_url, "--max-outstanding", "8"), env=env_lease)
        for i in range(2)
    ]
    try:
        # Both die at once, mid-batch, with tasks running and POSTs on the wire.
        wait_for(lambda: len(result_lines(*outs)) >= 20, "20 result lines", timeout=60)
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            proc.wait(10)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    done_before = len(result_lines(*outs))
    assert done_before < lines
    # The same command on a third machine: it takes over the dead processes' lines once their
    # leases run out, re-attaching their paid tasks through the shared ledger.
    last = start_cli(shared_args(emu, file, outs[2], redis_url), env=env_lease)
    stdout, stderr = last.communicate(timeout=120)
    assert last.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["previous_done"] >= done_before  # it counts what the dead ones finished
    # The batch's record in Redis has every line once. A result line of its own directory is
    # written just after a line's record: a process killed in between leaves its images and its
    # record, not its result line; no line has two.
    listed = [json.loads(line) for line in (outs[2] / "shared-results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in listed] == list(range(lines))
    found = result_lines(*outs)
    local = [int(str(r["index"])) for r in found]
    assert len(local) == len(set(local))
    for record in listed:
        assert record["status"] == "succeeded"
        assert all((Path(record["output"]) / f).is_file() for f in record["files"])
        if record["index"] not in local:
            assert record["output"] != str(outs[2])  # only a killed process can have missed one
    stats = emu.stats(tasks=False)
    assert stats["tasks_created"] == lines  # nothing paid twice
    assert stats["duplicate_submits"] == 0
    # Run again: the batch is done; nothing is sent.
    again = start_cli(shared_args(emu, file, outs[2], redis_url), env=env_lease)
    stdout, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    assert json.loads(stdout)["previous_done"] == lines
    assert emu.stats(tasks=False)["requests"]["submit"] == stats["requests"]["submit"]


def test_a_directory_of_a_shared_batch_is_refused_without_redis_and_the_reverse(
    emulator_process_toapis: EmulatorProcess, redis_url: str, tmp_path: Path
) -> None:
    emu = emulator_process_toapis
    file = prompts(tmp_path / "p.txt", "dir")
    base = ["batch", str(file), "--json", "--provider", "toapis", "--base-url", emu.base_url("toapis"),
            "--api-key", DEFAULT_API_KEY]  # fmt: skip
    runner = CliRunner()
    shared = runner.invoke(cli, [*base, "-o", str(tmp_path / "s"), "--redis", redis_url])
    assert shared.exit_code == 0, shared.output
    page = (tmp_path / "s" / "report.html").read_text()
    assert "shared between processes through Redis" in page
    assert page.count("dir lighthouse number") >= LINES  # every line's prompt, read from the input
    for extra in ([], ["--resume"]):
        result = runner.invoke(cli, [*base, "-o", str(tmp_path / "s"), *extra])
        assert result.exit_code == 2
        assert "--redis" in result.stderr
    local = runner.invoke(cli, [*base, "-o", str(tmp_path / "l")])
    assert local.exit_code == 0, local.output
    result = runner.invoke(cli, [*base, "-o", str(tmp_path / "l"), "--redis", redis_url])
    assert result.exit_code == 2
    assert "without --redis" in result.stderr
    result = runner.invoke(cli, [*base, "-o", str(tmp_path / "s"), "--redis", redis_url, "--resume", "--retry-failed", "all"])
    assert result.exit_code == 2
    assert "--retry-failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_redis_failing_mid_batch_stops_submitting_and_records_what_was_accepted(
    emulator_process_toapis: EmulatorProcess, tmp_path: Path
) -> None:
    emu = emulator_process_toapis
    server = RedisServer(redis_server_or_skip())  # its own: the shared one must stay up
    server.start()
    try:
        lines = 200
        file = tmp_path / "prompts.txt"
        file.write_text("".join(f"a lighthouse in a storm number {i}\n" for i in range(lines)))
        out = tmp_path / "out"
        proc = start_cli(shared_args(emu, file, out, server.url, "--max-outstanding", "8"))
        try:
            wait_for(lambda: len(result_lines(out)) >= 10, "10 result lines", timeout=60)
            server.stop()
            stdout, stderr = proc.communicate(timeout=90)
        finally:
            proc.kill()
    finally:
        server.close()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    # Whichever Redis call came first (a claim of lines, or the ledger's intent) stops it.
    assert re.search(r"stopped submitting: (CoordinatorError|LedgerError): .*Redis at redis://127\.0\.0\.1", stderr)
    summary = json.loads(stdout)
    assert summary["succeeded"] < lines
    # Nothing was sent without Redis, and every task the provider made was collected and has
    # its result line here.
    created = {task["id"] for task in emu.stats()["tasks"]}
    recorded = {str(r["task_id"]) for r in result_lines(out) if r["status"] == "succeeded"}
    assert created == recorded
    assert emu.stats(tasks=False)["duplicate_submits"] == 0


def test_a_process_stopped_with_sigterm_gives_its_lines_to_the_one_still_running(
    emulator_process_toapis: EmulatorProcess, redis_url: str, tmp_path: Path
) -> None:
    emu = emulator_process_toapis
    lines = 120
    file = tmp_path / "prompts.txt"
    file.write_text("".join(f"a patient lighthouse number {i}\n" for i in range(lines)))
    outs = [tmp_path / f"m{i}" / "out" for i in range(2)]
    # The default lease (15 s): the stopped process's lines come back as it leaves (given back,
    # its lease ended), with no lease left to run out.
    procs = [start_cli(shared_args(emu, file, out, redis_url, "--max-outstanding", "8")) for out in outs]
    try:
        wait_for(lambda: len(result_lines(outs[0])) >= 5, "5 result lines", timeout=60)
        procs[0].send_signal(signal.SIGTERM)
        stopped = procs[0].communicate(timeout=60)
        rest = procs[1].communicate(timeout=60)
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode == 130, stopped[1]  # interrupted: what it accepted was collected
    assert procs[1].returncode == 0, rest[1]
    first, second = json.loads(stopped[0]), json.loads(rest[0])
    assert first["succeeded"] + second["succeeded"] == lines
    assert second["succeeded"] > first["succeeded"]
    found = sorted(int(str(r["index"])) for r in result_lines(*outs))
    assert found == list(range(lines))
    stats = emu.stats(tasks=False)
    assert stats["tasks_created"] == lines
    assert stats["duplicate_submits"] == 0
