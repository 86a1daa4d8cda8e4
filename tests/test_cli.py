"""The flux-async command, run in-process with click's CliRunner against an emulator process."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flux_async import (
    AuthenticationError,
    BadRequestError,
    DownloadError,
    ModerationError,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimeoutError,
    TransportError,
    catalog,
)
from flux_async.cli._app import cli
from flux_async.cli._batch import is_final
from flux_async.cli._demo import demo_jobs
from flux_async.emulator import DEFAULT_API_KEY, Duration, EmulatorProcess, Fault, Scenario

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"
KEY_VARS = (
    "TOAPIS_API_KEY",
    "APIMART_API_KEY",
    "BFL_API_KEY",
    "FLUX_ASYNC_API_KEY",
    "FLUX_ASYNC_BASE_URL",
)


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario()) as emu:
        yield emu


@pytest.fixture
def emu(emulator_process: EmulatorProcess) -> EmulatorProcess:
    """The shared emulator, reset to a healthy, instant scenario with zeroed counters."""
    emulator_process.set_scenario(Scenario())
    emulator_process.reset()
    return emulator_process


def invoke(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    clean: dict[str, str | None] = dict.fromkeys(KEY_VARS)
    clean.update(env or {})
    return CliRunner().invoke(cli, args, env=clean, catch_exceptions=False)


def connect(emu: EmulatorProcess, provider: str = "toapis") -> list[str]:
    return [
        "--provider",
        provider,
        "--base-url",
        emu.base_url(provider),
        "--api-key",
        DEFAULT_API_KEY,
    ]


def results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def journal_entries(out: Path) -> list[dict[str, Any]]:
    """The acceptances in a batch's ledger (``journal.jsonl``): one per accepted task."""
    records = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()[1:]]
    return [r for r in records if r["op"] == "accept"]


def is_image(path: Path) -> bool:
    head = path.read_bytes()[:8]
    return head.startswith(PNG) or head.startswith(JPEG)


# -- generate, status, upload ------------------------------------------------------------------


def test_generate_downloads_and_prints_the_paths(emu: EmulatorProcess, tmp_path: Path) -> None:
    result = invoke(["generate", "a red fox", "--size", "1:1", "-o", str(tmp_path), *connect(emu)])
    assert result.exit_code == 0, result.output
    paths = [Path(p) for p in result.stdout.split()]
    assert len(paths) == 1
    assert paths[0].parent == tmp_path
    assert is_image(paths[0])
    assert emu.stats()["requests"]["submit"] == 1


def test_generate_json_on_bfl_then_status_by_polling_url(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    result = invoke(
        ["generate", "a lighthouse", "--json", "-o", str(tmp_path), *connect(emu, "bfl")]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert [Path(f).exists() for f in info["files"]] == [True]
    tasks = emu.stats()["tasks"]
    assert [t["id"] for t in tasks] == [info["task_id"]]

    # BFL tasks are found by their polling URL; the emulator's is regional (bfl-us1).
    polling_url = f"{emu.url}/bfl-us1/v1/get_result?id={info['task_id']}"
    status = invoke(["status", polling_url, "--json", *connect(emu, "bfl")])
    assert status.exit_code == 0, status.output
    state = json.loads(status.stdout)
    assert (state["task_id"], state["status"]) == (info["task_id"], "succeeded")
    assert len(state["images"]) == 1


def test_status_of_a_failed_task_exits_1(emu: EmulatorProcess, tmp_path: Path) -> None:
    emu.set_scenario(Scenario(failure_rate=1.0))
    generated = invoke(["generate", "doomed", "-o", str(tmp_path), *connect(emu)])
    assert generated.exit_code == 1
    assert "TaskFailedError" in generated.stderr
    task_id = emu.stats()["tasks"][0]["id"]
    status = invoke(["status", task_id, *connect(emu)])
    assert status.exit_code == 1
    assert status.stdout.startswith(f"{task_id}: failed")
    assert "failure:" in status.stdout


def test_status_downloads_a_finished_task(emu: EmulatorProcess, tmp_path: Path) -> None:
    first = invoke(
        ["generate", "a whale", "--json", "-o", str(tmp_path / "a"), *connect(emu, "apimart")]
    )
    task_id = json.loads(first.stdout)["task_id"]
    status = invoke(["status", task_id, "-o", str(tmp_path / "b"), *connect(emu, "apimart")])
    assert status.exit_code == 0, status.output
    files = list((tmp_path / "b").iterdir())
    assert len(files) == 1
    assert files[0].name.startswith(task_id)
    assert is_image(files[0])


def test_upload_prints_the_url(emu: EmulatorProcess, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(PNG + b"\x00" * 100)
    result = invoke(["upload", str(image), *connect(emu, "apimart")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("http://127.0.0.1:")
    assert emu.stats()["requests"]["upload"] == 1


def test_upload_on_bfl_is_a_usage_error(emu: EmulatorProcess, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(PNG + b"\x00" * 100)
    result = invoke(["upload", str(image), *connect(emu, "bfl")])
    assert result.exit_code == 2
    assert "inline" in result.stderr


def test_invalid_request_is_a_usage_error_before_any_request(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    result = invoke(["generate", "x", "--size", "5:4", "-o", str(tmp_path), *connect(emu)])
    assert result.exit_code == 2
    assert "size" in result.stderr
    assert sum(emu.stats()["requests"].values()) == 0


# -- keys and endpoints ------------------------------------------------------------------------


def test_missing_key_names_the_variables(tmp_path: Path) -> None:
    result = invoke(["generate", "x", "-o", str(tmp_path), "--provider", "bfl"])
    assert result.exit_code == 2
    assert "BFL_API_KEY" in result.stderr
    assert "FLUX_ASYNC_API_KEY" in result.stderr


def test_key_and_base_url_from_the_environment(emu: EmulatorProcess, tmp_path: Path) -> None:
    env = {"APIMART_API_KEY": DEFAULT_API_KEY, "FLUX_ASYNC_BASE_URL": emu.base_url("apimart")}
    result = invoke(["generate", "x", "-o", str(tmp_path), "--provider", "apimart"], env=env)
    assert result.exit_code == 0, result.output
    assert emu.stats()["by_provider"]["apimart"]["submit"] == 1


def test_a_rejected_key_is_never_printed(emu: EmulatorProcess, tmp_path: Path) -> None:
    secret = "sk-not-the-right-one-4711"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    env = {"TOAPIS_API_KEY": secret, "FLUX_ASYNC_BASE_URL": emu.base_url("toapis")}
    one = invoke(["generate", "x", "-o", str(tmp_path), "-vv"], env=env)
    many = invoke(["batch", str(prompts), "-o", str(tmp_path / "out"), "--json", "-vv"], env=env)
    assert one.exit_code == 1
    assert "AuthenticationError" in one.stderr
    assert many.exit_code == 1
    assert "AuthenticationError" in many.stderr
    written = "".join(p.read_text() for p in (tmp_path / "out").iterdir())
    for text in (one.output, many.output, written):
        assert secret not in text


# -- batch ---------------------------------------------------------------------------------------


def test_batch_of_50_with_failures_accounts_for_each_exactly_once(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    emu.set_scenario(
        Scenario(
            seed=5,
            failure_rate=0.2,
            moderation_rate=0.1,
            duration=Duration.fixed(0.05),
            blocked_terms=("blocked",),
        )
    )
    lines = []
    for i in range(50):
        prompt = f"blocked prompt {i}" if i in (7, 31) else f"prompt number {i}"
        model = ("flux-kontext-pro", "flux-kontext-max", "grok-4-1-image")[i % 3]
        lines.append(json.dumps({"prompt": prompt, "model": model}))
    source = tmp_path / "jobs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"

    result = invoke(
        ["batch", str(source), "-o", str(out), "--json", "--concurrency", "8", *connect(emu)]
    )

    assert result.exit_code == 1, result.output
    records = results(out)
    assert sorted(r["index"] for r in records) == list(range(50))
    assert [r["line"] for r in sorted(records, key=lambda r: r["index"])] == list(range(1, 51))
    # Each outcome matches what the emulator decided for that task.
    outcome = {t["id"]: t["outcome"] for t in emu.stats()["tasks"]}
    assert len(outcome) == 48  # the two blocked prompts were refused at submit: no task
    for record in records:
        if record["task_id"] is None:
            assert record["index"] in (7, 31)
            assert record["error"]["kind"] == "BadRequestError"
            continue
        assert (record["status"] == "succeeded") == (outcome.pop(record["task_id"]) == "succeeded")
        if record["status"] == "succeeded":
            files = [out / f for f in record["files"]]
            assert [
                f.name.startswith(f"{record['index']}-{record['task_id']}.") for f in files
            ] == [True]
            assert is_image(files[0])
        else:
            assert record["error"]["kind"] in ("TaskFailedError", "ModerationError")
    assert outcome == {}  # every task is in results.jsonl
    failed = [r for r in records if r["status"] != "succeeded"]
    summary = json.loads(result.stdout)
    assert summary["jobs"] == 50
    assert summary["failed"] == len(failed) > 2
    assert summary["succeeded"] == 50 - len(failed) > 0
    assert sum(summary["failures"].values()) == len(failed)
    assert summary["exit_code"] == 1
    assert summary["requests"] >= 48 * 2
    # Every accepted task was journaled, once.
    assert sorted(e["ref"]["task_id"] for e in journal_entries(out)) == sorted(
        r["task_id"] for r in records if r["task_id"]
    )


def test_bad_input_lists_every_bad_line_and_submits_nothing(
    emu: EmulatorProcess, tmp_path: Path
) -> None:
    source = tmp_path / "jobs.jsonl"
    source.write_text(
        '{"prompt": "fine"}\n'
        '{"prompt": "bad size", "size": "7:5"}\n'
        '{"prompt": "fine"}\n'
        '{"prompt": "grok n", "model": "grok-4-1-image", "n": 3}\n'
        "not json\n"
        '{"prompt": "missing file", "images": "nope.png"}\n'
    )
    out = tmp_path / "out"
    result = invoke(["batch", str(source), "-o", str(out), *connect(emu)])
    assert result.exit_code == 2
    assert f"{source}:line 2: size:" in result.stderr
    assert f"{source}:line 4: n:" in result.stderr
    assert f"{source}:line 5: not valid JSON" in result.stderr
    assert f"{source}:line 6: images[0]:" in result.stderr
    assert "line 1:" not in result.stderr
    assert "4 bad line(s)" in result.stderr
    assert "nothing was submitted" in result.stderr
    assert sum(emu.stats()["requests"].values()) == 0
    assert not out.exists()


def test_unknown_file_type_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "jobs.yaml"
    source.write_text("- a\n")
    result = invoke(["batch", str(source), "-o", str(tmp_path / "o"), "--api-key", "k"])
    assert result.exit_code == 2
    assert "unknown file type" in result.stderr


def test_csv_batch_with_a_local_image_uploads_it_once(emu: EmulatorProcess, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cat.png").write_bytes(PNG + b"\x00" * 64)
    source = tmp_path / "jobs.csv"
    source.write_text(
        "prompt,images,size\n"
        "make it night,in/cat.png,\n"
        "make it day,in/cat.png,1:1\n"
        "no image,,16:9\n"
    )
    out = tmp_path / "out"
    result = invoke(["batch", str(source), "-o", str(out), "-q", *connect(emu)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # --quiet: no summary
    assert [r["status"] for r in results(out)] == ["succeeded"] * 3
    stats = emu.stats()
    assert stats["requests"]["upload"] == 1  # the same bytes are uploaded once
    assert stats["requests"]["submit"] == 3


def test_an_existing_batch_needs_resume(emu: EmulatorProcess, tmp_path: Path) -> None:
    source = tmp_path / "p.txt"
    source.write_text("one\ntwo\n")
    out = tmp_path / "out"
    assert invoke(["batch", str(source), "-o", str(out), *connect(emu)]).exit_code == 0
    again = invoke(["batch", str(source), "-o", str(out), *connect(emu)])
    assert again.exit_code == 2
    assert "--resume" in again.stderr
    assert emu.stats()["requests"]["submit"] == 2


def test_resume_of_a_finished_batch_submits_nothing(emu: EmulatorProcess, tmp_path: Path) -> None:
    source = tmp_path / "p.txt"
    source.write_text("one\ntwo\nthree\n")
    out = tmp_path / "out"
    first = invoke(
        ["batch", str(source), "-o", str(out), "--resume", *connect(emu)]
    )  # starts fresh
    assert first.exit_code == 0, first.output
    again = invoke(["batch", str(source), "-o", str(out), "--resume", "--json", *connect(emu)])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["previous_done"], summary["submitted"], summary["reattached"]) == (3, 0, 0)
    assert emu.stats()["requests"]["submit"] == 3
    assert len(results(out)) == 3


def test_resume_refuses_a_changed_input_or_options(emu: EmulatorProcess, tmp_path: Path) -> None:
    source = tmp_path / "p.txt"
    source.write_text("one\ntwo\n")
    out = tmp_path / "out"
    assert invoke(["batch", str(source), "-o", str(out), *connect(emu)]).exit_code == 0
    other_model = invoke(
        [
            "batch",
            str(source),
            "-o",
            str(out),
            "--resume",
            "--model",
            "flux-kontext-max",
            *connect(emu),
        ]
    )
    assert other_model.exit_code == 2
    assert "options" in other_model.stderr
    source.write_text("one\ntwo\nthree\n")
    changed = invoke(["batch", str(source), "-o", str(out), "--resume", *connect(emu)])
    assert changed.exit_code == 2
    assert "input file changed" in changed.stderr
    assert emu.stats()["requests"]["submit"] == 2


def test_batch_summary_table(emu: EmulatorProcess, tmp_path: Path) -> None:
    source = tmp_path / "p.txt"
    source.write_text("one\n# a comment\n\ntwo\n")
    result = invoke(["batch", str(source), "-o", str(tmp_path / "out"), *connect(emu)])
    assert result.exit_code == 0, result.output
    for row in ("jobs", "succeeded", "requests per job", "retries", "429 answers", "wall time"):
        assert row in result.stdout
    assert [r["line"] for r in results(tmp_path / "out")] in ([1, 4], [4, 1])


# -- demo ---------------------------------------------------------------------------------------


def test_demo_jobs_are_valid_and_cover_every_route(tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(PNG + b"\x00" * 64)
    jobs = demo_jobs(24, image)
    assert len(jobs) == 24
    for job in jobs:
        catalog.validate(job.request, job.provider)
    routes = {(job.provider, job.request.model) for job in jobs}
    assert routes == {
        (p, m) for p in catalog.PROVIDERS for m in catalog.models_for(p) if m != "grok-4-2-image"
    }
    assert sum(job.expected_failure for job in jobs) == 1
    assert any(job.request.images for job in jobs if job.provider != "bfl")
    assert any(job.request.images for job in jobs if job.provider == "bfl")


def test_demo_runs_all_three_providers_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = invoke(["demo", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["jobs"], summary["succeeded"], summary["failures"]) == (
        24,
        23,
        {"ModerationError": 1},
    )
    assert (summary["expected_failures"], summary["unexpected_failures"]) == (1, 0)
    for provider in ("toapis", "apimart", "bfl"):
        records = results(out / provider)
        assert records
        for record in records:
            for name in record["files"]:
                assert is_image(out / provider / name)
    images = [
        p for p in out.rglob("*") if p.suffix in (".png", ".jpg", ".jpeg") and p.name != "input.png"
    ]
    assert len(images) >= 23


def test_help_lists_every_command() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("generate", "batch", "status", "upload", "emulator", "demo"):
        assert command in result.stdout


# -- commands run as processes -------------------------------------------------------------------


def test_emulator_command_serves_until_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flux_async.cli",
            "emulator",
            "--port",
            "0",
            "--json",
            "--scenario",
            '{"seed": 3}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the emulator did not start"
        info = json.loads(proc.stdout.readline())
        assert info["api_key"] == DEFAULT_API_KEY
        generated = invoke(
            [
                "generate",
                "x",
                "-o",
                str(tmp_path),
                "--base-url",
                f"{info['url']}/toapis",
                "--api-key",
                info["api_key"],
            ]
        )
        assert generated.exit_code == 0, generated.output
        with urllib.request.urlopen(f"{info['url']}/_emulator/stats", timeout=10) as response:
            assert json.loads(response.read())["requests"]["submit"] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_emulator_command_rejects_a_bad_scenario() -> None:
    result = invoke(["emulator", "--scenario", '{"no_such_field": 1}'])
    assert result.exit_code == 2
    assert "no_such_field" in result.stderr


def test_without_the_cli_extra_the_command_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['rich'] = None; from flux_async.cli import main; main(['--help'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "pip install 'flux-async[cli]'" in proc.stderr


# -- which failures are settled ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "with_task", "final"),
    [
        (TaskFailedError("boom", task_id="t"), True, True),
        (ModerationError("no", task_id="t"), True, True),
        (TaskNotFoundError("gone", task_id="t"), True, True),
        (TaskTimeoutError("slow", task_id="t"), True, False),
        (TransportError("down"), True, False),
        (AuthenticationError("key", status=401), True, False),
        (ServerError("oops", status=503), True, False),
        (DownloadError("expired", url="x"), True, False),
        # Gone for good once a fresh status check gave no working URL: settled.
        (ResultExpiredError("expired", url="x"), True, True),
        (BadRequestError("policy", status=422), False, True),
        # In doubt: no result line; the ledger keeps the intent and --resume reports it again.
        (SubmissionUncertainError("maybe", provider="bfl", model="m"), False, False),
        (TransportError("refused"), False, False),
        (RateLimitError("slow down"), False, False),
    ],
)
def test_only_settled_failures_get_a_result_line(
    error: Exception, with_task: bool, final: bool
) -> None:
    assert is_final(error, with_task=with_task) is final


@pytest.mark.parametrize("flag", [[], ["--no-report"]])
def test_a_batch_writes_its_report_unless_told_not_to(emu: EmulatorProcess, tmp_path: Path, flag: list[str]) -> None:
    emu.set_scenario(Scenario(seed=2, duration=Duration.fixed(0.02)))
    source = tmp_path / "jobs.txt"
    source.write_text("a <b>bold</b> fox\na calm lake\n")
    out = tmp_path / "out"
    result = invoke(["batch", str(source), "-o", str(out), "--json", *flag, *connect(emu)])
    assert result.exit_code == 0, result.output
    report = out / "report.html"
    if flag:
        assert not report.exists()
    else:
        page = report.read_text()
        assert page.count("<figure") == 2
        assert "a &lt;b&gt;bold&lt;/b&gt; fox" in page  # the prompt, escaped


def test_retry_failed_sends_again_only_the_chosen_kinds_under_new_keys(emu: EmulatorProcess, tmp_path: Path) -> None:
    emu.set_scenario(Scenario(seed=11, failure_rate=0.3, moderation_rate=0.3, duration=Duration.fixed(0.02)))
    source = tmp_path / "jobs.txt"
    source.write_text("".join(f"retry prompt {i}\n" for i in range(20)))
    out = tmp_path / "out"
    args = ["batch", str(source), "-o", str(out), "--json", "--no-report", *connect(emu)]
    first = invoke(args)
    assert first.exit_code == 1
    kinds = {r["index"]: (r["error"] or {}).get("kind") for r in results(out)}
    moderated = {i for i, kind in kinds.items() if kind == "ModerationError"}
    failed = {i for i, kind in kinds.items() if kind == "TaskFailedError"}
    assert moderated
    assert failed
    submits = emu.stats()["requests"]["submit"]

    emu.set_scenario(Scenario(seed=12, duration=Duration.fixed(0.02)))  # the service recovered
    assert invoke([*args, "--resume", "--retry-failed", "bogus"]).exit_code == 2
    assert invoke([*args, "--retry-failed", "moderation"]).exit_code == 2  # only with --resume
    second = invoke([*args, "--resume", "--retry-failed", "moderation"])
    assert second.exit_code == 1  # the failed ones are still failed
    summary = json.loads(second.stdout)
    assert (summary["submitted"], summary["succeeded"]) == (len(moderated), len(moderated))
    assert emu.stats()["requests"]["submit"] == submits + len(moderated)
    latest = {r["index"]: r for r in results(out)}  # a later line supersedes
    assert {i for i, r in latest.items() if r["status"] == "succeeded"} == set(range(20)) - failed
    assert all(latest[i].get("attempt") == 1 for i in moderated)

    third = invoke([*args, "--resume", "--retry-failed", "all"])
    assert third.exit_code == 0, third.output
    assert emu.stats()["requests"]["submit"] == submits + len(moderated) + len(failed)
    assert emu.stats()["duplicate_submits"] == 0
    assert {r["index"] for r in results(out) if r["status"] == "succeeded"} == set(range(20))
    # Nothing left to retry: a further run sends nothing.
    fourth = invoke([*args, "--resume", "--retry-failed", "all"])
    assert fourth.exit_code == 0
    assert emu.stats()["requests"]["submit"] == submits + len(moderated) + len(failed)


@pytest.mark.parametrize("spoilt", [1, 10])
def test_an_expired_result_url_is_asked_for_once_more_then_settled(
    emu: EmulatorProcess, tmp_path: Path, spoilt: int
) -> None:
    emu.set_scenario(Scenario(seed=3, duration=Duration.fixed(0.02)))
    emu.inject(Fault(endpoint="download", kind="expired", count=spoilt))
    source = tmp_path / "one.txt"
    source.write_text("an expiring fox\n")
    out = tmp_path / "out"
    args = ["batch", str(source), "-o", str(out), "--json", "--no-report", *connect(emu)]
    result = invoke(args)
    (record,) = results(out)
    requests = emu.stats()["requests"]
    if spoilt == 1:  # a fresh status check, and the second download works
        assert result.exit_code == 0, result.output
        assert record["status"] == "succeeded"
        assert requests["download"] == 2
    else:  # gone for good: a result line, so --resume leaves it alone
        assert result.exit_code == 1
        assert (record["status"], record["error"]["kind"]) == ("failed", "ResultExpiredError")
        assert requests["download"] == 2
        again = invoke([*args, "--resume"])
        assert again.exit_code == 1
        assert emu.stats()["requests"] == requests  # nothing polled or fetched again


def test_provider_text_cannot_drive_the_terminal() -> None:
    import io

    from rich.console import Console

    from flux_async.cli._runtime import Output, exit_on_error

    buffer = io.StringIO()
    out = Output(quiet=False, json=False, err=Console(file=buffer, force_terminal=True, width=200, highlight=False))
    hostile = "task failed: \x1b]0;owned\x07\x1b[2J\x9bA\nsecond line"
    with pytest.raises(SystemExit), exit_on_error(out):
        raise TaskFailedError(hostile, task_id="t")
    out.error(hostile)
    shown = buffer.getvalue()
    assert "\x07" not in shown
    assert "\x9b" not in shown
    assert "]0;owned" in shown  # the text is still there to read, its control bytes escaped
    assert "\\x1b]0;owned\\x07" in shown
    assert "\nsecond line" in shown  # plain newlines stay
