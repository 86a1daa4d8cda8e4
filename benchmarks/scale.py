"""Scenario ``scale``: what 1k, 10k and 100k outstanding tasks cost one session.

The emulator first receives 100,000 real submits (tasks lasting a day, so every one stays
outstanding). Then, for each size N, one client process opens a ``Session`` and re-attaches to N
of those tasks with ``Session.resume(TaskRef(...))``; every poll it then sends goes over a socket
to the emulator, which answers from its own state.

The poll rate is held at the same ``RATE`` polls/s for every N, so that the figures compare the
cost of *holding* N tasks, not the cost of a poll rate the emulator could not serve. Every polled
task is polled every N / RATE seconds (2 s at 1k, 20 s at 10k), its resumes paced evenly over one
interval so that the polls arrive at RATE/s from the start, without a burst. At 100k the interval
is capped so that it outlasts the measurement: RATE x interval "hot" tasks are polled, and the
other ("cold") tasks are resumed at the end of the ramp, so they are outstanding (in the heap and
in memory) but first due after the last window. See :func:`plan`.

Figures per N:

- memory per outstanding task: ``tracemalloc`` traced-memory growth across the resumes, after a
  full collection, divided by N. The id strings are cut from the ids file's text inside the
  traced section, so they count with the ``TaskRef``, ``Job``, scheduler record and heap entry.
  No result object exists (no task finishes). Tracing stops before the first poll;
- scheduler lag (a poll's start minus its due time) p50/p99, from the scheduler's own lag
  histogram (``PollScheduler.statistics()``), per measurement window;
- client CPU per poll: the process's getrusage CPU time over a window divided by the polls the
  emulator counted in it.

Each size is one client process: the resume ramp, a warm-up window that is discarded, then the
measured windows (3 by default, ``--reps``), each a repetition.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
import tracemalloc
from pathlib import Path
from typing import Any

from . import _harness as h
from ._client import GENERATIONS, MODEL, PROVIDER, cpu_seconds, emulator_key

SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
#: Polls per second, the same for every size.
RATE = 500.0
WARMUP_WINDOW = 2.0
WINDOW = 5.0
#: Seconds at the end of the ramp given to resuming the cold tasks (see :func:`plan`).
COLD_BUDGET = 6.0
#: The hot tasks are resumed over this much less than an interval, so the last resume (and the
#: memory reading) comes before the first poll.
PACE_MARGIN = 0.03
DEFAULT_REPS = 3
TASK_DURATION = 86_400.0

GOAL_MEMORY = 1024.0  # bytes per outstanding task at 100k
GOAL_LAG_P99 = {10_000: 0.010, 100_000: 0.050}
GOAL_CPU_GROWTH = 1.5  # per-poll CPU at 100k / at 1k


# -- the client (its own process per size) --------------------------------------------------------


def client_library(p: dict[str, Any]) -> dict[str, Any]:
    # The ids are read here, as one string; the id strings themselves are cut from it inside
    # the traced section, so they count as the session's memory (it keeps them in its refs).
    blob = Path(p["ids_file"]).read_text(encoding="ascii")
    return asyncio.run(_library(p, blob))


def _lag_counts(scheduler: Any) -> list[int] | None:
    """The scheduler's lag histogram counts (private; None if its shape changed)."""
    lag = getattr(scheduler, "_lag", None)
    counts = getattr(lag, "counts", None)
    return list(counts) if isinstance(counts, list) else None


def _lag_quantiles(
    scheduler: Any, before: list[int] | None, after: list[int] | None
) -> dict[str, float] | None:
    """p50/p99 of the lags recorded between two snapshots of the histogram: the upper edge of
    the bucket holding the quantile (the histogram's resolution is about 25% per bucket)."""
    edges = getattr(type(getattr(scheduler, "_lag", None)), "_EDGES", None)
    if before is None or after is None or edges is None or len(after) != len(edges) + 1:
        return None
    diff = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(diff)
    if total == 0:
        return None
    out: dict[str, float] = {}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        rank, seen = q * total, 0
        for i, count in enumerate(diff):
            seen += count
            if seen >= rank and count:
                out[name] = edges[i] if i < len(edges) else math.inf
                break
    out["samples"] = total
    return out


def plan(n: int, rate: float, windows: int) -> dict[str, float]:
    """How a size is set up so that polls arrive at ``rate`` per second from the start.

    Every task is polled every ``interval`` seconds (first poll one interval after its resume).
    ``hot`` tasks are resumed evenly over ``ramp`` seconds, so their polls arrive at ``rate``/s
    from the end of the ramp. When ``n`` is larger than ``rate * interval`` can keep busy, the
    interval is capped (it must outlast the measurement) and the remaining ``cold`` tasks are
    resumed during the last ``COLD_BUDGET`` seconds of the ramp: they are outstanding, in the
    heap and in memory, but their first poll falls after the last window ends.
    """
    measured = WARMUP_WINDOW + windows * WINDOW
    cap = (measured + COLD_BUDGET + 2.0) / (1.0 - PACE_MARGIN)
    interval = min(n / rate, cap)
    hot = min(n, round(rate * interval))
    return {
        "interval": interval,
        "ramp": interval * (1.0 - PACE_MARGIN),
        "hot": hot,
        "cold": n - hot,
        "measured": measured,
    }


async def _library(p: dict[str, Any], blob: str) -> dict[str, Any]:
    import aiohttp

    from flux_async.models import TaskRef
    from flux_async.scheduler import PollPolicy
    from flux_async.session import Session

    n, rate = int(p["tasks"]), float(p["rate"])
    setup = plan(n, rate, int(p["windows"]))
    interval, ramp, hot = setup["interval"], setup["ramp"], int(setup["hot"])
    policy = PollPolicy(
        first_poll=interval,
        max_interval=interval,
        backoff=1.0,
        min_interval=min(0.2, interval),
        jitter=0.1,
    )
    loop = asyncio.get_running_loop()
    stats_url = p["emulator_url"] + "/_emulator/stats?tasks=0"
    async with (
        aiohttp.ClientSession() as probe,
        Session(
            PROVIDER, api_key=emulator_key(), base_url=p["base_url"], poll_policy=policy
        ) as session,
    ):
        scheduler = session._scheduler  # the lag histogram is not in SessionStatistics

        async def polls_counted() -> int:
            async with probe.get(stats_url) as resp:
                return int(json.loads(await resp.read())["requests"]["poll"])

        await polls_counted()  # open the probe's connection before anything is measured

        # 1. The ramp, traced by tracemalloc: the hot tasks paced evenly, the cold ones in
        # chunks during its last COLD_BUDGET seconds. Nothing is polled before it ends.
        gc.collect()
        tracemalloc.start()
        mem0 = tracemalloc.get_traced_memory()[0]
        ids = blob.split("\n", n)[:n]
        ramp_start = loop.time()
        cold_from = ramp_start + max(0.0, ramp - COLD_BUDGET)
        i_hot, i_cold = 0, hot
        cold_started = cold_done = None
        while i_hot < hot or i_cold < n:
            now = loop.time()
            target = min(hot, int((now - ramp_start) / ramp * hot) + 1)
            while i_hot < target:
                session.resume(TaskRef(provider=PROVIDER, task_id=ids[i_hot], model=MODEL))
                i_hot += 1
            if i_cold < n and now >= cold_from:
                cold_started = cold_started or now
                for task_id in ids[i_cold : i_cold + 500]:
                    session.resume(TaskRef(provider=PROVIDER, task_id=task_id, model=MODEL))
                i_cold = min(n, i_cold + 500)
                if i_cold == n:
                    cold_done = loop.time()
                await asyncio.sleep(0)
            elif i_hot < hot or i_cold < n:
                await asyncio.sleep(0.005)
        ramp_s = loop.time() - ramp_start
        del ids
        gc.collect()
        mem1 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        polls_during_ramp = scheduler.statistics().polls_sent
        outstanding_after_ramp = session.statistics().outstanding

        # 2. Windows: a warm-up, then the measured ones, back to back.
        windows: list[dict[str, Any]] = []
        schedule = [("warm-up", WARMUP_WINDOW)] + [
            (f"window {i + 1}", WINDOW) for i in range(int(p["windows"]))
        ]
        await asyncio.sleep(max(0.0, ramp_start + interval - loop.time()))  # the first polls start
        first_poll_at = loop.time()
        mark_polls = await polls_counted()
        emu_pid = int(p["emulator_pid"])
        mark_cpu, mark_t, mark_emu = cpu_seconds(), loop.time(), h.process_cpu(emu_pid) or 0.0
        mark_lag, mark_stats = _lag_counts(scheduler), scheduler.statistics()
        for label, length in schedule:
            await asyncio.sleep(length)
            polls = await polls_counted()
            cpu, t, emu = cpu_seconds(), loop.time(), h.process_cpu(emu_pid) or 0.0
            lag, stats = _lag_counts(scheduler), scheduler.statistics()
            windows.append(
                {
                    "label": label,
                    "seconds": t - mark_t,
                    "cpu_s": cpu - mark_cpu,
                    "emulator_cpu_s": emu - mark_emu,
                    "polls": polls - mark_polls,
                    "client_polls_sent": stats.polls_sent - mark_stats.polls_sent,
                    "wakeups": stats.wakeups - mark_stats.wakeups,
                    "lag": _lag_quantiles(scheduler, mark_lag, lag),
                    "lag_cumulative": {
                        "p50": stats.lag_p50,
                        "p99": stats.lag_p99,
                        "max": stats.max_lag,
                    },
                    "outstanding": stats.outstanding,
                    "in_flight": stats.in_flight,
                }
            )
            mark_polls, mark_cpu, mark_t, mark_emu, mark_lag, mark_stats = (
                polls,
                cpu,
                t,
                emu,
                lag,
                stats,
            )
        final = session.statistics()
    end = loop.time()
    return {
        "tasks": n,
        "rate": rate,
        "plan": setup,
        "interval_s": interval,
        "ramp_s": ramp_s,
        "polls_during_ramp": polls_during_ramp,
        # The cold tasks' first polls come one interval after their resume: after the windows.
        "cold_first_poll_after_end": cold_started is None or cold_started + interval > end,
        "cold_resume_s": None
        if cold_started is None or cold_done is None
        else cold_done - cold_started,
        "first_window_at_s": first_poll_at - ramp_start,
        "memory_bytes": mem1 - mem0,
        "memory_per_task_bytes": (mem1 - mem0) / n,
        "outstanding_after_ramp": outstanding_after_ramp,
        "outstanding_at_end": final.outstanding,
        "finished": final.succeeded + final.failed,
        "poll_retries": final.poll_retries,
        "windows": windows,
    }


# -- the orchestration (parent process) -----------------------------------------------------------


def run(
    *, quick: bool, reps: int, placement: h.Placement, reps_given: bool = False
) -> dict[str, Any]:
    from flux_async.emulator import Duration, Scenario

    from ._bulk import submit_many
    from .overhead import _library_wire

    sizes = QUICK_SIZES if quick else SIZES
    scenario = Scenario(seed=4, duration=Duration.fixed(TASK_DURATION))
    headers, _ = _library_wire()
    emu = h.start_emulator(scenario, placement)
    ids_file = h.RESULTS / f"scale-ids-{time.monotonic_ns()}.tmp"
    per_size: dict[str, dict[str, Any]] = {}
    try:
        total = max(sizes)
        h.log(f"scale: creating {total} emulator tasks (real submits)")
        bodies = [
            json.dumps(
                {"model": MODEL, "prompt": f"scale benchmark task {i}", "size": "1:1"}
            ).encode()
            for i in range(total)
        ]
        ids, took = submit_many(
            emu.base_url(PROVIDER),
            GENERATIONS,
            {"Authorization": f"Bearer {emulator_key()}", **headers},
            bodies,
        )
        del bodies
        ids_file.write_text("\n".join(ids), encoding="ascii")
        created = emu.stats(tasks=False)
        h.log(f"scale: {len(ids)} tasks created in {took:.1f} s")
        for n in sizes:
            setup = plan(n, RATE, reps)
            h.log(
                f"scale: {n} outstanding tasks ({setup['hot']:.0f} polled every {setup['interval']:.1f} s, "
                f"{setup['cold']:.0f} waiting; ramp {setup['ramp']:.1f} s, then {reps} x {WINDOW:g} s windows)"
            )
            load0 = h.loadavg()
            result = h.run_client(
                "scale", "client_library",
                {"tasks": n, "rate": RATE, "ids_file": str(ids_file), "windows": reps,
                 "base_url": emu.base_url(PROVIDER), "emulator_url": emu.url, "emulator_pid": emu.pid},
                placement, timeout=setup["interval"] + setup["measured"] + 120,
            )  # fmt: skip
            if not result["cold_first_poll_after_end"] or result["polls_during_ramp"]:
                raise RuntimeError(
                    "scale: a cold task was polled during the windows, or a poll ran during the ramp"
                )
            if result["outstanding_at_end"] != n or result["finished"]:
                raise RuntimeError(
                    f"scale: {result['outstanding_at_end']} of {n} tasks outstanding at the end"
                )
            result["loadavg_before"] = load0
            measured = [w for w in result["windows"] if w["label"] != "warm-up"]
            result["figures"] = {
                "memory_per_task_bytes": result["memory_per_task_bytes"],
                "lag_p50_s": h.summary(w["lag"]["p50"] for w in measured if w["lag"]),
                "lag_p99_s": h.summary(w["lag"]["p99"] for w in measured if w["lag"]),
                "cpu_us_per_poll": h.summary(w["cpu_s"] / w["polls"] * 1e6 for w in measured),
                "polls_per_s": h.summary(w["polls"] / w["seconds"] for w in measured),
                "client_cpu_share": h.summary(w["cpu_s"] / w["seconds"] for w in measured),
                # The emulator does the same work per poll at every size, so its CPU per poll
                # tracks how fast the machine was in that window; client / emulator is the
                # per-poll cost with that drift divided out.
                "emulator_us_per_poll": h.summary(
                    w["emulator_cpu_s"] / w["polls"] * 1e6 for w in measured
                ),
                "client_over_emulator": h.summary(
                    w["cpu_s"] / w["emulator_cpu_s"] for w in measured if w["emulator_cpu_s"] > 0
                ),
            }
            per_size[str(n)] = result
        stats = emu.stats(tasks=False)
    finally:
        emu.stop()
        ids_file.unlink(missing_ok=True)

    first, last = per_size[str(min(sizes))]["figures"], per_size[str(max(sizes))]["figures"]
    cpu_growth = last["cpu_us_per_poll"]["median"] / first["cpu_us_per_poll"]["median"]
    normalised_growth = (
        last["client_over_emulator"]["median"] / first["client_over_emulator"]["median"]
    )
    goals: dict[str, bool | None] = {
        "memory<=1KiB@100k": per_size["100000"]["figures"]["memory_per_task_bytes"] <= GOAL_MEMORY
        if "100000" in per_size
        else None,
    }
    for n, limit in GOAL_LAG_P99.items():
        goals[f"lag_p99<={limit * 1e3:g}ms@{n // 1000}k"] = (
            per_size[str(n)]["figures"]["lag_p99_s"]["median"] <= limit
            if str(n) in per_size
            else None
        )
    goals["cpu_per_poll_growth<=1.5x"] = cpu_growth <= GOAL_CPU_GROWTH
    return {
        "scenario": "scale",
        "setup": {
            "sizes": list(sizes),
            "rate_polls_per_s": RATE,
            "task_duration_s": TASK_DURATION,
            "poll_policy": "PollPolicy(first_poll=N/rate, max_interval=N/rate, backoff=1, min_interval=min(0.2, N/rate), jitter=0.1)",
            "limits": "Limits() (defaults)",
            "warmup_window_s": WARMUP_WINDOW,
            "window_s": WINDOW,
            "repetitions": reps,
            "tasks_created": created["tasks_created"],
            "bulk_submit_s": took,
            "emulator_scenario": scenario.to_dict(),
        },
        "emulator": {
            k: stats[k] for k in ("requests", "status_codes", "tasks_created", "duplicate_submits")
        },
        "cpu_per_poll_growth": cpu_growth,
        "cpu_per_poll_growth_emulator_normalised": normalised_growth,
        "figures": {n: r["figures"] for n, r in per_size.items()},
        "goals": goals,
        "runs": per_size,
    }


def _ms(s: dict[str, Any]) -> dict[str, Any]:
    return h.summary(v * 1e3 for v in s["values"])


def render(result: dict[str, Any]) -> str:
    rows = []
    figures = result["figures"]
    base = figures[str(min(result["setup"]["sizes"]))]
    for n, f in figures.items():
        rows.append(
            [
                f"{int(n):,}",
                h.fmt(f["memory_per_task_bytes"], "B", 4),
                h.fmt_range(_ms(f["lag_p50_s"]), "ms"),
                h.fmt_range(_ms(f["lag_p99_s"]), "ms"),
                h.fmt_range(f["cpu_us_per_poll"], "µs"),
                h.fmt(f["cpu_us_per_poll"]["median"] / base["cpu_us_per_poll"]["median"], "x"),
                h.fmt(
                    f["client_over_emulator"]["median"] / base["client_over_emulator"]["median"],
                    "x",
                ),
                h.fmt_range(f["polls_per_s"], "/s"),
                h.fmt_range(f["client_cpu_share"]),
            ]
        )
    g = result["goals"]
    s = result["setup"]
    title = (
        f"scale — outstanding tasks resumed from real emulator tasks, polled at {s['rate_polls_per_s']:g} polls/s "
        f"at every size; median (min-max) of {s['repetitions']} window{'s' if s['repetitions'] != 1 else ''} of {s['window_s']:g} s after a warm-up window"
    )
    headers = [
        "tasks", "memory/task", "lag p50", "lag p99", "client CPU/poll", "vs 1k", "vs 1k, drift-corrected",
        "polls/s", "client CPU busy",
    ]  # fmt: skip
    lines = [f"- {name}: {h.verdict(ok)}" for name, ok in g.items()]
    lines.append(
        "- (drift-corrected: client CPU per poll divided by the emulator's, whose work per poll is the "
        "same at every size; the goal is judged on the raw figure)"
    )
    return title + "\n\n" + h.table(headers, rows) + "\n\n" + "\n".join(lines)
