"""Scenario ``webhooks``: the polling workload with webhooks on, against the same workload polled.

The durations of ``polling`` (log-normal, median 10 s, sigma 0.35, seed 3, progress reported as
each provider does), 1,000 jobs per provider (``--jobs N``), run three ways on toapis, apimart
and BFL:

- **polled**: no webhooks, the default ``PollPolicy()``;
- **webhooks**: ``Session(webhook_url=..., webhook_secret=...)`` with the library's aiohttp
  receiver (``flux_async.receivers.add_webhook_routes``) in the client process; the emulator
  posts every completion as the provider does (toapis signed with the key's secret, apimart to
  ``<webhook_url>/callback`` unsigned, BFL signed with the secret sent in the submit);
- **webhooks, 20% lost**: the same, with ``WebhookFaultRates(lost=0.2)``: a fifth of the
  completions are never announced, and only the sparse safety-net polls find them.

The three providers run at once, one ``Session`` each, in one client process per way (each
provider's durations are drawn from its own sequence, so every way sees the same ones). Per
provider and way: status requests per job (the emulator's poll and lookup counts), detection
delay p50/p90/p99 as the emulator measures it (a task's first poll answered with its terminal
status minus its completion), jobs completed, webhooks delivered and lost. With lost webhooks,
the jobs whose webhook arrived and those whose webhook was lost are also reported apart.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import socket
import time
from typing import Any

from . import _harness as h
from ._client import MODEL, Meter, emulator_key
from .polling import _Deadline

PROVIDERS = ("toapis", "apimart", "bfl")
#: The ways each provider's jobs are run: (name, webhooks on, share of webhooks lost).
MODES: tuple[tuple[str, bool, float], ...] = (
    ("polled", False, 0.0),
    ("webhooks", True, 0.0),
    ("webhooks, 20% lost", True, 0.2),
)
JOBS = 1000  # per provider (the figure)
QUICK_JOBS = 60
CONCURRENCY = 64  # submits at once, and the connection pool of every session
MEDIAN = 10.0
SIGMA = 0.35
QUICK_MEDIAN = 1.0
SEED = 3  # the seed of ``polling``
#: A run is bounded by its longest job, or by the safety net for a lost webhook (about a
#: minute after submission while nothing is learned): one measured run per way by default.
DEFAULT_REPS = 1
JOB_DEADLINE = 240.0
#: Path prefix of the receivers in the client process (one route per provider).
HOOK_PATH = "/hooks"

GOAL_POLLS_PER_JOB = 1.05
GOAL_DELAY_P50 = 0.050


def _prompt(provider: str, i: int) -> str:
    return f"webhooks benchmark {provider} job {i}"


def _hook_url(port: int, provider: str) -> str:
    return f"http://127.0.0.1:{port}{HOOK_PATH}/{provider}"


# -- the client (runs in its own process) ---------------------------------------------------------


def client(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_client(p))


async def _client(p: dict[str, Any]) -> dict[str, Any]:
    import contextlib

    from aiohttp import web

    from flux_async import GenerationRequest, Limits, PollPolicy, Session
    from flux_async.receivers import add_webhook_routes
    from flux_async.webhooks import WebhookEvent

    class RecordingSession(Session):
        """A session that notes which tasks a verified webhook announced (to report the
        jobs whose webhook was lost apart); otherwise the library's own."""

        announced: set[str]

        def notify(self, event: WebhookEvent) -> bool:
            if event.task_id is not None:
                self.announced.add(event.task_id)
            return super().notify(event)

    n, push, port = int(p["jobs"]), bool(p["push"]), int(p["port"])
    secret = str(p["secret"])
    policy = PollPolicy(**p["policy"])
    limits = Limits(
        max_concurrent_submits=CONCURRENCY,
        max_connections=CONCURRENCY,
        max_outstanding=n,
        max_active_tasks=n,  # BFL's cap of 24 would make a 1,000-job run last minutes
    )
    app = web.Application()
    sessions: dict[str, RecordingSession] = {}
    for provider in p["providers"]:
        session = RecordingSession(
            provider,
            api_key=emulator_key(),
            base_url=p["base_urls"][provider],
            limits=limits,
            poll_policy=policy,
            webhook_url=_hook_url(port, provider) if push else None,
            webhook_secret=secret if push else None,
        )
        session.announced = set()
        sessions[provider] = session
        add_webhook_routes(app, session, path=f"{HOOK_PATH}/{provider}")
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    seen: dict[str, dict[str, float]] = {provider: {} for provider in sessions}
    failed: dict[str, int] = dict.fromkeys(sessions, 0)

    async def batch(provider: str, session: Session) -> None:
        requests = (
            GenerationRequest(model=MODEL, prompt=_prompt(provider, i), size="1:1")
            for i in range(n)
        )
        async for outcome in session.as_completed(requests):
            if outcome.ok and outcome.task_id is not None:
                seen[provider][outcome.task_id] = time.time()
            else:
                failed[provider] += 1

    try:
        await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
        with Meter() as meter:
            started = time.time()
            async with contextlib.AsyncExitStack() as stack:
                for session in sessions.values():
                    await stack.enter_async_context(session)
                with _Deadline(JOB_DEADLINE + 60):
                    await asyncio.gather(*(batch(pr, s) for pr, s in sessions.items()))
                stats = {pr: s.statistics() for pr, s in sessions.items()}
    finally:
        await runner.cleanup()
    return {
        **meter.as_dict(),
        "started_at": started,
        "jobs": n,
        "providers": {
            pr: {
                "ok": len(seen[pr]),
                "failed": failed[pr],
                "seen": seen[pr],
                "announced": sorted(sessions[pr].announced),
                "client_polls_sent": stats[pr].polls_sent,
                "webhooks_received": stats[pr].webhooks_received,
                "webhooks_refused": stats[pr].webhooks_refused,
                "webhook_wakes": stats[pr].webhook_wakes,
            }
            for pr in sessions
        },
    }


# -- the orchestration (parent process) -----------------------------------------------------------


def _free_port() -> int:
    """A port free now on 127.0.0.1 (the client binds it; the emulator's toapis callback URL
    must name it before the client starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scenario(base: Any, *, push: bool, lost: float, port: int, secret: str, jobs: int) -> Any:
    import attrs

    from flux_async.emulator import WebhookFaultRates

    return attrs.evolve(
        base,
        # BFL's cap of 24 active tasks is lifted on both sides (see Limits in the client).
        active_task_cap={"bfl": max(jobs, 24), "bfl/flux-kontext-max": 6},
        toapis_callback_url=_hook_url(port, "toapis") if push else None,
        toapis_webhook_secrets=(secret,),
        webhook_faults=WebhookFaultRates(lost=lost),
    )


def _public(scenario: Any) -> dict[str, Any]:
    """The scenario as recorded in the results: the webhook secret left out."""
    data: dict[str, Any] = scenario.to_dict()
    data["toapis_webhook_secrets"] = ["(per-run secret, not recorded)"]
    if data.get("api_keys"):
        data["api_keys"] = ["(emulator key, not recorded)"]
    return data


def _figures(tasks: list[dict[str, Any]], seen: dict[str, float], jobs: int) -> dict[str, Any]:
    """Requests per job and the emulator-measured detection delays of ``tasks``."""
    delays = [
        t["first_terminal_poll_at"] - t["completed_at"]
        for t in tasks
        if t["completed_at"] is not None and t["first_terminal_poll_at"] is not None
    ]
    client_delays = [
        seen[t["id"]] - t["completed_at"]
        for t in tasks
        if t["completed_at"] is not None and t["id"] in seen
    ]
    polls = sum(t["polls"] + t["lookups"] for t in tasks)
    return {
        "jobs": jobs,
        "completed": sum(1 for t in tasks if t["id"] in seen),
        "status_polls_per_job": polls / jobs if jobs else math.nan,
        "delay_p50_s": h.percentile(delays, 0.50),
        "delay_p90_s": h.percentile(delays, 0.90),
        "delay_p99_s": h.percentile(delays, 0.99),
        "delay_max_s": max(delays) if delays else math.nan,
        "client_delay_p50_s": h.percentile(client_delays, 0.50),
        "client_delay_p99_s": h.percentile(client_delays, 0.99),
    }


def _one(
    emu: Any,
    mode: tuple[str, bool, float],
    jobs: int,
    placement: h.Placement,
    base: Any,
    policy: dict[str, float],
) -> dict[str, Any]:
    name, push, lost = mode
    port = _free_port()
    secret = secrets.token_hex(16)  # per run; never written out
    emu.set_scenario(_scenario(base, push=push, lost=lost, port=port, secret=secret, jobs=jobs))
    emu.reset()
    params = {
        "jobs": jobs,
        "push": push,
        "port": port,
        "secret": secret,
        "policy": policy,
        "providers": list(PROVIDERS),
        "base_urls": {pr: emu.base_url(pr) for pr in PROVIDERS},
    }
    load0 = h.loadavg()
    emu_cpu0 = h.process_cpu(emu.pid)
    result = h.run_client("webhooks", "client", params, placement, timeout=JOB_DEADLINE + 120)
    emu_cpu1 = h.process_cpu(emu.pid)
    if push:  # deliveries still in flight when the last job ended would be counted late
        time.sleep(0.2)
    stats = emu.stats(tasks=True)
    by_provider: dict[str, list[dict[str, Any]]] = {pr: [] for pr in PROVIDERS}
    for task in stats["tasks"]:
        by_provider[task["provider"]].append(task)
    rows: dict[str, Any] = {}
    for pr in PROVIDERS:
        got = result["providers"][pr]
        seen: dict[str, float] = got.pop("seen")
        announced = set(got.pop("announced"))
        tasks = by_provider[pr]
        row = _figures(tasks, seen, jobs)
        row.update(
            tasks_created=len(tasks),
            duplicate_submits=sum(1 for t in tasks if t["duplicate_of"] is not None),
            # Each event is announced once here (no duplicates or replays are scripted), so
            # the receiver's count splits the emulator's totals by provider.
            webhooks_delivered=len(announced & {t["id"] for t in tasks}) if push else 0,
            webhooks_lost=(len(tasks) - len(announced)) if push else 0,
            client=got,
            last_result_s=max(seen.values(), default=result["started_at"]) - result["started_at"],
            per_task=[
                [
                    round(t["duration"], 3),
                    None
                    if t["first_terminal_poll_at"] is None or t["completed_at"] is None
                    else round(t["first_terminal_poll_at"] - t["completed_at"], 4),
                    t["polls"] + t["lookups"],
                    int(t["id"] in announced),
                ]
                for t in tasks
            ],
        )
        if push and lost:
            delivered = [t for t in tasks if t["id"] in announced]
            missed = [t for t in tasks if t["id"] not in announced]
            row["subsets"] = {
                "webhook delivered": _figures(delivered, seen, len(delivered)),
                "webhook lost": _figures(missed, seen, len(missed)),
            }
        rows[pr] = row
    hooks = stats["webhooks"]
    if push and sum(rows[pr]["webhooks_delivered"] for pr in PROVIDERS) != hooks["delivered"]:
        raise RuntimeError(
            f"webhooks: the receivers saw {sum(rows[pr]['webhooks_delivered'] for pr in PROVIDERS)} "
            f"deliveries, the emulator counted {hooks['delivered']}"
        )
    for pr in PROVIDERS:
        if rows[pr]["completed"] != jobs or rows[pr]["duplicate_submits"]:
            raise RuntimeError(
                f"webhooks: {name}, {pr}: {rows[pr]['completed']} of {jobs} jobs completed, "
                f"{rows[pr]['duplicate_submits']} duplicate submits"
            )
    return {
        "mode": name,
        "cpu_s": result["cpu_s"],
        "wall_s": result["wall_s"],
        "loadavg_before": load0,
        "emulator_cpu_s": None if emu_cpu0 is None or emu_cpu1 is None else emu_cpu1 - emu_cpu0,
        "emulator": {
            k: stats[k] for k in ("requests", "status_codes", "tasks_created", "webhooks")
        },
        "providers": rows,
    }


_KEYS = (
    "status_polls_per_job",
    "delay_p50_s",
    "delay_p90_s",
    "delay_p99_s",
    "delay_max_s",
    "client_delay_p50_s",
    "client_delay_p99_s",
)


def run(
    *,
    quick: bool,
    reps: int,
    placement: h.Placement,
    reps_given: bool = False,
    jobs: int | None = None,
    median: float | None = None,
    policy: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Run every way on every provider ``reps`` times (after one short warm-up). ``median`` and
    ``policy`` (``PollPolicy`` fields) exist for the smoke test; the command uses neither."""
    from flux_async.emulator import Duration, Scenario

    del reps_given
    jobs = jobs if jobs is not None else (QUICK_JOBS if quick else JOBS)
    median = median if median is not None else (QUICK_MEDIAN if quick else MEDIAN)
    policy = dict(policy or {})
    base = Scenario(seed=SEED, duration=Duration.lognormal(median, SIGMA))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in MODES}
    emu = h.start_emulator(base, placement)
    try:
        # Warm-up: the webhook path once, on short jobs (warms the emulator process and the OS
        # caches; kept apart, never reported).
        short = Scenario(seed=SEED, duration=Duration.lognormal(min(median, 1.0), SIGMA))
        h.log("webhooks: warm-up (webhooks on, short jobs)")
        warmup = _one(emu, MODES[1], min(jobs, 100), placement, short, policy)
        for rep in range(reps):
            for mode in MODES:
                h.log(f"webhooks: {mode[0]} rep {rep + 1}/{reps} ({jobs} jobs per provider)")
                runs[mode[0]].append(_one(emu, mode, jobs, placement, base, policy))
    finally:
        emu.stop()

    figures: dict[str, Any] = {}
    for name, items in runs.items():
        for pr in PROVIDERS:
            rows = [r["providers"][pr] for r in items]
            entry: dict[str, Any] = {key: h.summary(row[key] for row in rows) for key in _KEYS}
            for key in ("completed", "webhooks_delivered", "webhooks_lost"):
                entry[key] = sum(row[key] for row in rows)
            entry["jobs"] = jobs * len(rows)
            entry["repetitions"] = len(rows)
            entry["subsets"] = {
                sub: {key: h.summary(row["subsets"][sub][key] for row in rows) for key in _KEYS}
                | {
                    "jobs": sum(row["subsets"][sub]["jobs"] for row in rows),
                    "completed": sum(row["subsets"][sub]["completed"] for row in rows),
                }
                for sub in (rows[0].get("subsets") or {})
            }
            figures[f"{pr}/{name}"] = entry
    goals: dict[str, bool] = {}
    for pr in PROVIDERS:
        on = figures[f"{pr}/webhooks"]
        polled = figures[f"{pr}/polled"]
        lossy = figures[f"{pr}/webhooks, 20% lost"]
        kept = lossy["subsets"]["webhook delivered"]
        goals[f"{pr}:requests_per_job<={GOAL_POLLS_PER_JOB}"] = (
            on["status_polls_per_job"]["max"] <= GOAL_POLLS_PER_JOB
        )
        goals[f"{pr}:delay_p50<={GOAL_DELAY_P50 * 1e3:g}ms"] = (
            on["delay_p50_s"]["max"] <= GOAL_DELAY_P50
        )
        goals[f"{pr}:fewer_requests_than_polled"] = (
            on["status_polls_per_job"]["median"] < polled["status_polls_per_job"]["median"]
        )
        goals[f"{pr}:20%_lost:all_completed"] = lossy["completed"] == lossy["jobs"]
        goals[f"{pr}:20%_lost:delivered_keep_figures"] = (
            kept["status_polls_per_job"]["max"] <= GOAL_POLLS_PER_JOB
            and kept["delay_p50_s"]["max"] <= GOAL_DELAY_P50
        )
    return {
        "scenario": "webhooks",
        "setup": {
            "jobs_per_provider": jobs,
            "providers": list(PROVIDERS),
            "model": MODEL,
            "durations": {"kind": "lognormal", "median_s": median, "sigma": SIGMA, "seed": SEED},
            "emulator_scenario": _public(base),
            "modes": [{"name": name, "webhooks": push, "lost": lost} for name, push, lost in MODES],
            "library": {
                "poll_policy": f"PollPolicy({', '.join(f'{k}={v!r}' for k, v in policy.items())})"
                + ("" if policy else " (defaults)"),
                "limits": {
                    "max_concurrent_submits": CONCURRENCY,
                    "max_connections": CONCURRENCY,
                    "max_outstanding": jobs,
                    "max_active_tasks": jobs,
                },
                "receiver": "flux_async.receivers.add_webhook_routes, one route per provider, "
                "in the client process",
            },
            "together": "the three providers run at once, one Session each, in one client process",
            "bfl_active_task_cap": "lifted in the emulator and in Limits (24 would serialise the run)",
            "detection_delay": "emulator: first poll answered with the terminal status - completed_at",
            "repetitions": reps,
            "warmup": "webhooks on, up to 100 jobs per provider with a 1 s median",
        },
        "figures": figures,
        "goals": goals,
        "runs": runs,
        "warmup": warmup,
    }


def _row(label: str, mode: str, f: dict[str, Any], hooks: str) -> list[str]:
    return [
        label,
        mode,
        f"{f['completed']:,}/{f['jobs']:,}",
        hooks,
        h.fmt_range(f["status_polls_per_job"]),
        h.fmt_range(f["delay_p50_s"], "s"),
        h.fmt_range(f["delay_p90_s"], "s"),
        h.fmt_range(f["delay_p99_s"], "s"),
    ]


def render(result: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    for pr in PROVIDERS:
        for name, push, _ in MODES:
            f = result["figures"][f"{pr}/{name}"]
            hooks = f"{f['webhooks_delivered']:,}/{f['webhooks_lost']:,}" if push else "-"
            rows.append(_row(pr, name, f, hooks))
            for sub, g in f["subsets"].items():
                rows.append(_row("", f"  of which {sub}", g, ""))
    s = result["setup"]
    reps = s["repetitions"]
    title = (
        f"webhooks — {s['jobs_per_provider']:,} jobs per provider, log-normal durations "
        f"(median {s['durations']['median_s']:g} s, sigma {SIGMA:g}), providers run at once; "
        + ("one run" if reps == 1 else f"median (min-max) of {reps} runs")
        + "; delay = emulator's first terminal poll - completion"
    )
    headers = [
        "provider",
        "way",
        "jobs completed",
        "webhooks delivered/lost",
        "status requests/job",
        "delay p50",
        "delay p90",
        "delay p99",
    ]
    g = result["goals"]
    lines = []
    for pr in PROVIDERS:
        lines.append(
            f"- {pr}: with webhooks ≤ {GOAL_POLLS_PER_JOB} status requests per job "
            f"{h.verdict(g[f'{pr}:requests_per_job<={GOAL_POLLS_PER_JOB}'])}, delay p50 ≤ "
            f"{GOAL_DELAY_P50 * 1e3:g} ms {h.verdict(g[f'{pr}:delay_p50<={GOAL_DELAY_P50 * 1e3:g}ms'])}; "
            f"20% lost: every job completed {h.verdict(g[f'{pr}:20%_lost:all_completed'])}, "
            f"the delivered ones keep those figures "
            f"{h.verdict(g[f'{pr}:20%_lost:delivered_keep_figures'])}"
        )
    return title + "\n\n" + h.table(headers, rows) + "\n\n" + "\n".join(lines)
