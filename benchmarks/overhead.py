"""Scenario ``overhead``: what the library costs on top of the requests it has to send.

5,000 jobs whose tasks are complete at their first poll (no download), 64 at a time. The
library runs them through ``Session.as_completed``; the *floor* is a plain aiohttp script that
sends exactly the same requests (per job one POST with the same body and headers, then one GET)
from 64 worker coroutines over a 64-connection pool, and does nothing else. Figures: client CPU
per job and jobs per second, each as a ratio to the floor measured in the same run, and the
requests per job the emulator counted (2.0 for both, or the comparison is void).
"""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
from typing import Any

from . import _harness as h
from ._client import GENERATIONS, MODEL, PROVIDER, Meter, emulator_key

JOBS = 5000
QUICK_JOBS = 1000
CONCURRENCY = 64
#: The library's first poll, in seconds after submission: "immediately", give or take the
#: scheduler's batching quantum (a poll is due at most ``quantum`` later than asked).
FIRST_POLL = 0.001

DEFAULT_REPS = 5  # runs are short; five make the median robust to a busy moment
GOAL_CPU = 1.2  # library CPU per job <= 1.2x the floor's
GOAL_RATE = 0.85  # library jobs/s >= 0.85x the floor's


def _prompt(i: int) -> str:
    return f"overhead benchmark job {i}"


def _body(i: int) -> dict[str, str]:
    """The submit body the floor sends by hand: the library's fields for job ``i``."""
    return {"model": MODEL, "prompt": _prompt(i), "size": "1:1", "client_business_id": uuid.uuid4().hex}


# -- the two clients (each runs in its own process) -----------------------------------------------


def _collector(p: dict[str, Any]) -> None:
    """``"gc": False`` turns the cyclic garbage collector off for the run (the instructions
    scenario measures what it costs that way)."""
    if not p.get("gc", True):
        gc.disable()


def _settle_heap() -> None:
    """Collect what start-up left behind (imports, the event loop, the client's own set-up)
    just before the measured work, in every client alike.

    Start-up leaves tens of thousands of objects waiting for the collector's oldest generation;
    the one full collection they bring about (some 13 million instructions on this heap) would
    otherwise fall inside one run's count and not another's, by chance: the floor's collector
    share moved from 300 to 34,000 instructions per job between whole runs of the instructions
    scenario. Collected first, each run's collections are the ones its own work brings about.

    And the C allocator is put in one state for every client: asyncio reads a socket into a fresh
    256 KiB buffer, which glibc maps from the system and unmaps again (about 13 µs a read on
    this machine, against 2 µs for 64 KiB) until the process has freed a block larger than
    that, which raises its threshold for mapping. Whether a client's start-up had done so was
    chance (the floor's CPU per job was 153-164 µs in one run of this scenario and 180-196 µs
    in the next, with the same code from another directory). A block of 1 MiB freed here
    settles it alike for every client. (The library's own API connections read 64 KiB at a
    time, so its figure does not depend on it.)"""
    gc.collect()
    block = bytes(1 << 20)
    del block


def client_library(p: dict[str, Any]) -> dict[str, Any]:
    _collector(p)
    return asyncio.run(_library(p))


async def _library(p: dict[str, Any]) -> dict[str, Any]:
    from flux_async.models import GenerationRequest
    from flux_async.scheduler import PollPolicy
    from flux_async.session import Limits, Session

    n, c = int(p["jobs"]), int(p["concurrency"])
    limits = Limits(max_concurrent_submits=c, max_connections=c)
    policy = PollPolicy(first_poll=float(p["first_poll"]), max_in_flight=c)
    ok = failed = 0
    _settle_heap()
    with Meter() as meter:
        async with Session(
            PROVIDER,
            api_key=emulator_key(),
            base_url=p["base_url"],
            limits=limits,
            poll_policy=policy,
        ) as session:
            requests = (
                GenerationRequest(model=MODEL, prompt=_prompt(i), size="1:1") for i in range(n)
            )
            async for outcome in session.as_completed(requests):
                if outcome.ok:
                    ok += 1
                else:
                    failed += 1
            stats = session.statistics()
    return {
        **meter.as_dict(),
        "jobs": n,
        "ok": ok,
        "failed": failed,
        "client_polls_sent": stats.polls_sent,
        "client_submit_attempts": stats.submit_attempts,
    }


def client_floor(p: dict[str, Any]) -> dict[str, Any]:
    _collector(p)
    return asyncio.run(_floor(p))


async def _floor(p: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    n, c = int(p["jobs"]), int(p["concurrency"])
    url = p["base_url"] + GENERATIONS
    headers = {"Authorization": f"Bearer {emulator_key()}", **p["headers"]}
    counts = {"ok": 0, "failed": 0}
    _settle_heap()
    with Meter() as meter:
        connector = aiohttp.TCPConnector(limit=c, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:
            jobs = iter(range(n))

            async def worker() -> None:
                for i in jobs:
                    async with http.post(url, json=_body(i), headers=headers) as resp:
                        task = json.loads(await resp.read())
                    async with http.get(f"{url}/{task['id']}", headers=headers) as resp:
                        state = json.loads(await resp.read())
                    counts["ok" if state["status"] == "completed" else "failed"] += 1

            await asyncio.gather(*(worker() for _ in range(c)))
    return {**meter.as_dict(), "jobs": n, **counts}


# Two steps from the floor to the library, for the instructions scenario's breakdown: the floor's
# own loop (64 workers, one POST then one GET per job), first with each request sent through the
# library's transport, then also built and read by the library's codec from a GenerationRequest.
# And one beside them: the codec's loop with twice the workers on the same pool, as many requests
# under way as the library's 64 submits plus 64 polls.


def client_transport(p: dict[str, Any]) -> dict[str, Any]:
    _collector(p)
    return asyncio.run(_layers(p, codec=False))


def client_codec(p: dict[str, Any]) -> dict[str, Any]:
    _collector(p)
    return asyncio.run(_layers(p, codec=True))


def client_crowded(p: dict[str, Any]) -> dict[str, Any]:
    _collector(p)
    return asyncio.run(_layers(p, codec=True, workers=2 * int(p["concurrency"])))


async def _layers(p: dict[str, Any], *, codec: bool, workers: int | None = None) -> dict[str, Any]:
    from flux_async._http import HttpRequest
    from flux_async.models import GenerationRequest, TaskRef
    from flux_async.providers import get_codec
    from flux_async.transport import AiohttpTransport

    n, c = int(p["jobs"]), int(p["concurrency"])
    wire = get_codec(PROVIDER, api_key=emulator_key())
    headers = wire.build_poll(TaskRef(provider=PROVIDER, task_id="x")).headers  # key and codec's
    counts = {"ok": 0, "failed": 0}
    _settle_heap()
    with Meter() as meter:
        transport = AiohttpTransport(base_url=p["base_url"], max_connections=c)
        jobs = iter(range(n))

        async def by_hand() -> None:
            for i in jobs:
                sent = await transport.send(HttpRequest(method="POST", url=GENERATIONS, headers=headers, json=_body(i)))
                task = json.loads(sent.body)
                got = await transport.send(HttpRequest(method="GET", url=f"{GENERATIONS}/{task['id']}", headers=headers))
                state = json.loads(got.body)
                counts["ok" if state["status"] == "completed" else "failed"] += 1

        async def by_codec() -> None:
            for i in jobs:
                request = GenerationRequest(model=MODEL, prompt=_prompt(i), size="1:1")
                sent = await transport.send(wire.build_submit(request, client_business_id=uuid.uuid4().hex))
                ref = wire.parse_submit(sent, model=MODEL)
                state = wire.parse_poll(await transport.send(wire.build_poll(ref)), ref=ref)
                counts["ok" if state.result is not None else "failed"] += 1

        try:
            await asyncio.gather(*((by_codec if codec else by_hand)() for _ in range(workers or c)))
        finally:
            await transport.aclose()
    return {**meter.as_dict(), "jobs": n, **counts}


# -- the orchestration (parent process) -----------------------------------------------------------


def _library_wire() -> tuple[dict[str, str], list[str]]:
    """The headers (without the key) and body fields the library sends for these jobs, so the
    floor sends the very same requests."""
    from flux_async.models import GenerationRequest, TaskRef
    from flux_async.providers import get_codec

    codec = get_codec(PROVIDER, api_key=emulator_key())
    submit = codec.build_submit(
        GenerationRequest(model=MODEL, prompt=_prompt(0), size="1:1"), client_business_id="x"
    )
    poll = codec.build_poll(TaskRef(provider=PROVIDER, task_id="x"))
    assert dict(submit.headers) == dict(poll.headers)
    headers = {k: v for k, v in dict(submit.headers).items() if k.lower() != "authorization"}
    return headers, sorted((submit.json or {}).keys())


def run(
    *, quick: bool, reps: int, placement: h.Placement, reps_given: bool = False
) -> dict[str, Any]:
    from flux_async.emulator import Duration, Scenario

    jobs = QUICK_JOBS if quick else JOBS
    headers, fields = _library_wire()
    if fields != ["client_business_id", "model", "prompt", "size"]:
        raise RuntimeError(f"the library's submit body changed ({fields}); update the floor")
    base = {"jobs": jobs, "concurrency": CONCURRENCY}
    params: dict[str, dict[str, Any]] = {
        "library": {**base, "first_poll": FIRST_POLL},
        "floor": {**base, "headers": headers},
    }
    scenario = Scenario(seed=1, duration=Duration.fixed(0))
    runs: dict[str, list[dict[str, Any]]] = {"library": [], "floor": []}
    warmup: list[dict[str, Any]] = []
    emu = h.start_emulator(scenario, placement)
    try:
        for rep in range(-1, reps):
            # Alternate which client goes first, so a drift in the machine's load hits both.
            order = ("library", "floor") if rep % 2 else ("floor", "library")
            for kind in order:
                emu.reset()
                label = "warm-up" if rep < 0 else f"rep {rep + 1}/{reps}"
                h.log(f"overhead: {kind} {label} ({jobs} jobs)")
                emu_cpu0 = h.process_cpu(emu.pid)
                load0 = h.loadavg()
                result = h.run_client(
                    "overhead",
                    f"client_{kind}",
                    {**params[kind], "base_url": emu.base_url(PROVIDER)},
                    placement,
                    timeout=300,
                )
                emu_cpu1 = h.process_cpu(emu.pid)
                stats = emu.stats(tasks=False)
                req = stats["requests"]
                result.update(
                    kind=kind,
                    rep=rep,
                    loadavg_before=load0,
                    emulator_cpu_s=None
                    if emu_cpu0 is None or emu_cpu1 is None
                    else emu_cpu1 - emu_cpu0,
                    emulator={
                        k: stats[k]
                        for k in ("requests", "status_codes", "tasks_created", "duplicate_submits")
                    },
                    submits_per_job=req["submit"] / jobs,
                    polls_per_job=req["poll"] / jobs,
                    requests_per_job=(req["submit"] + req["poll"] + req["lookup"]) / jobs,
                    cpu_us_per_job=result["cpu_s"] / jobs * 1e6,
                    jobs_per_s=jobs / result["wall_s"],
                )
                if result["ok"] != jobs:
                    raise RuntimeError(f"overhead: {kind} finished {result['ok']} of {jobs} jobs")
                (warmup if rep < 0 else runs[kind]).append(result)
    finally:
        emu.stop()

    # Ratios pair each library run with the floor run of the same repetition.
    cpu_ratio = [
        lib["cpu_us_per_job"] / fl["cpu_us_per_job"]
        for lib, fl in zip(runs["library"], runs["floor"], strict=True)
    ]
    rate_ratio = [
        lib["jobs_per_s"] / fl["jobs_per_s"]
        for lib, fl in zip(runs["library"], runs["floor"], strict=True)
    ]
    figures = {
        kind: {
            "cpu_us_per_job": h.summary(r["cpu_us_per_job"] for r in runs[kind]),
            "jobs_per_s": h.summary(r["jobs_per_s"] for r in runs[kind]),
            "requests_per_job": h.summary(r["requests_per_job"] for r in runs[kind]),
            "emulator_cpu_share": h.summary(
                (r["emulator_cpu_s"] or 0.0) / r["wall_s"] for r in runs[kind]
            ),
        }
        for kind in runs
    }
    figures["ratio"] = {"cpu_per_job": h.summary(cpu_ratio), "jobs_per_s": h.summary(rate_ratio)}
    figures["library_own_cpu_us_per_job"] = h.summary(
        lib["cpu_us_per_job"] - fl["cpu_us_per_job"]
        for lib, fl in zip(runs["library"], runs["floor"], strict=True)
    )
    goals = {
        "cpu_per_job_ratio<=1.2": figures["ratio"]["cpu_per_job"]["median"] <= GOAL_CPU,
        "jobs_per_s_ratio>=0.85": figures["ratio"]["jobs_per_s"]["median"] >= GOAL_RATE,
        "requests_per_job==2": all(r["requests_per_job"] == 2.0 for k in runs for r in runs[k]),
    }
    return {
        "scenario": "overhead",
        "setup": {
            "jobs": jobs,
            "concurrency": CONCURRENCY,
            "connection_pool": CONCURRENCY,
            "provider": PROVIDER,
            "model": MODEL,
            "emulator_scenario": scenario.to_dict(),
            "library": {
                "limits": {"max_concurrent_submits": CONCURRENCY, "max_connections": CONCURRENCY},
                "poll_policy": {"first_poll": FIRST_POLL, "max_in_flight": CONCURRENCY},
            },
            "floor": f"{CONCURRENCY} aiohttp worker coroutines, each POST then GET per job",
            "repetitions": reps,
        },
        "figures": figures,
        "goals": goals,
        "runs": runs,
        "warmup": warmup,
    }


def render(result: dict[str, Any]) -> str:
    f = result["figures"]
    lib, fl, ratio = f["library"], f["floor"], f["ratio"]
    rows = [
        [
            "client CPU per job",
            h.fmt_range(lib["cpu_us_per_job"], "µs"),
            h.fmt_range(fl["cpu_us_per_job"], "µs"),
            h.fmt_range(ratio["cpu_per_job"], "x"),
            "≤ 1.2x floor",
            h.verdict(result["goals"]["cpu_per_job_ratio<=1.2"]),
        ],
        [
            "jobs per second",
            h.fmt_range(lib["jobs_per_s"], "/s"),
            h.fmt_range(fl["jobs_per_s"], "/s"),
            h.fmt_range(ratio["jobs_per_s"], "x"),
            "≥ 0.85x floor",
            h.verdict(result["goals"]["jobs_per_s_ratio>=0.85"]),
        ],
        [
            "requests per job (emulator)",
            h.fmt_range(lib["requests_per_job"]),
            h.fmt_range(fl["requests_per_job"]),
            "",
            "2.0 both",
            h.verdict(result["goals"]["requests_per_job==2"]),
        ],
        [
            "library's own CPU per job (library - floor)",
            h.fmt_range(f["library_own_cpu_us_per_job"], "µs"),
            "",
            "",
            "≤ 0.2x floor",
            "",
        ],
        [
            "emulator CPU busy (share of wall)",
            h.fmt_range(lib["emulator_cpu_share"]),
            h.fmt_range(fl["emulator_cpu_share"]),
            "",
            "(context)",
            "",
        ],
    ]
    s = result["setup"]
    title = (
        f"overhead — {s['jobs']} jobs done at first poll, concurrency {s['concurrency']}, "
        f"median (min-max) of {s['repetitions']} run{'s' if s['repetitions'] != 1 else ''} after a warm-up"
    )
    return (
        title
        + "\n\n"
        + h.table(["figure", "library", "floor (plain aiohttp)", "ratio", "goal", ""], rows)
    )
