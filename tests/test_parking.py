"""The parking place of the library's own worker pools: one wake-up wakes one waiter."""

from __future__ import annotations

import asyncio

import pytest

from flux_async._parking import Parking


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_wake_one_wakes_exactly_one_waiter_in_parking_order() -> None:
    parking = Parking()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await parking.wait()
        woken.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await _settle()
    assert woken == []
    assert parking.wake_one()
    await _settle()
    assert woken == [0]
    parking.wake_all()
    await _settle()
    assert sorted(woken) == [0, 1, 2]
    assert not parking.wake_one()  # nobody left
    await asyncio.gather(*tasks)


@pytest.mark.anyio
async def test_a_cancelled_waiter_is_skipped() -> None:
    parking = Parking()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await parking.wait()
        woken.append(n)

    first = asyncio.create_task(waiter(0))
    second = asyncio.create_task(waiter(1))
    await _settle()
    first.cancel()
    await _settle()
    assert parking.wake_one()  # the cancelled one does not count
    await _settle()
    assert woken == [1]
    assert first.cancelled()
    await second
