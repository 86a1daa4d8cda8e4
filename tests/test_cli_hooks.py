"""The library hook the resumable batch is built on: ``as_completed(..., on_submit=...)``."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from flux_async import GenerationRequest, TaskRef
from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario
from flux_async.session import Session

pytestmark = pytest.mark.anyio


@pytest.fixture
def flux_emulator_scenario() -> Scenario:
    return Scenario(seed=4, duration=Duration.fixed(0.05))


def requests(count: int) -> list[GenerationRequest]:
    return [GenerationRequest(model="flux-kontext-pro", prompt=f"prompt {i}") for i in range(count)]


@pytest.mark.parametrize("provider", ["toapis", "bfl"])
async def test_on_submit_names_every_task_before_it_is_polled(flux_emulator: Emulator, provider: str) -> None:
    seen: list[tuple[int, TaskRef, Any]] = []

    def record(index: int, ref: TaskRef) -> None:
        task = flux_emulator.task(ref.task_id)
        assert task is not None
        seen.append((index, ref, task["polls"]))

    async with Session(provider, api_key=DEFAULT_API_KEY, base_url=flux_emulator.base_url(provider)) as session:
        outcomes = [o async for o in session.as_completed(requests(6), on_submit=record)]

    assert sorted(index for index, _, _ in seen) == list(range(6))
    assert [polls for _, _, polls in seen] == [0] * 6  # called before anything waited on the task
    assert {index: ref.task_id for index, ref, _ in seen} == {o.index: o.task_id for o in outcomes}
    for _, ref, _ in seen:
        assert ref.provider == provider
        assert TaskRef.from_dict(ref.to_dict()) == ref
        assert (ref.polling_url is not None) == (provider == "bfl")


async def test_a_failing_on_submit_is_logged_and_the_jobs_go_on(
    flux_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(index: int, ref: TaskRef) -> None:
        raise OSError("disk full")

    async with Session("toapis", api_key=DEFAULT_API_KEY, base_url=flux_emulator.base_url("toapis")) as session:
        with caplog.at_level(logging.ERROR, logger="flux_async"):
            outcomes = [o async for o in session.as_completed(requests(3), on_submit=broken)]

    assert sorted(o.index for o in outcomes) == [0, 1, 2]
    assert all(o.ok for o in outcomes)
    failures = [r for r in caplog.records if "on_submit failed" in r.getMessage()]
    assert len(failures) == 3
