"""Scenario ``polling``: status requests spent against detection delay.

2,000 jobs with log-normal durations (median 10 s, sigma 0.35), the emulator reporting queued
then rising integer-percent progress as toapis does. The library (``Session.as_completed`` with
the default ``PollPolicy``) against fixed-interval pollers at 0.1 s (fal_client's default), 0.5 s
(Replicate's and BFL's docs), 1 s (BFL's SDK) and 3 s (toapis' docs), each written as simple
clients are: one coroutine per job that submits, then ``while True: sleep(interval); GET``, over
plain aiohttp with the same 64-connection pool.

The library and the 0.5 s poller then run the same durations again with the emulator reporting
no progress percent (``Scenario(report_progress=False)``).

Per policy: status requests per job (the emulator's poll count / jobs), detection delay p50 and
p99 (the wall-clock time the client had the result minus the emulator's ``completed_at`` of that
task), client CPU per job and wall time; and a PNG of polls/job against p50 delay.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

from . import _harness as h
from ._client import GENERATIONS, MODEL, PROVIDER, Meter, emulator_key

JOBS = 2000
QUICK_JOBS = 300
CONCURRENCY = 64  # submits at once, and the connection pool of every client
MEDIAN = 10.0
SIGMA = 0.35
#: The seed fixes which durations the 2,000 tasks get (the k-th task created gets the k-th draw
#: whatever the client). Seed 3 draws a median of 9.8 s and a longest job of 31.6 s: among seeds
#: 0-3 the shortest tail, which keeps a run near 35 s; every policy sees the same durations.
SEED = 3
FIXED = (0.1, 0.5, 1.0, 3.0)
#: A job not finished this long after its submission is abandoned (bounds every loop).
JOB_DEADLINE = 150.0
#: By default the pair the goal compares (the library and the 0.5 s poller) gets 3 measured
#: repetitions and the other pollers 1, to keep ``all`` under 10 minutes; ``--reps N`` gives
#: every policy N.
DEFAULT_REPS = 3
HEADLINE = ("library", "fixed-0.5s")
#: The no-progress variant: the same durations, the emulator reporting no percent (as BFL often
#: does, and as most other providers' APIs never do); the pair the goal compares only.
NO_PROGRESS = "no-progress "
NO_PROGRESS_POLICIES: tuple[float | None, ...] = (None, 0.5)

GOAL_POLL_RATIO = 3.0


def _prompt(i: int) -> str:
    return f"polling benchmark job {i}"


def _policy_name(interval: float | None, variant: str = "") -> str:
    return variant + ("library" if interval is None else f"fixed-{interval:g}s")


# -- the clients (each runs in its own process) ---------------------------------------------------


def client_library(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_library(p))


async def _library(p: dict[str, Any]) -> dict[str, Any]:
    from flux_async.models import GenerationRequest
    from flux_async.session import Limits, Session

    n = int(p["jobs"])
    # The default PollPolicy; the limits only let all jobs be outstanding at once, as they are
    # for the fixed pollers, and use the same pool size.
    limits = Limits(
        max_concurrent_submits=CONCURRENCY, max_connections=CONCURRENCY, max_outstanding=n
    )
    seen: dict[str, float] = {}
    failed = 0
    with Meter() as meter:
        started = time.time()
        async with Session(
            PROVIDER, api_key=emulator_key(), base_url=p["base_url"], limits=limits
        ) as session:
            requests = (
                GenerationRequest(model=MODEL, prompt=_prompt(i), size="1:1") for i in range(n)
            )
            with _Deadline(JOB_DEADLINE + 60):
                async for outcome in session.as_completed(requests):
                    if outcome.ok and outcome.task_id is not None:
                        seen[outcome.task_id] = time.time()
                    else:
                        failed += 1
            stats = session.statistics()
    return {
        **meter.as_dict(),
        "started_at": started,
        "jobs": n,
        "ok": len(seen),
        "failed": failed,
        "seen": seen,
        "client_polls_sent": stats.polls_sent,
    }


class _Deadline:
    """A bound on a whole run (cancels the current task when it expires)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.handle: asyncio.TimerHandle | None = None

    def __enter__(self) -> _Deadline:
        task = asyncio.current_task()
        assert task is not None
        self.handle = asyncio.get_running_loop().call_later(self.seconds, task.cancel)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.cancel()


def client_fixed(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_fixed(p))


async def _fixed(p: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    n, interval = int(p["jobs"]), float(p["interval"])
    url = p["base_url"] + GENERATIONS
    headers = {"Authorization": f"Bearer {emulator_key()}", **p["headers"]}
    seen: dict[str, float] = {}
    failed = 0
    max_polls = math.ceil(JOB_DEADLINE / interval)
    with Meter() as meter:
        started = time.time()
        connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:

            async def job(i: int) -> None:
                nonlocal failed
                body = {
                    "model": MODEL,
                    "prompt": _prompt(i),
                    "size": "1:1",
                    "client_business_id": uuid.uuid4().hex,
                }
                async with http.post(url, json=body, headers=headers) as resp:
                    task_id = json.loads(await resp.read())["id"]
                for _ in range(max_polls):
                    await asyncio.sleep(interval)
                    async with http.get(f"{url}/{task_id}", headers=headers) as resp:
                        state = json.loads(await resp.read())
                    if state["status"] == "completed":
                        seen[task_id] = time.time()
                        return
                    if state["status"] == "failed":
                        break
                failed += 1

            await asyncio.gather(*(job(i) for i in range(n)))
    return {
        **meter.as_dict(),
        "started_at": started,
        "jobs": n,
        "ok": len(seen),
        "failed": failed,
        "seen": seen,
    }


# -- the orchestration (parent process) -----------------------------------------------------------


def _one(
    emu: Any,
    interval: float | None,
    jobs: int,
    headers: dict[str, str],
    placement: h.Placement,
    variant: str = "",
) -> dict[str, Any]:
    emu.reset()
    params: dict[str, Any] = {"jobs": jobs, "base_url": emu.base_url(PROVIDER)}
    if interval is None:
        function = "client_library"
    else:
        function = "client_fixed"
        params.update(interval=interval, headers=headers)
    emu_cpu0 = h.process_cpu(emu.pid)
    load0 = h.loadavg()
    result = h.run_client("polling", function, params, placement, timeout=JOB_DEADLINE + 120)
    emu_cpu1 = h.process_cpu(emu.pid)
    stats = emu.stats(tasks=True)
    seen: dict[str, float] = result.pop("seen")
    delays: list[float] = []
    missing = 0
    last = result["started_at"]
    per_task: list[list[float]] = []  # [duration s, delay s, status polls], in creation order
    for task in stats["tasks"]:
        at = seen.get(task["id"])
        if at is None or task["completed_at"] is None:
            missing += 1
            continue
        delays.append(at - task["completed_at"])
        per_task.append(
            [
                round(task["duration"], 3),
                round(at - task["completed_at"], 4),
                task["polls"] + task["lookups"],
            ]
        )
        last = max(last, at)
    req = stats["requests"]
    result.update(
        policy=_policy_name(interval, variant),
        loadavg_before=load0,
        emulator_cpu_s=None if emu_cpu0 is None or emu_cpu1 is None else emu_cpu1 - emu_cpu0,
        emulator={
            k: stats[k] for k in ("requests", "status_codes", "tasks_created", "duplicate_submits")
        },
        missing=missing,
        status_polls_per_job=(req["poll"] + req["lookup"]) / jobs,
        submits_per_job=req["submit"] / jobs,
        delay_p50_s=h.percentile(delays, 0.50),
        delay_p99_s=h.percentile(delays, 0.99),
        delay_mean_s=sum(delays) / len(delays) if delays else math.nan,
        delay_max_s=max(delays) if delays else math.nan,
        delay_min_s=min(delays) if delays else math.nan,
        cpu_ms_per_job=result["cpu_s"] / jobs * 1e3,
        per_task=per_task,
        wall_to_last_result_s=last - result["started_at"],
    )
    if result["ok"] != jobs or missing:
        raise RuntimeError(
            f"polling: {result['policy']} finished {result['ok']} of {jobs} jobs ({missing} unmatched)"
        )
    return result


def run(
    *, quick: bool, reps: int, placement: h.Placement, reps_given: bool = False
) -> dict[str, Any]:
    import attrs

    from flux_async.emulator import Duration, Scenario

    from .overhead import _library_wire

    jobs = QUICK_JOBS if quick else JOBS
    headers, _ = _library_wire()
    scenario = Scenario(seed=SEED, duration=Duration.lognormal(MEDIAN, SIGMA))
    silent = attrs.evolve(scenario, report_progress=False)
    policies: list[float | None] = [None, *FIXED]
    plan = {
        _policy_name(i): reps if (reps_given or quick or _policy_name(i) in HEADLINE) else 1
        for i in policies
    }
    plan.update({_policy_name(i, NO_PROGRESS): reps for i in NO_PROGRESS_POLICIES})
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    warmup: list[dict[str, Any]] = []
    emu = h.start_emulator(scenario, placement)
    try:
        # Warm-up: both kinds of client once, on short jobs (it warms the emulator process and
        # the OS caches; its figures are kept apart and never reported).
        short = Scenario(seed=SEED, duration=Duration.lognormal(1.0, SIGMA))
        emu.set_scenario(short)
        for interval in (None, 0.5):
            h.log(f"polling: {_policy_name(interval)} warm-up (200 short jobs)")
            warmup.append(_one(emu, interval, 200, headers, placement))
        for variant, sc, chosen in (
            ("", scenario, policies),
            (NO_PROGRESS, silent, NO_PROGRESS_POLICIES),
        ):
            emu.set_scenario(sc)
            for rep in range(max(plan.values())):
                for interval in chosen:
                    name = _policy_name(interval, variant)
                    if rep >= plan[name]:
                        continue
                    h.log(f"polling: {name} rep {rep + 1}/{plan[name]} ({jobs} jobs)")
                    runs[name].append(_one(emu, interval, jobs, headers, placement, variant))
    finally:
        emu.stop()

    figures: dict[str, Any] = {}
    for name, items in runs.items():
        figures[name] = {
            key: h.summary(r[key] for r in items)
            for key in (
                "status_polls_per_job",
                "delay_p50_s",
                "delay_p99_s",
                "delay_mean_s",
                "cpu_ms_per_job",
                "wall_to_last_result_s",
                "wall_s",
            )
        }
        figures[name]["repetitions"] = len(items)
    lib = figures["library"]
    half = figures["fixed-0.5s"]
    poll_ratio = half["status_polls_per_job"]["median"] / lib["status_polls_per_job"]["median"]
    dominated_by = [
        name
        for name in runs
        if name != "library"
        and not name.startswith(NO_PROGRESS)
        and figures[name]["status_polls_per_job"]["median"] < lib["status_polls_per_job"]["median"]
        and figures[name]["delay_p50_s"]["median"] < lib["delay_p50_s"]["median"]
    ]
    goals = {
        "p50_delay<=fixed-0.5s": lib["delay_p50_s"]["median"] <= half["delay_p50_s"]["median"],
        "fewer_polls_than_fixed-0.5s>=3x": poll_ratio >= GOAL_POLL_RATIO,
        "no_fixed_policy_better_on_both": not dominated_by,
    }
    quiet, quiet_half = figures[NO_PROGRESS + "library"], figures[NO_PROGRESS + "fixed-0.5s"]
    goals.update(
        {
            "no_progress:fewer_polls_than_fixed-0.5s": quiet["status_polls_per_job"]["median"]
            < quiet_half["status_polls_per_job"]["median"],
            "no_progress:p50_delay<=fixed-0.5s": quiet["delay_p50_s"]["median"]
            <= quiet_half["delay_p50_s"]["median"],
            "no_progress:p99_delay<=2x_fixed-0.5s": quiet["delay_p99_s"]["median"]
            <= 2.0 * quiet_half["delay_p99_s"]["median"],
        }
    )
    return {
        "scenario": "polling",
        "setup": {
            "jobs": jobs,
            "durations": {"kind": "lognormal", "median_s": MEDIAN, "sigma": SIGMA, "seed": SEED},
            "provider": PROVIDER,
            "model": MODEL,
            "emulator_scenario": scenario.to_dict(),
            "no_progress": "the same scenario with report_progress=False (no percent in any answer)",
            "library": {
                "poll_policy": "PollPolicy() (defaults)",
                "limits": {
                    "max_concurrent_submits": CONCURRENCY,
                    "max_connections": CONCURRENCY,
                    "max_outstanding": jobs,
                },
            },
            "fixed": f"one coroutine per job: POST, then `while True: sleep(interval); GET`; aiohttp pool of {CONCURRENCY}",
            "repetitions": plan,
            "warmup": "each kind of client once, 200 jobs with a 1 s median",
        },
        "figures": figures,
        "poll_ratio_fixed_0.5s_over_library": poll_ratio,
        "dominated_by": dominated_by,
        "goals": goals,
        "runs": runs,
        "warmup": warmup,
    }


def plot(result: dict[str, Any], path: Path) -> str:
    """Polls/job against p50 delay, one point per policy (min-max bars); returns a message."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, f in result["figures"].items():
        x, y = f["delay_p50_s"], f["status_polls_per_job"]
        p99 = f["delay_p99_s"]["median"]
        lib = name.endswith("library")
        quiet = name.startswith(NO_PROGRESS)
        ax.errorbar(
            x["median"], y["median"],
            xerr=[[x["median"] - x["min"]], [x["max"] - x["median"]]],
            yerr=[[y["median"] - y["min"]], [y["max"] - y["median"]]],
            fmt="*" if lib else "o", markersize=14 if lib else 8,
            color="tab:red" if lib else "tab:blue", capsize=3,
            markerfacecolor="none" if quiet else None,
        )  # fmt: skip
        ax.plot([x["median"], p99], [y["median"], y["median"]], ":", color="grey", linewidth=1)
        ax.plot([p99], [y["median"]], "|", color="grey", markersize=10)
        label = _label(name)
        ax.annotate(
            label,
            (x["median"], y["median"]),
            textcoords="offset points",
            xytext=(8, -14) if quiet else (8, 6),
        )
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.tick_params(axis="both", which="minor", labelsize=7)
    ax.set_xlabel("detection delay p50, s (dotted to the p99 tick)")
    ax.set_ylabel("status requests per job")
    s = result["setup"]
    ax.set_title(
        f"{s['jobs']} jobs, log-normal durations (median {MEDIAN:g} s, sigma {SIGMA:g}); "
        "hollow: no progress; lower-left is better",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"plot: {path.relative_to(h.ROOT)}"


def _label(name: str) -> str:
    variant = NO_PROGRESS if name.startswith(NO_PROGRESS) else ""
    policy = name[len(variant) :]
    label = "flux_async default" if policy == "library" else policy.replace("fixed-", "every ")
    return variant + label


def render(result: dict[str, Any]) -> str:
    rows = []
    for name, f in result["figures"].items():
        polls = f["status_polls_per_job"]["median"]
        variant = NO_PROGRESS if name.startswith(NO_PROGRESS) else ""
        lib_polls = result["figures"][variant + "library"]["status_polls_per_job"]["median"]
        rows.append(
            [
                _label(name),
                str(f["repetitions"]),
                h.fmt_range(f["status_polls_per_job"]),
                "1" if name.endswith("library") else h.fmt(polls / lib_polls, "x"),
                h.fmt_range(f["delay_p50_s"], "s"),
                h.fmt_range(f["delay_p99_s"], "s"),
                h.fmt_range(f["cpu_ms_per_job"], "ms"),
                h.fmt_range(f["wall_to_last_result_s"], "s"),
            ]
        )
    g = result["goals"]
    s = result["setup"]
    title = (
        f"polling — {s['jobs']} jobs, log-normal durations (median {MEDIAN:g} s, sigma {SIGMA:g}), "
        "median (min-max) over the repetitions shown"
    )
    goals = [
        f"- p50 delay no worse than the 0.5 s poller's: {h.verdict(g['p50_delay<=fixed-0.5s'])}",
        f"- ≥ 3x fewer status requests per job than the 0.5 s poller: "
        f"{result['poll_ratio_fixed_0.5s_over_library']:.2f}x — {h.verdict(g['fewer_polls_than_fixed-0.5s>=3x'])}",
        f"- no fixed policy better on both axes: {h.verdict(g['no_fixed_policy_better_on_both'])}"
        + (f" (beaten by {', '.join(result['dominated_by'])})" if result["dominated_by"] else ""),
        "- no progress reported, against the 0.5 s poller: fewer status requests per job "
        f"{h.verdict(g.get('no_progress:fewer_polls_than_fixed-0.5s'))}, p50 delay no worse "
        f"{h.verdict(g.get('no_progress:p50_delay<=fixed-0.5s'))}, p99 delay ≤ 2x "
        f"{h.verdict(g.get('no_progress:p99_delay<=2x_fixed-0.5s'))}",
    ]
    headers = [
        "policy",
        "runs",
        "status requests/job",
        "vs library",
        "delay p50",
        "delay p99",
        "client CPU/job",
        "wall to last result",
    ]
    text = title + "\n\n" + h.table(headers, rows) + "\n\n" + "\n".join(goals)
    if "plot" in result:
        text += "\n\n" + result["plot"]
    return text
