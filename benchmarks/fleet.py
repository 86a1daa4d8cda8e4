"""Scenario ``fleet``: what the Redis path costs per job.

The ``overhead`` workload (jobs complete at their first poll, no download, 64 at a time) run by
the same library client twice: as a plain ``Session`` (the in-process coordinator and a
``MemoryLedger``), and with ``coordinator=RedisCoordinator(url)``, which also makes the session
record to the shared ``RedisLedger``: every job then takes its reservation against the shared
budget, is owned account-wide while it runs, is written ahead (intent, acceptance, settlement)
to Redis, and on BFL takes and frees an account-wide active-task slot. Both providers are run:
toapis (no account caps) and BFL (24 active tasks per account, so slots are taken).

A ``redis-server`` is started by the scenario on a free loopback port (no persistence), pinned
with the emulator; it is emptied and its counters reset (``FLUSHALL``, ``CONFIG RESETSTAT``)
before each run. Figures per job: client CPU, wall-clock time at concurrency 64, the requests the
emulator counted, and what Redis saw: its read events (``total_reads_processed``: one per
round trip, a pipeline counting once), the scripts run (``EVALSHA``) and every command executed
(those run inside the scripts included), and the server's own CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from . import _harness as h
from ._client import MODEL, Meter, emulator_key

JOBS = 2000
QUICK_JOBS = 300
CONCURRENCY = 64
FIRST_POLL = 0.001
PROVIDERS = ("toapis", "bfl")
VARIANTS = ("plain", "redis")
DEFAULT_REPS = 3
#: Read events of the orchestrator's own between the two snapshots of a run: the second
#: ``INFO`` of the first snapshot and the first of the second (each counts its own read).
_OWN_READS = 2


def _prompt(i: int) -> str:
    return f"fleet benchmark job {i}"


# -- the client (runs in its own process) -----------------------------------------------------------


def client_library(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_library(p))


async def _library(p: dict[str, Any]) -> dict[str, Any]:
    from flux_async.fleet import RedisCoordinator
    from flux_async.models import GenerationRequest
    from flux_async.scheduler import PollPolicy
    from flux_async.session import Limits, Session

    n, c = int(p["jobs"]), int(p["concurrency"])
    limits = Limits(max_concurrent_submits=c, max_connections=c)
    policy = PollPolicy(first_poll=float(p["first_poll"]), max_in_flight=c)
    coordinator = RedisCoordinator(p["redis"]) if p["redis"] else None
    ok = failed = 0
    with Meter() as meter:
        async with Session(
            p["provider"],
            api_key=emulator_key(),
            base_url=p["base_url"],
            limits=limits,
            poll_policy=policy,
            coordinator=coordinator,
        ) as session:
            requests = (GenerationRequest(model=MODEL, prompt=_prompt(i)) for i in range(n))
            async for outcome in session.as_completed(requests):
                if outcome.ok:
                    ok += 1
                else:
                    failed += 1
            stats = session.statistics()
    result: dict[str, Any] = {
        **meter.as_dict(),
        "jobs": n,
        "ok": ok,
        "failed": failed,
        "client_polls_sent": stats.polls_sent,
        "coordinator_failures": stats.coordinator_failures,
    }
    if coordinator is not None:
        cs = coordinator.statistics()
        result["coordinator"] = {"calls": cs.calls, "failures": cs.failures, "slot_waits": cs.slot_waits}
    return result


# -- redis-server (parent process) --------------------------------------------------------------------


class _RedisServer:
    """A ``redis-server`` on a free loopback port with a temporary directory, no persistence."""

    def __init__(self, cpu: int | None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "the fleet scenario needs redis-server on the PATH "
                "(Debian: apt-get install redis-server)"
            )
        try:
            import redis
        except ImportError as exc:
            raise RuntimeError(
                'the fleet scenario needs the redis extra (pip install -e ".[redis]")'
            ) from exc
        self._dir = tempfile.TemporaryDirectory(prefix="flux-async-bench-redis-")
        for _ in range(5):  # the port taken between choosing and binding it: choose again
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = int(sock.getsockname()[1])
            self.proc = subprocess.Popen(
                [
                    executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self._dir.name,
                    "--save", "", "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
            if self._wait_ready(redis.ConnectionError):
                break
            self._stop_process()
        else:
            self._dir.cleanup()
            raise RuntimeError("redis-server did not start")
        self.pinned = False
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {cpu})
                self.pinned = True
        self.version = str(self.client.info("server")["redis_version"])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def reset(self) -> None:
        self.client.flushall()
        self.client.config_resetstat()

    def counters(self) -> dict[str, Any]:
        stats = self.client.info("stats")
        commands = {
            name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in self.client.info("commandstats").items()
        }
        # Our own INFO calls are not the client's.
        commands.pop("info", None)
        commands.pop("config|resetstat", None)
        return {
            "reads_processed": int(stats["total_reads_processed"]),
            "commands": commands,
            "cpu_s": h.process_cpu(self.proc.pid),
        }

    def _wait_ready(self, unreachable: type[Exception]) -> bool:
        """True once this process answers; False when it exited, or another server (a test
        session's, say) holds the port: it would answer too, and must never be flushed."""
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                return int(self.client.info("server")["process_id"]) == self.proc.pid
            except unreachable:
                time.sleep(0.05)  # a server starting: nothing to wait on but its socket
        return False

    def _stop_process(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self._stop_process()
        self._dir.cleanup()


# -- the orchestration (parent process) -------------------------------------------------------------


def run(
    *, quick: bool, reps: int, placement: h.Placement, reps_given: bool = False
) -> dict[str, Any]:
    from flux_async.emulator import Duration, Scenario

    jobs = QUICK_JOBS if quick else JOBS
    scenario = Scenario(seed=1, duration=Duration.fixed(0))
    server = _RedisServer(placement.emulator_cpu)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {v: [] for v in VARIANTS} for p in PROVIDERS}
    warmup: list[dict[str, Any]] = []
    emu = None
    try:
        emu = h.start_emulator(scenario, placement)
        for provider in PROVIDERS:
            for rep in range(-1, reps):
                order = VARIANTS if rep % 2 else VARIANTS[::-1]
                for variant in order:
                    emu.reset()
                    server.reset()
                    label = "warm-up" if rep < 0 else f"rep {rep + 1}/{reps}"
                    h.log(f"fleet: {provider} {variant} {label} ({jobs} jobs)")
                    redis0 = server.counters()
                    load0 = h.loadavg()
                    params = {
                        "jobs": jobs, "concurrency": CONCURRENCY, "first_poll": FIRST_POLL,
                        "provider": provider, "base_url": emu.base_url(provider),
                        "redis": server.url if variant == "redis" else None,
                    }  # fmt: skip
                    result = h.run_client("fleet", "client_library", params, placement, timeout=600)
                    redis1 = server.counters()
                    stats = emu.stats(tasks=False)
                    req = stats["requests"]
                    if result["ok"] != jobs or stats["duplicate_submits"]:
                        raise RuntimeError(f"fleet: {provider} {variant} finished {result['ok']} of {jobs} jobs")
                    commands = {
                        k: n - redis0["commands"].get(k, 0)
                        for k, n in redis1["commands"].items()
                        if n - redis0["commands"].get(k, 0)
                    }
                    scripts = commands.get("evalsha", 0) + commands.get("eval", 0)
                    redis_cpu = (
                        None
                        if redis0["cpu_s"] is None or redis1["cpu_s"] is None
                        else redis1["cpu_s"] - redis0["cpu_s"]
                    )
                    result.update(
                        provider=provider,
                        variant=variant,
                        rep=rep,
                        loadavg_before=load0,
                        emulator={k: stats[k] for k in ("requests", "status_codes", "tasks_created", "duplicate_submits", "rate_limited")},
                        redis_commands=commands,
                        requests_per_job=(req["submit"] + req["poll"] + req["lookup"]) / jobs,
                        cpu_us_per_job=result["cpu_s"] / jobs * 1e6,
                        wall_ms_per_job=result["wall_s"] / jobs * 1e3,
                        jobs_per_s=jobs / result["wall_s"],
                        redis_round_trips_per_job=(
                            redis1["reads_processed"] - redis0["reads_processed"] - _OWN_READS
                        ) / jobs,
                        redis_scripts_per_job=scripts / jobs,
                        redis_commands_per_job=sum(commands.values()) / jobs,
                        redis_cpu_us_per_job=None if redis_cpu is None else redis_cpu / jobs * 1e6,
                    )
                    (warmup if rep < 0 else runs[provider][variant]).append(result)
    finally:
        if emu is not None:
            emu.stop()
        server.stop()

    figures: dict[str, Any] = {}
    for provider in PROVIDERS:
        plain, red = runs[provider]["plain"], runs[provider]["redis"]
        per = {
            variant: {
                name: h.summary(r[name] for r in runs[provider][variant] if r[name] is not None)
                for name in (
                    "cpu_us_per_job", "wall_ms_per_job", "jobs_per_s", "requests_per_job",
                    "redis_round_trips_per_job", "redis_scripts_per_job", "redis_commands_per_job",
                    "redis_cpu_us_per_job",
                )
            }
            for variant in VARIANTS
        }  # fmt: skip
        pairs = list(zip(red, plain, strict=True))
        per["redis_minus_plain"] = {
            "cpu_us_per_job": h.summary(r["cpu_us_per_job"] - p["cpu_us_per_job"] for r, p in pairs),
            "wall_ms_per_job": h.summary(r["wall_ms_per_job"] - p["wall_ms_per_job"] for r, p in pairs),
        }
        per["ratio"] = {
            "cpu_per_job": h.summary(r["cpu_us_per_job"] / p["cpu_us_per_job"] for r, p in pairs),
            "wall_per_job": h.summary(r["wall_ms_per_job"] / p["wall_ms_per_job"] for r, p in pairs),
        }
        figures[provider] = per
    return {
        "scenario": "fleet",
        "setup": {
            "jobs": jobs,
            "concurrency": CONCURRENCY,
            "providers": list(PROVIDERS),
            "model": MODEL,
            "emulator_scenario": scenario.to_dict(),
            "library": {
                "limits": {"max_concurrent_submits": CONCURRENCY, "max_connections": CONCURRENCY},
                "poll_policy": {"first_poll": FIRST_POLL, "max_in_flight": CONCURRENCY},
                "redis": "coordinator=RedisCoordinator(url) (defaults), which records to its RedisLedger",
            },
            "redis_server": {"version": server.version, "pinned_with_emulator": server.pinned},
            "repetitions": reps,
        },
        "figures": figures,
        "runs": runs,
        "warmup": warmup,
    }


def render(result: dict[str, Any]) -> str:
    s = result["setup"]
    rows: list[list[str]] = []
    for provider in s["providers"]:
        f = result["figures"][provider]
        plain, red, diff, ratio = f["plain"], f["redis"], f["redis_minus_plain"], f["ratio"]
        rows += [
            [provider, "client CPU per job", h.fmt_range(plain["cpu_us_per_job"], "µs"),
             h.fmt_range(red["cpu_us_per_job"], "µs"), h.fmt_range(diff["cpu_us_per_job"], "µs"),
             h.fmt_range(ratio["cpu_per_job"], "x")],
            ["", "wall-clock per job (concurrency 64)", h.fmt_range(plain["wall_ms_per_job"], "ms"),
             h.fmt_range(red["wall_ms_per_job"], "ms"), h.fmt_range(diff["wall_ms_per_job"], "ms"),
             h.fmt_range(ratio["wall_per_job"], "x")],
            ["", "requests per job (emulator)", h.fmt_range(plain["requests_per_job"]),
             h.fmt_range(red["requests_per_job"]), "", ""],
            ["", "Redis round trips per job", h.fmt_range(plain["redis_round_trips_per_job"]),
             h.fmt_range(red["redis_round_trips_per_job"]), "", ""],
            ["", "Redis scripts run per job", h.fmt_range(plain["redis_scripts_per_job"]),
             h.fmt_range(red["redis_scripts_per_job"]), "", ""],
            ["", "Redis commands executed per job", h.fmt_range(plain["redis_commands_per_job"]),
             h.fmt_range(red["redis_commands_per_job"]), "", ""],
            ["", "redis-server CPU per job", h.fmt_range(plain["redis_cpu_us_per_job"], "µs"),
             h.fmt_range(red["redis_cpu_us_per_job"], "µs"), "", ""],
        ]  # fmt: skip
    title = (
        f"fleet — {s['jobs']} jobs done at first poll, concurrency {s['concurrency']}, the same client "
        f"without and with coordinator=RedisCoordinator(url); median (min-max) of {s['repetitions']} "
        f"run{'s' if s['repetitions'] != 1 else ''} after a warm-up"
    )
    return title + "\n\n" + h.table(["provider", "figure", "plain", "with Redis", "difference", "ratio"], rows)
