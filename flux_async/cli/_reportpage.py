"""The batch report's page: one self-contained HTML file drawn from a :class:`~._report.Batch`.
Part of the command line, never imported by the library. Pure: takes the batch, returns text;
the standard library only (no network, no templates, no script).

The page holds its style and its chart (inline SVG); the only other things it names are the
batch's own image files, by paths relative to the page, and a Content-Security-Policy forbids
anything else, so opening it fetches nothing from anywhere. Every text from the batch (prompts
are user input, error messages come from providers) is HTML-escaped before it is written.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from ._report import Batch, Job

__all__ = ["render", "time_chart"]

_STYLE = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5d6675; --line: #dde1e8; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1280px; padding: 24px; font: 14px/1.45 system-ui, sans-serif;
       color: var(--ink); background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.sub, .note { color: var(--muted); } .note { margin: 4px 0; }
.totals { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0; }
.total { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; min-width: 120px; }
.total b { display: block; font-size: 18px; } .total span { color: var(--muted); font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
figure img { display: block; width: 100%; height: 220px; object-fit: contain; background: #f2f3f6; }
figcaption { padding: 8px 10px; }
.prompt { margin: 0 0 6px; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 0 8px; margin: 0; font-size: 12px; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
details { border: 1px solid var(--line); border-radius: 8px; padding: 6px 10px; margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; color: var(--bad); }
.failures li { margin: 6px 0; overflow-wrap: anywhere; } .failures q { font-style: italic; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
"""
_CSP = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'"
_LISTED_PER_KIND = 200


def render(batch: Batch) -> str:
    """The whole page for ``batch``."""
    title = f"Batch report: {batch.title}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(_subtitle(batch))}</p></header>',
        _totals(batch),
        *(f'<p class="note">{_e(note)}</p>' for note in batch.notes),
        '<section id="time"><h2>Time to result</h2>',
        time_chart([job.seconds for job in batch.jobs if job.seconds is not None]),
        "</section>",
        _failures(batch),
        _images(batch),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _subtitle(batch: Batch) -> str:
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    provider = f" on {batch.provider}" if batch.provider else ""
    return f"{batch.directory}{provider} · report made {made}"


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _totals(batch: Batch) -> str:
    jobs = batch.jobs
    succeeded = sum(job.ok for job in jobs)
    images = sum(len(job.files) for job in jobs if job.ok)
    cells: list[tuple[str, str]] = [
        (str(batch.requests if batch.requests is not None else len(jobs)), "jobs"),
        (str(succeeded), "succeeded"),
        (str(len(jobs) - succeeded), "failed"),
    ]
    if batch.requests is not None and batch.requests > len(jobs):
        cells.append((str(batch.requests - len(jobs)), "not finished"))
    cells.append((str(images), "images"))
    counted = [job.requests for job in jobs if job.requests is not None]
    per_job = f"{sum(counted) / len(counted):.2f}" if counted else "not recorded"
    cells.append((per_job, "requests per job"))
    costs = [job.cost for job in jobs if job.cost is not None]
    cells.append((f"{sum(costs):.2f}" if costs else "not recorded", "cost"))
    cells.append((_seconds(batch.wall_time) if batch.wall_time is not None else "not recorded", "wall time"))
    times = [job.seconds for job in jobs if job.seconds is not None]
    if times:
        cells.append((_seconds(statistics.median(times)), "median time to result"))
    body = "".join(f'<div class="total"><b>{_e(value)}</b><span>{_e(label)}</span></div>' for value, label in cells)
    return f'<section class="totals" id="totals">{body}</section>'


def time_chart(seconds: Sequence[float], *, width: int = 640, height: int = 180) -> str:
    """A histogram of times to result as inline SVG (or a sentence when there are none)."""
    if not seconds:
        return '<p class="note">No time to result is recorded for these jobs.</p>'
    low, high = min(seconds), max(seconds)
    bins = max(1, min(24, math.ceil(math.sqrt(len(seconds)))))
    span = (high - low) or 1.0
    counts = [0] * bins
    for value in seconds:
        counts[min(bins - 1, int((value - low) / span * bins))] += 1
    left, bottom, top = 36, 28, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    tallest = max(counts)
    bar_w = plot_w / bins
    bars = []
    for k, count in enumerate(counts):
        h = plot_h * count / tallest
        x, y = left + k * bar_w, top + plot_h - h
        lo, hi = low + span * k / bins, low + span * (k + 1) / bins
        bars.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}" '
            f'fill="#4a6fa5"><title>{count} job(s): {lo:.1f} to {hi:.1f} s</title></rect>'
        )
    p50 = statistics.median(seconds)
    p90 = sorted(seconds)[min(len(seconds) - 1, math.ceil(0.9 * len(seconds)) - 1)]
    axis = (
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#9aa3b2"/>'
        f'<text x="{left}" y="{height - 10}">{low:.1f} s</text>'
        f'<text x="{left + plot_w}" y="{height - 10}" text-anchor="end">{high:.1f} s</text>'
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{tallest}</text>'
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>'
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 10}" text-anchor="middle">'
        f"median {p50:.1f} s · 90% within {p90:.1f} s · {len(seconds)} job(s)</text>"
    )
    label = f"Histogram of time to result for {len(seconds)} jobs"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_e(label)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(bars)}{axis}</svg>'
    )


def _failures(batch: Batch) -> str:
    failed = [job for job in batch.jobs if not job.ok]
    if not failed:
        return '<section id="failures"><h2>Failures</h2><p class="note">None.</p></section>'
    groups: dict[str, list[Job]] = defaultdict(list)
    for job in failed:
        groups[job.error_kind or job.status].append(job)
    parts = [f'<section id="failures"><h2>Failures ({len(failed)})</h2>']
    for kind, jobs in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        items = "".join(_failure_item(job) for job in jobs[:_LISTED_PER_KIND])
        more = len(jobs) - _LISTED_PER_KIND
        if more > 0:
            items += f"<li>... and {more} more (see results.jsonl)</li>"
        parts.append(
            f'<details open class="failures" data-kind="{_e(kind)}"><summary>{_e(kind)} '
            f"({len(jobs)})</summary><ul>{items}</ul></details>"
        )
    parts.append("</section>")
    return "".join(parts)


def _failure_item(job: Job) -> str:
    where = f"#{job.index}" + (f" (line {job.line})" if job.line is not None else "")
    task = f" · task {_e(job.task_id)}" if job.task_id else " · no task"
    prompt = f" · <q>{_e(job.prompt)}</q>" if job.prompt else ""
    message = f": {_e(job.error_message)}" if job.error_message else ""
    return f"<li>{_e(where)}{task}{prompt}{message}</li>"


def _images(batch: Batch) -> str:
    figures = [_figure(job, name) for job in batch.jobs if job.ok for name in job.files]
    if not figures:
        return '<section id="images"><h2>Images</h2><p class="note">No image was produced.</p></section>'
    return f'<section id="images"><h2>Images ({len(figures)})</h2><div class="grid">{"".join(figures)}</div></section>'


def _figure(job: Job, name: str) -> str:
    href = _e(quote(name.replace("\\", "/")))
    prompt = job.prompt or ""
    alt = prompt or f"image of request {job.index}"
    facts: Iterable[tuple[str, object]] = (
        ("request", f"#{job.index}" + (f" (line {job.line})" if job.line is not None else "")),
        ("model", job.model),
        ("size", job.size),
        ("seed", job.seed),
        ("time", None if job.seconds is None else _seconds(job.seconds)),
        ("cost", None if job.cost is None else f"{job.cost:.2f}"),
        ("task", job.task_id),
    )
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v is not None)
    caption = f'<p class="prompt">{_e(prompt)}</p>' if prompt else ""
    return (
        f'<figure data-index="{job.index}"><a href="{href}"><img src="{href}" alt="{_e(alt)}" loading="lazy"></a>'
        f"<figcaption>{caption}<dl>{rows}</dl></figcaption></figure>"
    )
