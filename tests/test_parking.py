"""The parking place of the library's own worker pools: one wake-up wakes one waiter."""

from __future__ import annotations

import asyncio

import pytest

from flux_async._parking import Parking, Slots


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


@pytest.mark.anyio
async def test_slots_are_taken_in_waiting_order_and_never_lost_to_a_cancelled_waiter() -> None:
    slots = Slots(1)
    await slots.acquire()  # the one slot is taken
    assert slots.free == 0
    got: list[int] = []

    async def taker(n: int) -> None:
        await slots.acquire()
        got.append(n)

    tasks = [asyncio.create_task(taker(n)) for n in range(3)]
    await _settle()
    tasks[1].cancel()  # cancelled while waiting: skipped
    await _settle()
    slots.release()  # handed to the first waiter, not to the free count
    assert slots.free == 0
    await _settle()
    assert got == [0]
    slots.release()  # the second was cancelled: the third gets it
    await _settle()
    assert got == [0, 2]
    # Handed a slot and cancelled before it ran: the slot goes on, to the free count here.
    waiter = asyncio.create_task(taker(3))
    await _settle()
    slots.release()
    waiter.cancel()
    await _settle()
    assert waiter.cancelled()
    assert got == [0, 2]
    assert slots.free == 1
    slots.release()
    slots.release()
    assert slots.free == 3
    await asyncio.gather(*tasks, return_exceptions=True)
