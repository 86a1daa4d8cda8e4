"""One worker process of the fleet tests (``test_fleet_processes.py``): a ``Session`` with a
``RedisCoordinator`` on one account, run as ``python _fleet_session_worker.py SPEC``.

``SPEC`` is JSON: ``redis`` and ``base_url`` (the emulator's, for ``provider``), ``model``,
``inputs`` (``[[input_id, prompt], ...]``: this worker's share of the batch), ``go`` (a Redis
list: the worker waits for an item on it before submitting anything) and optionally
``lease_ttl``, ``max_spend_usd``, ``max_outstanding``, ``download_to`` (its own results),
``adopt_download_to`` (orphans it adopts), ``idempotency_key`` (every input is then submitted
with ``Session.submit`` under that key instead of a batch) and ``linger`` (a Redis list: once
its own jobs are done the worker prints ``done`` and keeps its session open, adopting, until an
item arrives on it).

It prints one JSON line per event on stdout, flushed: ``ready`` (session open), ``accepted``
(an input's task was accepted: ``input``, ``task_id``), ``done`` and last ``report``
(``ok``/``failed`` counts, ``tasks`` {input_id: task_id}, ``errors``, the session's
``adopted``, ``deduplicated`` and ``submitted`` counts).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
from redis.asyncio import from_url

from flux_async import BudgetExceededError, GenerationRequest, Limits, PollPolicy, Session
from flux_async.emulator import DEFAULT_API_KEY
from flux_async.fleet import RedisCoordinator

FAST = PollPolicy(first_poll=0.05, min_interval=0.02, quantum=0.01, max_interval=0.1)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def wait_on(url: str, key: str, seconds: float) -> bool:
    """True once an item arrives on the Redis list ``key``; False after ``seconds``."""
    raw = from_url(url, decode_responses=True)
    try:
        return await raw.blpop([key], timeout=seconds) is not None
    finally:
        await raw.aclose()


async def main(spec: dict[str, Any]) -> int:
    url = spec["redis"]
    inputs: list[tuple[str, str]] = [(str(i), str(p)) for i, p in spec["inputs"]]
    coordinator = RedisCoordinator(
        url, poll_interval=0.05, lease_ttl=float(spec.get("lease_ttl", 10.0))
    )
    limits = Limits(
        max_spend_usd=spec.get("max_spend_usd"),
        max_outstanding=int(spec.get("max_outstanding", 512)),
    )
    key = spec.get("idempotency_key")
    tasks: dict[str, str] = {}
    errors: list[str] = []
    ok = failed = 0
    async with Session(
        spec.get("provider", "bfl"), api_key=DEFAULT_API_KEY, base_url=spec["base_url"],
        poll_policy=FAST, limits=limits, coordinator=coordinator,
        adopt_download_to=spec.get("adopt_download_to"),
    ) as session:  # fmt: skip
        emit("ready", process_id=coordinator.process_id)
        if not await wait_on(url, spec["go"], 30):
            emit("report", errors=["no start signal within 30 s"])
            return 1
        requests = [
            GenerationRequest(model=spec["model"], prompt=prompt, idempotency_key=key)
            for _, prompt in inputs
        ]
        if key is not None:
            for (input_id, _), request in zip(inputs, requests, strict=True):
                job = await session.submit(request)
                tasks[input_id] = job.task_id
                emit("accepted", input=input_id, task_id=job.task_id)
                result = await job.result()
                ok += bool(result.images)
        else:

            def accepted(index: int, ref: Any) -> None:
                emit("accepted", input=inputs[index][0], task_id=ref.task_id)

            download_to = spec.get("download_to")
            try:
                async for outcome in session.as_completed(
                    requests, download_to=download_to, on_submit=accepted
                ):
                    input_id = inputs[outcome.index][0]
                    if outcome.task_id is not None:
                        tasks[input_id] = outcome.task_id
                    if outcome.ok and (download_to is None or outcome.files):
                        ok += 1
                    else:
                        failed += 1
                        errors.append(f"input {input_id}: {outcome.error!r}")
            except BudgetExceededError as exc:
                errors.append(f"BudgetExceededError: {exc}")
        emit("done", ok=ok)
        if spec.get("linger") and not await wait_on(url, spec["linger"], 60):
            errors.append("no stop signal within 60 s")
        stats = session.statistics()
    emit(
        "report", ok=ok, failed=failed, tasks=tasks, errors=errors, adopted=stats.adopted_tasks,
        deduplicated=stats.deduplicated, submitted=stats.submitted,
        coordinator_failures=stats.coordinator_failures,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, json.loads(sys.argv[1])))
