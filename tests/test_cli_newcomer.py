"""The command line as a newcomer meets it: typos caught before any request, an unwritable
output directory caught before paying, a paid task always named (with the command that checks
it), ``--json`` that always prints an object, the emulator command, the progress display.

Commands run in-process with click's CliRunner against an emulator process.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.progress import Progress

from flux_async.cli._app import cli
from flux_async.cli._display import (
    Counts,
    ProgressView,
    RunSummary,
    rate_text,
    summary_json,
    summary_table,
)
from flux_async.cli._runtime import console
from flux_async.emulator import DEFAULT_API_KEY, EmulatorProcess, Scenario

KEY_VARS = (
    "TOAPIS_API_KEY",
    "APIMART_API_KEY",
    "BFL_API_KEY",
    "FLUX_ASYNC_API_KEY",
    "FLUX_ASYNC_BASE_URL",
    "FLUX_ASYNC_PROVIDER",
)


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario()) as emu:
        yield emu


@pytest.fixture
def emu(emulator_process: EmulatorProcess) -> EmulatorProcess:
    emulator_process.set_scenario(Scenario())
    emulator_process.reset()
    return emulator_process


def invoke(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    clean: dict[str, str | None] = dict.fromkeys(KEY_VARS)
    clean.update(env or {})
    return CliRunner().invoke(cli, args, env=clean, catch_exceptions=False)


def connect(emu: EmulatorProcess, provider: str = "toapis") -> list[str]:
    return ["--provider", provider, "--base-url", emu.base_url(provider), "--api-key", DEFAULT_API_KEY]


def requests_sent(emu: EmulatorProcess) -> int:
    stats: dict[str, Any] = dict(emu.stats(tasks=False))
    return sum(stats["requests"].values())


# -- the base URL ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("127.0.0.1:18080/toapis", "did you mean http://127.0.0.1:18080/toapis"),
        ("ftp://127.0.0.1:18080/toapis", "only http:// and https://"),
        ("notaurl", "is not a URL"),
        ("http://", "names no host"),
        ("http://127.0.0.1:99999/toapis", "invalid port"),
        ("http://user:secret@127.0.0.1/toapis", "must not carry credentials"),
    ],
)
def test_a_bad_base_url_is_a_usage_error_before_any_request(
    emu: EmulatorProcess, tmp_path: Path, url: str, reason: str
) -> None:
    result = invoke(["generate", "a fox", "-o", str(tmp_path), "--base-url", url, "--api-key", "k"])
    assert result.exit_code == 2, result.output
    assert "--base-url" in result.stderr
    assert reason in result.stderr
    assert "secret" not in result.stderr
    assert "Traceback" not in result.output


def test_a_bad_base_url_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    result = invoke(
        ["status", "task_1", "--api-key", "k"], env={"FLUX_ASYNC_BASE_URL": "localhost:8080/toapis"}
    )
    assert result.exit_code == 2
    assert "FLUX_ASYNC_BASE_URL" in result.stderr


# -- generate: checked before paying, the paid task always named ------------------------------------


def test_generate_into_an_unwritable_directory_is_refused_before_submitting(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = invoke(["generate", "a fox", "-o", str(blocker / "out"), *connect(emu)])
    assert result.exit_code == 2, result.output
    assert "cannot write to" in result.stderr
    assert requests_sent(emu) == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only directory")
def test_generate_into_a_read_only_directory_is_refused_before_submitting(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = invoke(["generate", "a fox", "-o", str(locked), *connect(emu)])
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2, result.output
    assert requests_sent(emu) == 0


def test_generate_on_bfl_prints_what_status_needs(emu: EmulatorProcess, tmp_path: Path) -> None:
    result = invoke(["generate", "a lighthouse", "--json", "-o", str(tmp_path), *connect(emu, "bfl")])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["ok"] is True
    assert info["polling_url"].startswith(emu.url + "/bfl-us1/v1/get_result?id=")
    assert info["ref"] == {
        "provider": "bfl",
        "task_id": info["task_id"],
        "polling_url": info["polling_url"],
        "model": "flux-kontext-pro",
    }
    status = invoke(["status", info["polling_url"], "--json", *connect(emu, "bfl")])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["status"] == "succeeded"

    text = invoke(["generate", "a lighthouse", "-o", str(tmp_path), *connect(emu, "bfl")])
    assert text.exit_code == 0, text.output
    assert "flux-async status 'http://" in text.stderr  # quoted: the URL holds a '?'
    assert "/bfl-us1/v1/get_result?id=" in text.stderr


def test_generate_json_prints_an_object_on_failure_with_the_paid_task(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    emu.set_scenario(Scenario(failure_rate=1.0))
    result = invoke(["generate", "doomed", "--json", "-o", str(tmp_path), *connect(emu)])
    assert result.exit_code == 1
    info = json.loads(result.stdout)
    [task] = emu.stats()["tasks"]
    assert info["task_id"] == task["id"]
    assert info["ok"] is False
    assert info["exit_code"] == 1
    assert info["error"]["kind"] == "TaskFailedError"
    assert task["id"] in result.stderr


def test_generate_json_prints_an_object_when_nothing_was_submitted(tmp_path: Path) -> None:
    result = invoke(["generate", "x", "--json", "-o", str(tmp_path), "--provider", "bfl"])
    assert result.exit_code == 2
    info = json.loads(result.stdout)
    assert (info["task_id"], info["ok"], info["error"]["kind"]) == (None, False, "ConfigurationError")


def test_the_missing_key_message_speaks_of_the_option(tmp_path: Path) -> None:
    result = invoke(["generate", "x", "-o", str(tmp_path), "--provider", "apimart"])
    assert result.exit_code == 2
    assert "--api-key" in result.stderr
    assert "api_key=" not in result.stderr
    assert "APIMART_API_KEY" in result.stderr


# -- the emulator command ----------------------------------------------------------------------------


def test_emulator_scenario_file_that_does_not_exist() -> None:
    result = invoke(["emulator", "--scenario", "nofile.json"])
    assert result.exit_code == 2
    assert "no such file: nofile.json" in result.stderr
    assert "Expecting value" not in result.stderr


def _first_json_line(command: list[str]) -> dict[str, Any]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the emulator did not start"
        info: dict[str, Any] = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        return info
    finally:
        proc.kill()
        proc.communicate()


def test_both_emulator_commands_print_the_same_keys() -> None:
    args = ["--port", "0", "--json", "--seed", "3"]
    module = _first_json_line([sys.executable, "-m", "flux_async.emulator", *args])
    command = _first_json_line([sys.executable, "-m", "flux_async.cli", "emulator", *args])
    assert set(module) == set(command)
    assert command["api_key"] == module["api_key"] == DEFAULT_API_KEY
    assert set(command["providers"]) == {"toapis", "apimart", "bfl"}


def test_the_emulator_command_runs_without_the_cli_extra() -> None:
    code = (
        "import sys; sys.modules['rich'] = None; sys.modules['click'] = None; "
        "from flux_async.cli import main; main(sys.argv[1:])"
    )
    info = _first_json_line([sys.executable, "-c", code, "emulator", "--port", "0", "--json"])
    assert info["api_key"] == DEFAULT_API_KEY


# -- the progress display and the summary -------------------------------------------------------------


def test_no_rate_from_a_handful_of_jobs() -> None:
    assert rate_text(3, 0.005) is None  # three jobs in five milliseconds: not 600/s
    assert rate_text(4, 60.0) is None
    assert rate_text(40, 1.0) is None
    assert rate_text(50, 10.0) == "5.0/s"
    assert rate_text(6, 120.0) == "3.0/min"


def _rendered(progress: Progress) -> str:
    from flux_async.cli._display import _CountsColumn

    return _CountsColumn().render(progress.tasks[0]).plain


def test_the_time_left_follows_the_rate_and_disappears_while_stopping() -> None:
    now = [0.0]
    progress = Progress(get_time=lambda: now[0])
    task = progress.add_task("jobs", total=100, completed=0, counts="", finished=0, stopping=False)
    now[0] = 0.01
    progress.update(task, completed=3, finished=3)
    assert "/s" not in _rendered(progress)
    assert "ETA" not in _rendered(progress)
    now[0] = 10.0
    progress.update(task, completed=20, finished=20)
    assert _rendered(progress).endswith("· 2.0/s · ETA 0:40")
    progress.update(task, stopping=True)
    assert "ETA" not in _rendered(progress)


def test_earlier_runs_do_not_count_in_the_rate() -> None:
    now = [0.0]
    progress = Progress(get_time=lambda: now[0])
    task = progress.add_task("jobs", total=1000, completed=900, counts="", finished=0, stopping=False)
    now[0] = 10.0
    progress.update(task, completed=910, finished=10)
    assert "1.0/s" in _rendered(progress)
    assert "ETA 1:30" in _rendered(progress)


def _summary(**changes: Any) -> RunSummary:
    fields: dict[str, Any] = {
        "output": "out", "jobs": 100, "succeeded": 10, "failed": 0, "failures": {},
        "unresolved": 0, "previous_done": 0, "previous_failed": 0, "submitted": 60,
        "reattached": 0, "left_accepted": 0, "not_submitted": 0, "requests": 300, "retries": 0,
        "rate_limited": 0, "wall_time": 3.0, "interrupted": False, "exit_code": 0,
    }  # fmt: skip
    fields.update(changes)
    return RunSummary(**fields)


def test_requests_per_job_is_not_shown_when_accepted_jobs_were_left_unfinished() -> None:
    assert _summary().requests_per_job == 30.0
    interrupted = _summary(left_accepted=50, interrupted=True, exit_code=130)
    assert interrupted.requests_per_job is None
    assert summary_json(interrupted)["requests_per_job"] is None
    out = console(stderr=False)
    with out.capture() as captured:
        out.print(summary_table(interrupted))
    row = next(line for line in captured.get().splitlines() if "requests per job" in line)
    assert "30.00" not in row
    assert "300 requests" in row


def test_output_that_is_not_a_terminal_is_not_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    err = console(stderr=True)  # pytest's captured stderr is not a terminal
    assert not err.is_terminal
    counts = Counts(label="a-rather-long-input-file-name-for-this-batch.jsonl", total=123456)
    counts.submitted = counts.succeeded = counts.finished_with_task = 100000
    counts.failed = 23456
    with err.capture() as captured:
        view = ProgressView(err, enabled=True)
        view.add(counts)
        with view:
            pass
    lines = [line for line in captured.get().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "123456/123456" in lines[0]
    assert "failed 23456" in lines[0]
