"""Self-benchmark of the emulator: requests/s it serves and memory per live task.

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

Standard library and the emulator's own modules only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ._core import Core
from ._sampling import Duration
from ._scenario import DEFAULT_API_KEY, Scenario
from ._validate import Spec

__all__ = ["main"]


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class _Client(asyncio.Protocol):
    """One keep-alive connection keeping ``depth`` requests in flight (1 = no pipelining).

    A bare protocol rather than asyncio streams: the load generator must cost far less per
    request than the server it measures.
    """

    def __init__(self, load: _Load, depth: int) -> None:
        self.load = load
        self.depth = depth
        self.buf = bytearray()
        self.need: int | None = None
        self.status = 0
        self.inflight: collections.deque[int] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        batch = []
        for _ in range(self.depth):
            index = self.load.take()
            if index is None:
                break
            self.inflight.append(index)
            batch.append(self.load.make(index))
        if batch:
            transport.write(b"".join(batch))
        else:
            transport.close()

    def _next(self) -> None:
        assert self.transport is not None
        index = self.load.take()
        if index is None:
            if not self.inflight:
                self.transport.close()
            return
        self.inflight.append(index)
        self.transport.write(self.load.make(index))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"content-length:")
                self.need = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
                del buf[: end + 4]
            if len(buf) < self.need:
                return
            body = bytes(buf[: self.need])
            del buf[: self.need]
            self.need = None
            self.load.done(self.inflight.popleft(), self.status, body)
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Load:
    """A bounded request count shared by the connections of one phase."""

    def __init__(
        self,
        count: int,
        make: Callable[[int], bytes],
        on_body: Callable[[int, bytes], None] | None,
    ) -> None:
        self.count = count
        self.make = make
        self.on_body = on_body
        self.issued = 0
        self.errors = 0

    def take(self) -> int | None:
        if self.issued >= self.count:
            return None
        self.issued += 1
        return self.issued - 1

    def done(self, index: int, status: int, body: bytes) -> None:
        if status != 200:
            self.errors += 1
        elif self.on_body is not None:
            self.on_body(index, body)


def _post(host: str, path: str, headers: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _get(host: str, path: str, headers: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode()


async def _phase(
    port: int,
    concurrency: int,
    count: int,
    make: Callable[[int], bytes],
    on_body: Callable[[int, bytes], None] | None = None,
    depth: int = 1,
) -> tuple[float, int]:
    """Send ``count`` requests built by ``make(i)`` over ``concurrency`` connections."""
    loop = asyncio.get_running_loop()
    load = _Load(count, make, on_body)
    start = time.perf_counter()
    clients = []
    for _ in range(concurrency):
        _, client = await loop.create_connection(lambda: _Client(load, depth), "127.0.0.1", port)
        clients.append(client)
    await asyncio.gather(*(c.closed for c in clients))
    elapsed = time.perf_counter() - start
    return elapsed, load.errors


class _Server:
    """A child process serving HTTP on 127.0.0.1 (the emulator, or the bare-aiohttp floor)."""

    def __init__(self, args: list[str], cpus: set[int] | None) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])
        self.pinned = False
        if cpus and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(self.proc.pid, cpus)
                self.pinned = True
            except OSError:
                pass

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _serve_floor() -> None:
    """The baseline: bare aiohttp handlers answering a constant small JSON body."""
    from aiohttp import web

    reply = b'{"id":"00000000-0000-4000-a000-000000000000","status":"Pending","progress":null}'

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=reply, content_type="application/json")

    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/floor", get)
        app.router.add_post("/floor", post)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


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
    emu: _Server, floor: _Server, requests: int, concurrency: int, repeat: int, depth: int
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
        return _post(host, "/toapis/v1/images/generations", bearer, body)

    def keep_toapis(_i: int, body: bytes) -> None:
        toapis_ids.append(json.loads(body)["id"])

    def toapis_poll(i: int) -> bytes:
        return _get(host, f"/toapis/v1/images/generations/{toapis_ids[i % len(toapis_ids)]}",
                    bearer)

    def bfl_submit(_i: int) -> bytes:
        body = json.dumps({"prompt": f"bench prompt {next(counter)}",
                           "aspect_ratio": "16:9"}).encode()
        return _post(host, "/bfl/v1/flux-kontext-pro", xkey, body)

    def keep_bfl(_i: int, body: bytes) -> None:
        url = json.loads(body)["polling_url"]
        bfl_urls.append(url[url.index("/bfl-us1/"):])

    def bfl_poll(i: int) -> bytes:
        return _get(host, bfl_urls[i % len(bfl_urls)], xkey)

    floor_body = json.dumps({"prompt": "bench prompt 0", "aspect_ratio": "16:9"}).encode()

    def floor_get(_i: int) -> bytes:
        return _get(fhost, "/floor", xkey)

    def floor_post(_i: int) -> bytes:
        return _post(fhost, "/floor", xkey, floor_body)

    submits = max(1, requests // 4)
    phase_type = tuple[_Row, _Server, Callable[[int], bytes], Callable[[int, bytes], None] | None]
    phases: list[phase_type] = [
        (_Row("floor GET", "bare aiohttp", requests), floor, floor_get, None),
        (_Row("floor POST", "bare aiohttp", submits), floor, floor_post, None),
        (_Row("toapis submit", "emulator", submits), emu, toapis_submit, keep_toapis),
        (_Row("toapis poll", "emulator", requests), emu, toapis_poll, None),
        (_Row("bfl submit", "emulator", submits), emu, bfl_submit, keep_bfl),
        (_Row("bfl poll", "emulator", requests), emu, bfl_poll, None),
    ]
    # Warm-up: connections, code paths and allocators, so no timed phase pays for them.
    await _phase(emu.port, concurrency, 2000, toapis_submit, keep_toapis)
    await _phase(emu.port, concurrency, 2000, bfl_submit, keep_bfl)
    await _phase(floor.port, concurrency, 2000, floor_get)
    # Repetitions interleave the phases so that a noisy moment hits them all alike.
    for _ in range(repeat):
        for row, server, make, keep in phases:
            cpu0 = _cpu_seconds(server.proc.pid)
            elapsed, errors = await _phase(server.port, concurrency, row.count, make, keep, depth)
            cpu1 = _cpu_seconds(server.proc.pid)
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
        _serve_floor()
        return 0

    ncpu = os.cpu_count() or 1
    server_cpus = {0} if ncpu >= 2 else None
    scenario = Scenario(duration=Duration.fixed(3600.0), active_task_cap={})
    emu = _Server(["-m", "flux_async.emulator", "--port", "0", "--json",
                   "--scenario", json.dumps(scenario.to_dict())], server_cpus)
    floor = _Server(["-m", "flux_async.emulator._selfbench", "--serve-floor"], server_cpus)
    pinned_self = False
    try:
        if ncpu >= 2 and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, {1})
                pinned_self = True
            except OSError:
                pinned_self = False
        rss0 = _rss_bytes(emu.proc.pid)
        rows = asyncio.run(
            _throughput(emu, floor, args.requests, args.concurrency, args.repeat, args.pipeline)
        )
        rss1 = _rss_bytes(emu.proc.pid)
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
