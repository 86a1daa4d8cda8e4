"""Several real OS processes sharing one account through Redis, each a ``Session`` with a
``RedisCoordinator`` (``_fleet_session_worker.py``) against one emulator process: the account's
caps, a ``kill -9`` whose tasks the others adopt, the shared budget and one idempotency key
submitted by two processes at once.

The workers open their sessions, say ``ready`` and wait for one start signal (a Redis list) so
that they really race. The tests wait on the workers' output lines, files and counters with a
bound, never on a fixed sleep; the emulator's counters, not the workers, say what was sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flux_async.emulator import Duration, EmulatorProcess, Scenario

_WORKER = str(Path(__file__).with_name("_fleet_session_worker.py"))
MAX = "flux-kontext-max"
PRO = "flux-kontext-pro"


class Worker:
    """One ``_fleet_session_worker.py`` process; its JSON lines are collected by a thread."""

    def __init__(self, spec: dict[str, Any], stderr: Path) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self._stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, _WORKER, json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env,
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.events.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "exit"})
            self._changed.notify_all()

    def of(self, event: str) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e["event"] == event]

    def wait(self, event: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The first ``count`` lines of ``event``, once printed (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(found := [e for e in self.events if e["event"] == event]) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.events and self.events[-1]["event"] == "exit"):
                    raise AssertionError(
                        f"worker: no {count} {event!r} lines; stderr:\n{self.stderr()}"
                    )
                self._changed.wait(left)
            return found[:count]

    def report(self, timeout: float = 45.0) -> dict[str, Any]:
        (report,) = self.wait("report", timeout=timeout)
        assert self.proc.wait(timeout=timeout) == 0, self.stderr()
        return report

    def stderr(self) -> str:
        self._stderr.flush()
        return self._stderr_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(Scenario()) as emu:
        yield emu


@pytest.fixture
def start(
    emulator_process: EmulatorProcess, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    """Start a worker on the emulator and Redis of the test; every one is stopped at the end."""
    workers: list[Worker] = []

    def start(
        inputs: list[tuple[str, str]], model: str = PRO, go: str = "go", **spec: Any
    ) -> Worker:
        full = {
            "redis": redis_url, "base_url": emulator_process.base_url("bfl"), "model": model,
            "inputs": inputs, "go": go, **spec,
        }  # fmt: skip
        worker = Worker(full, tmp_path / f"worker-{len(workers)}.stderr")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


def emulator(emu: EmulatorProcess, duration: Duration) -> EmulatorProcess:
    emu.set_scenario(Scenario(seed=5, duration=duration))
    emu.reset()
    return emu


def go(redis_url: str, n: int, key: str = "go") -> None:
    """Release ``n`` waiting workers with one command."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.rpush(key, *(["go"] * n))
    finally:
        client.close()


def inputs(worker: int, n: int) -> list[tuple[str, str]]:
    return [(f"{worker}.{i}", f"worker {worker} prompt {i}") for i in range(n)]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # files written by other processes: nothing to wait on but them


def test_four_processes_never_pass_the_account_cap(
    emulator_process: EmulatorProcess, redis_url: str, start: Callable[..., Worker]
) -> None:
    # BFL allows 6 active flux-kontext-max tasks per account; four processes share them.
    emu = emulator(emulator_process, Duration.uniform(0.1, 0.2))
    workers = [start(inputs(w, 50), model=MAX) for w in range(4)]
    for worker in workers:
        worker.wait("ready")
    go(redis_url, 4)
    reports = [worker.report() for worker in workers]
    data = emu.stats(tasks=False)
    assert [r["ok"] for r in reports] == [50] * 4, [r["errors"][:3] for r in reports]
    assert data["tasks_created"] == 200
    assert data["requests"]["submit"] == 200
    assert data["rate_limited"]["cap"] == 0
    # The cap was reached (the processes contended for it) and never passed.
    assert data["active_high_water"][f"bfl/{MAX}"] == 6


def test_the_tasks_of_a_killed_process_are_adopted_and_every_input_gets_one_result(
    emulator_process: EmulatorProcess, redis_url: str, start: Callable[..., Worker], tmp_path: Path
) -> None:
    # Jobs of 1.5 s, six in flight per worker: the SIGKILL lands while the victim's first six
    # tasks run and before it reads its other six inputs.
    emu = emulator(emulator_process, Duration.fixed(1.5))
    adopt = tmp_path / "adopted"
    adopt.mkdir()
    common = {"lease_ttl": 1.0, "max_outstanding": 6, "adopt_download_to": str(adopt)}
    shares = {w: inputs(w, 12) for w in range(3)}
    own = {w: tmp_path / f"own-{w}" for w in range(3)}
    workers = [
        start(shares[w], download_to=str(own[w]), linger=None if w == 0 else "stop", **common)
        for w in range(3)
    ]
    victim, survivors = workers[0], workers[1:]
    for worker in workers:
        worker.wait("ready")
    go(redis_url, 3)
    accepted = victim.wait("accepted", count=6)
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL
    orphans = {e["input"]: e["task_id"] for e in accepted}
    assert len(victim.of("accepted")) == 6  # its other six inputs were never submitted
    assert not own[0].exists() or not any(own[0].iterdir())  # killed before any task ended

    # The caller resubmits what the victim never sent: a fresh worker takes those inputs.
    unsent = [item for item in shares[0] if item[0] not in orphans]
    assert len(unsent) == 6
    own[3] = tmp_path / "own-3"
    replacement = start(unsent, go="go-again", download_to=str(own[3]), linger="stop", **common)
    replacement.wait("ready")
    go(redis_url, 1, "go-again")

    # The victim's lease runs out (1 s) and a live worker adopts, polls and downloads each task.
    wait_for(lambda: len(list(adopt.iterdir())) == 6, "the orphans' images in the adopt directory")
    for worker in (*survivors, replacement):
        worker.wait("done")
    go(redis_url, 3, "stop")
    reports = {
        w: worker.report() for w, worker in zip((1, 2, 3), (*survivors, replacement), strict=True)
    }
    data = emu.stats()

    # Every input has exactly one task: its owner's, the victim's (adopted) or the replacement's.
    by_input = dict(orphans)
    for w, report in reports.items():
        assert report["ok"] == len(report["tasks"]) == (6 if w == 3 else 12), report["errors"]
        assert not by_input.keys() & report["tasks"].keys()
        by_input.update(report["tasks"])
    assert sorted(by_input) == sorted(i for share in shares.values() for i, _ in share)
    created = {t["id"] for t in data["tasks"]}
    assert len(created) == data["tasks_created"] == 36
    assert sorted(by_input.values()) == sorted(created)  # one input per task, none lost
    # Zero duplicate submissions: one POST per task, the adopted ones never sent again.
    assert data["duplicate_submits"] == 0
    assert data["requests"]["submit"] == 36
    # Every task was adopted by one worker or finished by its owner, and downloaded once.
    assert sum(r["adopted"] for r in reports.values()) == 6
    assert sorted(p.name.split(".")[0] for p in adopt.iterdir()) == sorted(orphans.values())
    for w in (1, 2, 3):
        names = {p.name.split(".")[0].split("-", 1)[1] for p in own[w].iterdir()}
        assert names == set(reports[w]["tasks"].values())
    assert all(t["downloads"] == 1 for t in data["tasks"]), [t["downloads"] for t in data["tasks"]]


def test_a_budget_is_shared_by_four_processes(
    emulator_process: EmulatorProcess, redis_url: str, start: Callable[..., Worker]
) -> None:
    # $2.00 for the account, Kontext pro at $0.04: 50 tasks whichever processes make them,
    # out of 80 requests.
    emu = emulator(emulator_process, Duration.fixed(0.05))
    workers = [start(inputs(w, 20), max_spend_usd=2.0) for w in range(4)]
    for worker in workers:
        worker.wait("ready")
    go(redis_url, 4)
    reports = [worker.report() for worker in workers]
    data = emu.stats(tasks=False)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        spend = client.hgetall("flux-async:{default}:spend:bfl")
    finally:
        client.close()
    assert data["tasks_created"] == 50
    assert data["requests"]["submit"] == 50
    assert sum(r["ok"] for r in reports) == 50
    for report in reports:
        # A worker that did not get all its jobs was stopped by the budget and nothing else.
        if report["ok"] < 20:
            assert report["errors"], report
            assert all("BudgetExceededError" in e for e in report["errors"]), report
    assert sum(bool(r["errors"]) for r in reports) >= 1
    assert int(spend["settled"]) + int(spend.get("reserved", 0)) <= 2_000_000


def test_one_idempotency_key_from_two_processes_at_once_is_one_task(
    emulator_process: EmulatorProcess, redis_url: str, start: Callable[..., Worker]
) -> None:
    emu = emulator(emulator_process, Duration.fixed(0.2))
    same = [("order", "a kite over the sea")]
    workers = [start(same, idempotency_key="order-1234") for _ in range(2)]
    for worker in workers:
        worker.wait("ready")
    go(redis_url, 2)  # one signal releases both
    reports = [worker.report() for worker in workers]
    data = emu.stats(tasks=False)
    assert data["tasks_created"] == 1
    assert data["requests"]["submit"] == 1
    assert reports[0]["tasks"]["order"] == reports[1]["tasks"]["order"]
    assert [r["ok"] for r in reports] == [1, 1]
    assert sorted(r["deduplicated"] for r in reports) == [0, 1]
