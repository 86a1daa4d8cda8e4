"""Self-benchmark of the emulator: requests/s it serves and memory per live task.

Owns the benchmark's phases, its figures and its command line; the load generator and the
servers it measures are :mod:`._loadgen`'s. The standard library and the emulator's own
modules only: never the client library (what is measured is the emulator alone).

Run ``python -m flux_async.emulator._selfbench [--requests N] [--tasks N] [--concurrency C]``.

- Throughput: the emulator runs in a child process pinned to CPU 0, this process (the load
  generator) pins itself to CPU 1 where ``os.sched_setaffinity`` allows. The load generator is a
  minimal keep-alive HTTP/1.1 client on a bare asyncio protocol (so that it costs far less than
  the server it measures), sending a bounded number of requests over 127.0.0.1 per phase:
  toapis submits, toapis polls, BFL submits, BFL polls. The baseline, measured in the same run
  with the same client and on the same core, is a bare aiohttp server answering a constant
  body. Reported per phase: requests/s, the server's CPU time per request (from /proc), and its
  inverse, what one core of that server can serve; best and median of interleaved repetitions.
- Memory: ``tracemalloc`` around creating ``--tasks`` live tasks in an in-process core (long
  durations, so all stay active), divided by the count; plus the child's RSS growth per task
  after the HTTP phases.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
import tracemalloc
import urllib.request
from collections.abc import Callable

from ._core import Core
from ._loadgen import (
    Server,
    cpu_seconds,
    get_request,
    post_request,
    rss_bytes,
    run_phase,
    serve_floor,
)
from ._sampling import Duration
from ._scenario import DEFAULT_API_KEY, Scenario
from ._validate import Spec

__all__ = ["main"]


class _Row:
    """Repetitions of one phase: wall rates and server CPU per request."""

    def __init__(self, name: str, server: str, count: int) -> None:
        self.name = name
        self.server = server
        self.count = count
        self.rates: list[float] = []
        self.cpu_us: list[float] = []
        self.errors = 0

    def as_dict(self) -> dict[str, object]:
        rates = sorted(self.rates)
        cpu = sorted(self.cpu_us)
        row: dict[str, object] = {
            "phase": self.name,
            "server": self.server,
            "requests": self.count * len(rates),
            "errors": self.errors,
            "requests_per_s_best": round(rates[-1]),
            "requests_per_s_median": round(rates[len(rates) // 2]),
        }
        if cpu:
            row["server_cpu_us_per_request_best"] = round(cpu[0], 1)
            row["server_cpu_us_per_request_median"] = round(cpu[len(cpu) // 2], 1)
            row["capacity_per_core_best"] = round(1e6 / cpu[0])
            row["capacity_per_core_median"] = round(1e6 / cpu[len(cpu) // 2])
        return row


async def _throughput(
    emu: Server, floor: Server, requests: int, concurrency: int, repeat: int, depth: int
) -> list[dict[str, object]]:
    host = f"127.0.0.1:{emu.port}"
    fhost = f"127.0.0.1:{floor.port}"
    bearer = f"Authorization: Bearer {DEFAULT_API_KEY}\r\n"
    xkey = f"x-key: {DEFAULT_API_KEY}\r\n"
    toapis_ids: list[str] = []
    bfl_urls: list[str] = []
    counter = iter(range(10**9))

    def toapis_submit(_i: int) -> bytes:
        i = next(counter)
        body = json.dumps({"model": "flux-kontext-pro", "prompt": f"bench prompt {i}",
                           "size": "1:1", "client_business_id": f"bench-{i}"}).encode()
        return post_request(host, "/toapis/v1/images/generations", bearer, body)

    def keep_toapis(_i: int, body: bytes) -> None:
        toapis_ids.append(json.loads(body)["id"])

    def toapis_poll(i: int) -> bytes:
        ident = toapis_ids[i % len(toapis_ids)]
        return get_request(host, f"/toapis/v1/images/generations/{ident}", bearer)

    def bfl_submit(_i: int) -> bytes:
        body = json.dumps({"prompt": f"bench prompt {next(counter)}",
                           "aspect_ratio": "16:9"}).encode()
        return post_request(host, "/bfl/v1/flux-kontext-pro", xkey, body)

    def keep_bfl(_i: int, body: bytes) -> None:
        url = json.loads(body)["polling_url"]
        bfl_urls.append(url[url.index("/bfl-us1/"):])

    def bfl_poll(i: int) -> bytes:
        return get_request(host, bfl_urls[i % len(bfl_urls)], xkey)

    floor_body = json.dumps({"prompt": "bench prompt 0", "aspect_ratio": "16:9"}).encode()

    def floor_get(_i: int) -> bytes:
        return get_request(fhost, "/floor", xkey)

    def floor_post(_i: int) -> bytes:
        return post_request(fhost, "/floor", xkey, floor_body)

    submits = max(1, requests // 4)
    phase_type = tuple[_Row, Server, Callable[[int], bytes], Callable[[int, bytes], None] | None]
    phases: list[phase_type] = [
        (_Row("floor GET", "bare aiohttp", requests), floor, floor_get, None),
        (_Row("floor POST", "bare aiohttp", submits), floor, floor_post, None),
        (_Row("toapis submit", "emulator", submits), emu, toapis_submit, keep_toapis),
        (_Row("toapis poll", "emulator", requests), emu, toapis_poll, None),
        (_Row("bfl submit", "emulator", submits), emu, bfl_submit, keep_bfl),
        (_Row("bfl poll", "emulator", requests), emu, bfl_poll, None),
    ]
    # Warm-up: connections, code paths and allocators, so no timed phase pays for them.
    await run_phase(emu.port, concurrency, 2000, toapis_submit, keep_toapis)
    await run_phase(emu.port, concurrency, 2000, bfl_submit, keep_bfl)
    await run_phase(floor.port, concurrency, 2000, floor_get)
    # Repetitions interleave the phases so that a noisy moment hits them all alike.
    for _ in range(repeat):
        for row, server, make, keep in phases:
            cpu0 = cpu_seconds(server.proc.pid)
            elapsed, errors = await run_phase(
                server.port, concurrency, row.count, make, keep, depth
            )
            cpu1 = cpu_seconds(server.proc.pid)
            row.errors += errors
            row.rates.append(row.count / elapsed)
            if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
                row.cpu_us.append((cpu1 - cpu0) / row.count * 1e6)
    return [row.as_dict() for row, _, _, _ in phases]


def _memory_per_task(tasks: int) -> dict[str, object]:
    """tracemalloc bytes per live task in an in-process core: everything a task keeps alive
    (its record, id, prompt and client_business_id strings, index entries, active-heap slots)."""
    core = Core(Scenario(duration=Duration.fixed(3600.0), active_task_cap={}), time.time)
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for i in range(tasks):
        spec = Spec(model="flux-kontext-pro", prompt=f"a watercolour fox number {i} in the snow",
                    ratio="16:9", fmt="jpg", cbid=f"job-{i:08d}")
        core.create("toapis", spec, i, False)
    del spec
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "live_tasks": tasks,
        "active": len(core.active["toapis"]),
        "bytes_per_task": round((after - before) / tasks),
        "total_mib": round((after - before) / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m flux_async.emulator._selfbench")
    parser.add_argument("--requests", type=int, default=20000, help="requests per poll phase "
                        "(submit phases send a quarter of it)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of every phase")
    parser.add_argument("--pipeline", type=int, default=1, help="requests in flight per "
                        "connection (>1 pipelines, so the Python load generator is no bottleneck)")
    parser.add_argument("--tasks", type=int, default=100_000, help="live tasks for memory")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor()
        return 0

    ncpu = os.cpu_count() or 1
    server_cpus = {0} if ncpu >= 2 else None
    scenario = Scenario(duration=Duration.fixed(3600.0), active_task_cap={})
    emu = Server(["-m", "flux_async.emulator", "--port", "0", "--json",
                   "--scenario", json.dumps(scenario.to_dict())], server_cpus)
    floor = Server(["-m", "flux_async.emulator._selfbench", "--serve-floor"], server_cpus)
    pinned_self = False
    try:
        if ncpu >= 2 and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, {1})
                pinned_self = True
            except OSError:
                pinned_self = False
        rss0 = rss_bytes(emu.proc.pid)
        rows = asyncio.run(
            _throughput(emu, floor, args.requests, args.concurrency, args.repeat, args.pipeline)
        )
        rss1 = rss_bytes(emu.proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{emu.port}/_emulator/stats?tasks=0") as r:
            created = int(json.loads(r.read())["tasks_created"])
    finally:
        emu.stop()
        floor.stop()
    memory = _memory_per_task(args.tasks)

    print(f"flux_async emulator self-benchmark: cpus={ncpu}, servers pinned to CPU 0: "
          f"{emu.pinned}, load generator pinned to CPU 1: {pinned_self}, "
          f"concurrency {args.concurrency}, pipeline depth {args.pipeline}, "
          f"{args.repeat} interleaved repetitions per phase")
    print(f"{'phase':<15}{'requests':>10}{'errors':>7}{'req/s best':>12}{'median':>8}"
          f"{'server CPU us/req':>19}{'median':>8}{'capacity/core':>15}{'median':>8}")
    for row in rows:
        print(f"{row['phase']!s:<15}{row['requests']!s:>10}{row['errors']!s:>7}"
              f"{row['requests_per_s_best']!s:>12}{row['requests_per_s_median']!s:>8}"
              f"{row.get('server_cpu_us_per_request_best', '-')!s:>19}"
              f"{row.get('server_cpu_us_per_request_median', '-')!s:>8}"
              f"{row.get('capacity_per_core_best', '-')!s:>15}"
              f"{row.get('capacity_per_core_median', '-')!s:>8}")
    by_name = {str(r["phase"]): r for r in rows}
    for name, base in (("toapis poll", "floor GET"), ("bfl poll", "floor GET"),
                       ("toapis submit", "floor POST"), ("bfl submit", "floor POST")):
        a = by_name[name].get("server_cpu_us_per_request_median")
        b = by_name[base].get("server_cpu_us_per_request_median")
        if isinstance(a, float) and isinstance(b, float) and b > 0:
            print(f"  {name}: server CPU {a / b:.2f}x the bare-aiohttp {base} (medians)")
    print(f"memory: {memory['bytes_per_task']} B per live task (tracemalloc, "
          f"{memory['live_tasks']} live tasks: {memory['total_mib']} MiB)")
    if rss0 is not None and rss1 is not None and created:
        print(f"memory: emulator RSS grew {(rss1 - rss0) / 2**20:.1f} MiB for {created} tasks "
              f"created over HTTP ({(rss1 - rss0) / created:.0f} B per task, allocator slack "
              "and caches included)")
    if args.json:
        print(json.dumps({"throughput": rows, "memory": memory, "tasks_via_http": created,
                          "rss_growth": None if rss0 is None or rss1 is None else rss1 - rss0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
