"""``flux-async demo``: a real batch on all three services against an in-process emulator.

The emulator runs on 127.0.0.1 with short, time-scaled job durations that report progress;
one session per provider runs its share of the jobs through the same batch engine as
``flux-async batch`` (journal, results.jsonl, images), under one progress display. The mix
covers flux-kontext-pro and flux-kontext-max everywhere, Grok on toapis (the only provider that
serves it), a few edits of a local image (uploaded on the aggregators, inlined on BFL), and one
prompt the emulator's moderation refuses, so the summary shows how a failure is reported. That
one failure is expected: the exit code stays 0 unless something else fails.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import time
import zlib
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import attrs

from ..emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario
from ._api import GenerationRequest, Limits, ModerationError, Session
from ._batch import BatchRunner
from ._batchentry import Entry
from ._batchstate import JournalError, JournalHeader
from ._display import Counts, ProgressView
from ._journal import OutputDir
from ._runtime import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Output,
    Run,
    execute,
    fail,
    report,
    summarize,
)

__all__ = ["DEMO_SCENARIO", "demo_jobs", "run_demo"]

#: The emulator's behaviour during the demo: jobs of about a second, Kontext Max a little
#: slower, progress reported, a little network latency, and one blocked word.
DEMO_SCENARIO = Scenario(
    seed=2024,
    outcome_key="prompt",
    duration=Duration.lognormal(median=6.0, sigma=0.35, maximum=14.0),
    model_durations={"flux-kontext-max": Duration.lognormal(median=9.0, sigma=0.35, maximum=18.0)},
    time_scale=0.2,
    latency=0.01,
    latency_jitter=0.02,
    blocked_terms=("forbidden",),
)

_BLOCKED_PROMPT = "a forbidden still life of poisoned apples"

_PROMPTS = (
    "a red fox curled up in fresh snow, soft morning light",
    "a lighthouse on a basalt cliff during a storm, long exposure",
    "a bowl of ramen on a wooden counter, steam rising, film photo",
    "an isometric cutaway of a tiny greenhouse full of succulents",
    "a watercolor map of an imaginary archipelago",
    "a vintage travel poster of a city on the moon",
    "a macro shot of dew drops on a spider web at dawn",
    "a cozy reading nook with a cat asleep on a pile of books",
    "a paper-cut illustration of a forest at night with fireflies",
    "a retro-futuristic train station in pastel colors",
    "a portrait of an old sailor, dramatic side light, oil painting",
    "a desert canyon under a sky full of stars",
)

_EDITS = (
    "turn the scene into a snowy night",
    "make it look like a pencil sketch",
    "add a rainbow in the background",
)

#: Sizes every demo model takes (Grok's list is the shortest).
_SIZES = ("1:1", "16:9", "3:2", "2:3", "9:16")

#: (provider, model) pairs the demo cycles through. Grok is only served by toapis.
_ROUTES = (
    ("toapis", "flux-kontext-pro"),
    ("apimart", "flux-kontext-pro"),
    ("bfl", "flux-kontext-pro"),
    ("toapis", "grok-4-1-image"),
    ("toapis", "flux-kontext-max"),
    ("apimart", "flux-kontext-max"),
    ("bfl", "flux-kontext-max"),
)


@attrs.frozen
class DemoJob:
    """One job of the demo and where it runs."""

    provider: str
    request: GenerationRequest
    expected_failure: bool = False


def demo_jobs(count: int, input_image: Path) -> list[DemoJob]:
    """``count`` jobs spread over the routes; every fifth Kontext job edits ``input_image``;
    the last BFL job carries the blocked word (an expected moderation)."""
    jobs = []
    for i in range(count):
        provider, model = _ROUTES[i % len(_ROUTES)]
        size = _SIZES[i % len(_SIZES)]
        if model.startswith("grok"):
            request = GenerationRequest(
                model=model, prompt=_PROMPTS[i % len(_PROMPTS)], size=size, n=2 if i % 2 else 1
            )
        elif i % 5 == 4:
            request = GenerationRequest(
                model=model,
                prompt=_EDITS[i % len(_EDITS)],
                images=(str(input_image),),
                size="match_input_image",
            )
        else:
            request = GenerationRequest(model=model, prompt=_PROMPTS[i % len(_PROMPTS)], size=size)
        jobs.append(DemoJob(provider, request))
    last_bfl = max(i for i, job in enumerate(jobs) if job.provider == "bfl")
    blocked = attrs.evolve(jobs[last_bfl].request, prompt=_BLOCKED_PROMPT, images=(), size="1:1")
    jobs[last_bfl] = DemoJob("bfl", blocked, expected_failure=True)
    return jobs


def _png(width: int, height: int) -> bytes:
    """A small gradient PNG, written with the standard library (the edits' input image)."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            rows += bytes((40 + 200 * x // width, 80 + 120 * y // height, 160))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b"")


def _default_output() -> Path:
    """./flux-async-demo, or the first ./flux-async-demo-N that is free."""
    base = Path("flux-async-demo")
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = Path(f"{base}-{n}")
    return candidate


async def run_demo(output: Path | None, *, jobs: int, out: Output) -> int:
    """Start the emulator, run the jobs on all three providers, report; return the exit code."""
    root = output if output is not None else _default_output()
    root.mkdir(parents=True, exist_ok=True)
    input_image = root / "input.png"
    input_image.write_bytes(_png(96, 64))
    plan = demo_jobs(jobs, input_image.resolve())
    expected = {(job.provider, i) for i, job in enumerate(plan) if job.expected_failure}
    by_provider: dict[str, list[tuple[int, DemoJob]]] = {}
    for i, job in enumerate(plan):
        by_provider.setdefault(job.provider, []).append((i, job))

    out.info(f"demo: {jobs} jobs on toapis, apimart and bfl against a local emulator; images in {root}/")
    started = time.monotonic()
    view = ProgressView(out.err, enabled=out.interactive)
    async with Emulator(DEMO_SCENARIO) as emu, AsyncExitStack() as sessions:
        with ExitStack() as journals:
            runners: list[tuple[Counts, BatchRunner, Session]] = []
            for provider, items in by_provider.items():
                entries = [Entry(index, index + 1, job.request) for index, job in items]
                try:
                    journal = OutputDir.create(root / provider, _header(provider, entries))
                except JournalError as exc:
                    fail(str(exc), EXIT_USAGE)
                journals.callback(journal.close)
                session = await sessions.enter_async_context(
                    Session(
                        provider,
                        api_key=DEFAULT_API_KEY,
                        base_url=emu.base_url(provider),
                        limits=Limits(max_concurrent_submits=8),
                        ledger=journal.ledger,
                    )
                )
                counts = Counts(label=f"{provider:8}", total=len(entries))
                runner = BatchRunner(
                    session, journal, counts, source=functools.partial(iter, entries), on_change=view.update
                )
                view.add(counts)
                runners.append((counts, runner, session))
            with view:
                flags = await execute([runner for _, runner, _ in runners], out)
            runs = [Run(counts, runner, session.statistics()) for counts, runner, session in runners]
    summary = summarize(root, runs, time.monotonic() - started, flags)
    unexpected = _unexpected_failures(root, expected)
    only_expected = (
        summary.failed == len(expected)
        and not unexpected
        and not (summary.unresolved or summary.left_accepted or summary.not_submitted)
        and not any(r.runner.fatal or r.runner.results_error or r.counts.in_doubt for r in runs)
    )
    if summary.exit_code == EXIT_FAILED and only_expected:
        summary = attrs.evolve(summary, exit_code=EXIT_OK)
    report(
        out,
        summary,
        runs,
        title="demo summary",
        extra={"expected_failures": len(expected), "unexpected_failures": len(unexpected)},
    )
    if not out.json:
        out.info(
            f"Expected: {len(expected)} failure, the prompt '{_BLOCKED_PROMPT}', refused by the "
            f"emulator's moderation to show how failures are reported (see {root}/bfl/results.jsonl)."
        )
        for line in unexpected:
            out.error(line)
    return summary.exit_code


def _header(provider: str, entries: list[Entry]) -> JournalHeader:
    digest = hashlib.sha256(repr([e.request for e in entries]).encode()).hexdigest()
    return JournalHeader(provider=provider, input="demo", fingerprint=digest, requests=len(entries))


def _unexpected_failures(root: Path, expected: set[tuple[str, int]]) -> list[str]:
    """Failed result lines other than the planted moderation, as text."""
    found = []
    for provider in ("toapis", "apimart", "bfl"):
        path = root / provider / "results.jsonl"
        if not path.exists():
            continue
        for text in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(text)
            if record["status"] == "succeeded":
                continue
            kind = (record.get("error") or {}).get("kind")
            if (provider, record["index"]) in expected and kind == ModerationError.__name__:
                continue
            found.append(f"{provider} job {record['index']}: {kind}: {(record.get('error') or {}).get('message')}")
    return found
