"""``flux-async batch --webhook-listen``: the command receives the provider's webhooks itself,
so each job is collected with one status request. Usage mistakes exit 2 before anything is
sent. Against an emulator process; the counters tell, no clock."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from flux_async.cli._app import cli
from flux_async.emulator import DEFAULT_API_KEY, Duration, EmulatorProcess, Scenario

JOBS = 30
SECRET = "cli-webhook-secret"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario(seed=4, duration=Duration.fixed(0.3))) as process:
        yield process


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"a kite number {i}\n" for i in range(JOBS)))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def batch(emu: EmulatorProcess, prompts: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    args = [
        "batch", str(prompts), "-o", str(out), "--json", "--provider", "bfl",
        "--base-url", emu.base_url("bfl"), "--api-key", DEFAULT_API_KEY, *extra,
    ]  # fmt: skip
    result = CliRunner(env=env).invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_a_batch_that_listens_for_webhooks_polls_each_job_once(
    emu: EmulatorProcess, prompts: Path, tmp_path: Path
) -> None:
    emu.reset()
    listen = f"127.0.0.1:{free_port()}"
    code, stdout, stderr = batch(
        emu, prompts, tmp_path / "out", "--webhook-listen", listen,
        env={"FLUX_ASYNC_WEBHOOK_SECRET": SECRET},
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["succeeded"] == JOBS
    stats = emu.stats()
    assert stats["webhooks"]["delivered"] == JOBS
    assert stats["requests"]["poll"] == JOBS  # the confirming poll of each, nothing more
    assert SECRET not in stdout + stderr


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--webhook-url", "https://hooks.example/x"], "--webhook-url needs --webhook-listen"),
        (["--webhook-listen", "nowhere", "--webhook-secret", SECRET], "HOST:PORT"),
        (["--webhook-listen", "127.0.0.1:99999", "--webhook-secret", SECRET], "HOST:PORT"),
        (["--webhook-listen", "127.0.0.1:8080"], "--webhook-secret"),
        (["--webhook-listen", "127.0.0.1:8080", "--webhook-url", "ftp://x", "--webhook-secret", SECRET], "webhook_url"),
    ],
)
def test_webhook_usage_mistakes_exit_2_and_send_nothing(
    emu: EmulatorProcess, prompts: Path, tmp_path: Path, extra: list[str], needle: str
) -> None:
    emu.reset()
    code, _, stderr = batch(emu, prompts, tmp_path / "out", *extra)
    assert code == 2, stderr
    assert needle in stderr
    assert "Traceback" not in stderr
    assert emu.stats()["requests"]["submit"] == 0


def test_a_port_in_use_exits_2_before_anything_is_sent(
    emu: EmulatorProcess, prompts: Path, tmp_path: Path
) -> None:
    emu.reset()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, stderr = batch(
            emu, prompts, tmp_path / "out", "--webhook-listen", f"127.0.0.1:{port}", "--webhook-secret", SECRET
        )
    assert code == 2, stderr
    assert "cannot listen" in stderr
    assert emu.stats()["requests"]["submit"] == 0
