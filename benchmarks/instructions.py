"""Scenario ``instructions``: the overhead comparison, counted in CPU instructions.

The same two clients as ``overhead`` (the library and the plain-aiohttp floor, jobs done at the
first poll, concurrency 64) run under valgrind's instruction counter instead of a clock. On a
shared virtual machine the CPU time of a run moves by tens of percent with the neighbours' load;
the number of instructions a run executes barely moves at all, so this ratio is the one to
compare two versions of the library with.

Each client runs twice, with a small and a large number of jobs, in fresh processes; the
difference divided by the difference in jobs is the instructions per job, with start-up,
imports and the connection pool's first connections cancelled out. Every count is taken a second
time with the cyclic garbage collector off (``gc.disable()`` in the client), so that the table
also says how many instructions per job the collector costs each client. (Every client collects
what start-up left behind just before its measured work: otherwise the one full collection
start-up's objects bring about falls inside one run's count and not another's by chance.) One more client is
counted beside the steps: the codec's with twice the workers on the same pool, as many requests
under way as the library's submits plus polls, to say what that crowding alone costs. Needs ``valgrind`` on
the PATH; not part of ``all`` (about three minutes per repetition: a client runs some fifty times
slower under valgrind). It complements the ``overhead`` figures; the goal in BENCHMARKS.md is stated in CPU
time, which ``overhead`` measures.
"""

from __future__ import annotations

import itertools
import re
import shutil
from typing import Any

from . import _harness as h
from ._client import PROVIDER
from .overhead import CONCURRENCY, FIRST_POLL, GOAL_CPU, _library_wire

DEFAULT_REPS = 1  # instruction counts repeat to within a fraction of a percent
JOBS = (200, 1200)
QUICK_JOBS = (100, 400)
_VALGRIND = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
#: The floor, two steps towards the library (the floor's loop with each request sent through the
#: library's transport, then also built and read by its codec), and the library.
KINDS = ("floor", "transport", "codec", "library")
#: Beside the steps: the codec's client with twice the workers on the same pool of connections,
#: as many requests under way as the library's submits plus polls (what crowding alone costs).
CROWDED = "crowded"
_I_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def _instructions(stderr: str) -> int:
    match = _I_REFS.search(stderr)
    if match is None:
        raise RuntimeError("valgrind printed no instruction count")
    return int(match.group(1).replace(",", ""))


def run(
    *, quick: bool, reps: int, placement: h.Placement, reps_given: bool = False
) -> dict[str, Any]:
    from flux_async.emulator import Duration, Scenario

    if shutil.which("valgrind") is None:
        raise RuntimeError("the instructions scenario needs valgrind on the PATH")
    small, large = QUICK_JOBS if quick else JOBS
    headers, _fields = _library_wire()
    base = {"concurrency": CONCURRENCY}
    params: dict[str, dict[str, Any]] = {
        "library": {**base, "first_poll": FIRST_POLL},
        "floor": {**base, "headers": headers},
        "transport": base,
        "codec": base,
        CROWDED: base,
    }
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in (*KINDS, CROWDED)}
    emu = h.start_emulator(Scenario(seed=1, duration=Duration.fixed(0)), placement)
    try:
        for rep in range(reps):
            for kind in (*KINDS, CROWDED):
                record: dict[str, Any] = {"rep": rep}
                for collector in (True, False):
                    counts: dict[int, int] = {}
                    requests: dict[int, float] = {}
                    for jobs in (small, large):
                        emu.reset()
                        how = "" if collector else ", garbage collector off"
                        h.log(f"instructions: {kind} {jobs} jobs under valgrind{how} (rep {rep + 1}/{reps})")
                        result = h.run_client(
                            "overhead",
                            f"client_{kind}",
                            {**params[kind], "jobs": jobs, "base_url": emu.base_url(PROVIDER), "gc": collector},
                            placement,
                            timeout=900,
                            prefix=_VALGRIND,
                        )
                        if result["ok"] != jobs:
                            raise RuntimeError(f"instructions: {kind} finished {result['ok']} of {jobs} jobs")
                        counts[jobs] = _instructions(result["stderr"])
                        req = emu.stats(tasks=False)["requests"]
                        requests[jobs] = (req["submit"] + req["poll"] + req["lookup"]) / jobs
                    per_job = (counts[large] - counts[small]) / (large - small)
                    if collector:
                        record.update(
                            instructions={str(k): v for k, v in counts.items()},
                            requests_per_job={str(k): v for k, v in requests.items()},
                            instructions_per_job=per_job,
                        )
                    else:
                        record["instructions_gc_off"] = {str(k): v for k, v in counts.items()}
                        record["instructions_per_job_gc_off"] = per_job
                        record["gc_instructions_per_job"] = record["instructions_per_job"] - per_job
                runs[kind].append(record)
    finally:
        emu.stop()
    ratio = [
        lib["instructions_per_job"] / fl["instructions_per_job"]
        for lib, fl in zip(runs["library"], runs["floor"], strict=True)
    ]
    ratio_gc_off = [
        lib["instructions_per_job_gc_off"] / fl["instructions_per_job_gc_off"]
        for lib, fl in zip(runs["library"], runs["floor"], strict=True)
    ]
    figures = {
        kind: {
            name: h.summary(r[name] for r in runs[kind])
            for name in ("instructions_per_job", "gc_instructions_per_job", "instructions_per_job_gc_off")
        }
        for kind in runs
    }
    figures["ratio"] = {
        "instructions_per_job": h.summary(ratio),
        "instructions_per_job_gc_off": h.summary(ratio_gc_off),
    }
    # Each step's instructions per job over the step before it, with the collector off (the
    # steady count; the collector's share moves by several thousand between runs).
    steps: dict[str, Any] = {}
    for before, after in itertools.pairwise(KINDS):
        steps[after] = h.summary(
            b["instructions_per_job_gc_off"] - a["instructions_per_job_gc_off"]
            for a, b in zip(runs[before], runs[after], strict=True)
        )
    figures["steps"] = steps
    # What twice the requests under way cost the codec's client, with the collector and without.
    figures["crowding"] = {
        name: h.summary(
            b[name] - a[name] for a, b in zip(runs["codec"], runs[CROWDED], strict=True)
        )
        for name in ("instructions_per_job", "instructions_per_job_gc_off")
    }
    return {
        "scenario": "instructions",
        "setup": {
            "jobs": [small, large],
            "concurrency": CONCURRENCY,
            "clients": "the overhead scenario's library and floor clients, and two steps between "
            "them (client_transport, client_codec in overhead.py)",
            "counter": " ".join(_VALGRIND),
            "repetitions": reps,
            "garbage_collector": "each count taken twice: as is, and with gc.disable() in the client",
        },
        "figures": figures,
        "goals": {"instructions_per_job_ratio<=1.2": figures["ratio"]["instructions_per_job"]["median"] <= GOAL_CPU},
        "runs": runs,
    }


def render(result: dict[str, Any]) -> str:
    f = result["figures"]
    s = result["setup"]
    rows = [
        [
            "instructions per job",
            h.fmt_range(f["library"]["instructions_per_job"]),
            h.fmt_range(f["floor"]["instructions_per_job"]),
            h.fmt_range(f["ratio"]["instructions_per_job"], "x"),
            "≤ 1.2x floor (the CPU goal, counted)",
            h.verdict(result["goals"]["instructions_per_job_ratio<=1.2"]),
        ],
        [
            "of which the garbage collector",
            h.fmt_range(f["library"]["gc_instructions_per_job"]),
            h.fmt_range(f["floor"]["gc_instructions_per_job"]),
            "",
            "",
            "",
        ],
        [
            "with the collector off",
            h.fmt_range(f["library"]["instructions_per_job_gc_off"]),
            h.fmt_range(f["floor"]["instructions_per_job_gc_off"]),
            h.fmt_range(f["ratio"]["instructions_per_job_gc_off"], "x"),
            "",
            "",
        ],
    ]
    names = {
        "floor": "the floor (plain aiohttp)",
        "transport": "+ the library's transport (HttpRequest in, HttpResponse out)",
        "codec": "+ its codec and a GenerationRequest (built, sent, read)",
        "library": "+ the session (validation, ledger, budget, scheduler, batch): the library",
    }
    steps = [
        [
            names[kind],
            h.fmt_range(f[kind]["instructions_per_job_gc_off"]),
            "" if kind == "floor" else h.fmt_range(f["steps"][kind]),
        ]
        for kind in KINDS
    ]
    title = (
        f"instructions — the overhead clients under valgrind, {s['jobs'][0]} and {s['jobs'][1]} "
        f"jobs, concurrency {s['concurrency']}"
    )
    text = (
        title
        + "\n\n"
        + h.table(["figure", "library", "floor (plain aiohttp)", "ratio", "goal", ""], rows)
        + "\n\nFrom the floor to the library, one layer at a time (instructions per job, collector off)\n\n"
        + h.table(["client", "instructions per job", "added by the step"], steps)
    )
    if "crowding" not in f:  # a result from before the crowded client was counted
        return text
    c = s["concurrency"]
    crowded = [
        [
            label,
            h.fmt_range(f["codec"][name]),
            h.fmt_range(f[CROWDED][name]),
            h.fmt_range(f["crowding"][name]),
        ]
        for label, name in (
            ("with the collector", "instructions_per_job"),
            ("collector off", "instructions_per_job_gc_off"),
        )
    ]
    return (
        text
        + f"\n\nTwice the requests under way: the codec's client with {2 * c} workers on its {c} "
        f"connections, as many as the library's {c} submits and {c} polls (instructions per job)\n\n"
        + h.table(["", f"{c} workers", f"{2 * c} workers", "added"], crowded)
    )
