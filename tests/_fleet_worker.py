"""One worker process of the multi-process coordinator tests: ``python _fleet_worker.py URL MODE``.

``share``: waits for its go (a Redis list), then races the other workers for slots (30
acquirers, 6 per model) and for the budget (30 reserves of $0.04 under $2.00), and prints what
it saw as one JSON line. ``hold``: takes 6 slots of ``held-model`` with a short lease, prints
``held`` and waits to be killed.
"""

from __future__ import annotations

import json
import sys

import anyio
from redis.asyncio import from_url

from flux_async.fleet import RedisCoordinator


async def share(url: str) -> None:
    async with RedisCoordinator(url, poll_interval=0.05) as coord:
        raw = from_url(url, decode_responses=True)
        try:
            print("ready", flush=True)
            await raw.blpop(["go"], timeout=30)
        finally:
            await raw.aclose()
        peak = 0
        reserved = 0

        async def slot(i: int) -> None:
            nonlocal peak
            token = f"{coord.process_id}-{i}"
            _, held = await coord.acquire_active(
                "bfl", "flux-kontext-max", total=24, per_model=6, token=token
            )
            peak = max(peak, held)
            await anyio.lowlevel.checkpoint()
            await coord.release_active("bfl", "flux-kontext-max", token)

        async def money(i: int) -> None:
            nonlocal reserved
            if await coord.reserve("bfl", f"{coord.process_id}-{i}", 0.04, cap=2.0):
                reserved += 1

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(slot, i)
                tg.start_soon(money, i)
        print(json.dumps({"peak": peak, "reserved": reserved}), flush=True)


async def hold(url: str) -> None:
    async with RedisCoordinator(url, lease_ttl=0.5) as coord:
        for i in range(6):
            await coord.acquire_active("bfl", "held-model", total=None, per_model=6, token=f"h{i}")
        print("held", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run({"share": share, "hold": hold}[sys.argv[2]], sys.argv[1])
