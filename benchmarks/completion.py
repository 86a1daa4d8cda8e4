"""Scenario ``completion``: 5,000 jobs in one ``as_completed`` call, against ``generate()``.

5,000 jobs with log-normal durations (median 3 s, sigma 0.35), with the session's defaults
(``Limits()``, ``PollPolicy()``): one ``Session.as_completed`` over the whole input, against the
same 5,000 jobs run as 500 concurrent ``Session.generate()`` calls (500 coroutines, each taking
the next job when its last one is done). The ``generate()`` client is the baseline: what a user
gets without the batch machinery, on the same session, scheduler and connection pool. A third
client runs the same batch with ``Limits(max_outstanding=5000)``, so that every job is
outstanding at once (the default keeps 512 ahead of the consumer): the scheduler then carries
the whole batch, about ten times the poll rate.

Per client: scheduler lag (a poll's start minus its due time) p50/p99 from the scheduler's own
histogram over the whole run, detection delay p50/p99 (the wall-clock time the client had the
result minus the emulator's ``completed_at``), status requests per job (the emulator's count),
the poll rate, client CPU per job and the wall time.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from . import _harness as h
from ._client import MODEL, PROVIDER, Meter, emulator_key
from .polling import _Deadline

JOBS = 5000
QUICK_JOBS = 1000
#: ``generate()`` calls running at once in the baseline client.
GENERATORS = 500
MEDIAN = 3.0
SIGMA = 0.35
SEED = 5
JOB_DEADLINE = 240.0
DEFAULT_REPS = 3
CLIENTS = ("as_completed", "as_completed_all", "generate")

GOAL_LAG_P99 = 0.050
GOAL_DELAY_P50 = 0.15
GOAL_DELAY_P99 = 0.5


def _prompt(i: int) -> str:
    return f"completion benchmark job {i}"


# -- the clients (each runs in its own process) ---------------------------------------------------


def client_as_completed(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_run(p, batch=True))


def client_as_completed_all(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_run(p, batch=True, outstanding=int(p["jobs"])))


def client_generate(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_run(p, batch=False))


async def _run(p: dict[str, Any], *, batch: bool, outstanding: int | None = None) -> dict[str, Any]:
    from flux_async.models import GenerationRequest
    from flux_async.session import Limits, Session

    n = int(p["jobs"])
    seen: dict[str, float] = {}
    failed = 0
    with Meter() as meter:
        started = time.time()
        limits = None if outstanding is None else Limits(max_outstanding=outstanding)
        async with Session(
            PROVIDER, api_key=emulator_key(), base_url=p["base_url"], limits=limits
        ) as session:
            scheduler = session._scheduler  # the lag is not in SessionStatistics
            with _Deadline(JOB_DEADLINE + 60):
                if batch:
                    requests = (
                        GenerationRequest(model=MODEL, prompt=_prompt(i), size="1:1")
                        for i in range(n)
                    )
                    async for outcome in session.as_completed(requests):
                        if outcome.ok and outcome.task_id is not None:
                            seen[outcome.task_id] = time.time()
                        else:
                            failed += 1
                else:
                    jobs = iter(range(n))

                    async def worker() -> None:
                        nonlocal failed
                        for i in jobs:
                            try:
                                result = await session.generate(
                                    model=MODEL, prompt=_prompt(i), size="1:1"
                                )
                            except Exception:
                                failed += 1
                            else:
                                seen[result.task_id] = time.time()

                    await asyncio.gather(*(worker() for _ in range(int(p["generators"]))))
            stats = scheduler.statistics()
    return {
        **meter.as_dict(),
        "started_at": started,
        "jobs": n,
        "ok": len(seen),
        "failed": failed,
        "seen": seen,
        "scheduler": {
            "polls_sent": stats.polls_sent,
            "lag_p50_s": stats.lag_p50,
            "lag_p99_s": stats.lag_p99,
            "max_lag_s": stats.max_lag,
            "wakeups": stats.wakeups,
            "retries": stats.retries,
        },
    }


# -- the orchestration (parent process) -----------------------------------------------------------


def _one(emu: Any, client: str, jobs: int, placement: h.Placement) -> dict[str, Any]:
    emu.reset()
    params: dict[str, Any] = {
        "jobs": jobs,
        "base_url": emu.base_url(PROVIDER),
        "generators": GENERATORS,
    }
    emu_cpu0 = h.process_cpu(emu.pid)
    result = h.run_client(
        "completion", f"client_{client}", params, placement, timeout=JOB_DEADLINE + 120
    )
    emu_cpu1 = h.process_cpu(emu.pid)
    stats = emu.stats(tasks=True)
    seen: dict[str, float] = result.pop("seen")
    delays: list[float] = []
    missing = 0
    last = result["started_at"]
    for task in stats["tasks"]:
        at = seen.get(task["id"])
        if at is None or task["completed_at"] is None:
            missing += 1
            continue
        delays.append(at - task["completed_at"])
        last = max(last, at)
    req = stats["requests"]
    sched = result["scheduler"]
    polls = req["poll"] + req["lookup"]
    result.update(
        client=client,
        emulator_cpu_s=None if emu_cpu0 is None or emu_cpu1 is None else emu_cpu1 - emu_cpu0,
        emulator={k: stats[k] for k in ("requests", "tasks_created", "duplicate_submits")},
        missing=missing,
        status_polls_per_job=polls / jobs,
        submits_per_job=req["submit"] / jobs,
        polls_per_s=polls / result["wall_s"],
        lag_p50_s=sched["lag_p50_s"],
        lag_p99_s=sched["lag_p99_s"],
        delay_p50_s=h.percentile(delays, 0.50),
        delay_p99_s=h.percentile(delays, 0.99),
        delay_max_s=max(delays) if delays else math.nan,
        cpu_ms_per_job=result["cpu_s"] / jobs * 1e3,
        wall_to_last_result_s=last - result["started_at"],
    )
    if result["ok"] != jobs or missing or stats["duplicate_submits"]:
        raise RuntimeError(
            f"completion: {client} finished {result['ok']} of {jobs} jobs ({missing} unmatched, "
            f"{stats['duplicate_submits']} duplicate submits)"
        )
    return result


def run(
    *, quick: bool, reps: int, placement: h.Placement, reps_given: bool = False
) -> dict[str, Any]:
    from flux_async.emulator import Duration, Scenario

    jobs = QUICK_JOBS if quick else JOBS
    scenario = Scenario(seed=SEED, duration=Duration.lognormal(MEDIAN, SIGMA))
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CLIENTS}
    warmup: list[dict[str, Any]] = []
    emu = h.start_emulator(scenario, placement)
    try:
        for client in CLIENTS:
            h.log(f"completion: {client} warm-up (500 jobs)")
            warmup.append(_one(emu, client, 500, placement))
        for rep in range(reps):
            # Alternate which client goes first, so a drift of the machine hits both.
            for client in CLIENTS if rep % 2 == 0 else CLIENTS[::-1]:
                h.log(f"completion: {client} rep {rep + 1}/{reps} ({jobs} jobs)")
                runs[client].append(_one(emu, client, jobs, placement))
    finally:
        emu.stop()
    keys = (
        "lag_p50_s",
        "lag_p99_s",
        "delay_p50_s",
        "delay_p99_s",
        "status_polls_per_job",
        "polls_per_s",
        "cpu_ms_per_job",
        "wall_to_last_result_s",
    )
    figures = {c: {k: h.summary(r[k] for r in items) for k in keys} for c, items in runs.items()}
    for c, items in runs.items():
        figures[c]["repetitions"] = len(items)
    base = figures["generate"]
    goals = {}
    for c in ("as_completed", "as_completed_all"):
        lib = figures[c]
        goals.update(
            {
                f"{c}:lag_p99<=50ms": lib["lag_p99_s"]["median"] <= GOAL_LAG_P99,
                f"{c}:delay_p50<=0.15s": lib["delay_p50_s"]["median"] <= GOAL_DELAY_P50,
                f"{c}:delay_p99<=0.5s": lib["delay_p99_s"]["median"] <= GOAL_DELAY_P99,
                f"{c}:delay_no_worse_than_generate": (
                    lib["delay_p50_s"]["median"] <= base["delay_p50_s"]["max"]
                    and lib["delay_p99_s"]["median"] <= base["delay_p99_s"]["max"]
                ),
            }
        )
    return {
        "scenario": "completion",
        "setup": {
            "jobs": jobs,
            "durations": {"kind": "lognormal", "median_s": MEDIAN, "sigma": SIGMA, "seed": SEED},
            "provider": PROVIDER,
            "model": MODEL,
            "emulator_scenario": scenario.to_dict(),
            "as_completed": "one Session.as_completed over every job; Limits() and PollPolicy() defaults",
            "as_completed_all": "the same with Limits(max_outstanding=jobs): every job outstanding at once",
            "generate": f"{GENERATORS} coroutines, each awaiting Session.generate() for the next job; same defaults",
            "repetitions": reps,
            "warmup": "each client once, 500 jobs",
        },
        "figures": figures,
        "goals": goals,
        "runs": runs,
        "warmup": warmup,
    }


def render(result: dict[str, Any]) -> str:
    s = result["setup"]
    names = {
        "as_completed": "as_completed (defaults)",
        "as_completed_all": "as_completed, all outstanding",
        "generate": f"{GENERATORS} x generate()",
    }
    goal = {
        "lag_p99_s": f"≤ {GOAL_LAG_P99 * 1e3:g} ms",
        "delay_p50_s": f"≤ {GOAL_DELAY_P50:g} s, ≤ generate()",
        "delay_p99_s": f"≤ {GOAL_DELAY_P99:g} s, ≤ generate()",
    }
    rows_spec = (
        ("scheduler lag p50", "lag_p50_s", "ms", 1e3),
        ("scheduler lag p99", "lag_p99_s", "ms", 1e3),
        ("detection delay p50", "delay_p50_s", "s", 1.0),
        ("detection delay p99", "delay_p99_s", "s", 1.0),
        ("status requests per job", "status_polls_per_job", "", 1.0),
        ("polls per second", "polls_per_s", "/s", 1.0),
        ("client CPU per job", "cpu_ms_per_job", "ms", 1.0),
        ("wall to last result", "wall_to_last_result_s", "s", 1.0),
    )
    rows = []
    for label, key, unit, scale in rows_spec:
        cells = [label]
        for c in CLIENTS:
            f = result["figures"][c][key]
            scaled = {
                "median": f["median"] * scale,
                "min": f["min"] * scale,
                "max": f["max"] * scale,
                "values": [v * scale for v in f["values"]],
            }
            cells.append(h.fmt_range(scaled, unit))
        cells.append(goal.get(key, ""))
        rows.append(cells)
    g = result["goals"]
    title = (
        f"completion — {s['jobs']} jobs, log-normal durations (median {MEDIAN:g} s, sigma "
        f"{SIGMA:g}), default Limits and PollPolicy, median (min-max) of {s['repetitions']} runs"
    )
    lines = [f"- {name}: {h.verdict(ok)}" for name, ok in g.items()]
    headers = ["figure", *(names[c] for c in CLIENTS), "goal (both as_completed)"]
    return title + "\n\n" + h.table(headers, rows) + "\n\n" + "\n".join(lines)
