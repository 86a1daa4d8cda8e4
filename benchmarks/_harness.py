"""What every scenario shares: CPU placement, the emulator process, one fresh process per
measured client run, summaries (median, min-max), the machine record, tables and result files.

Standard library only (plus the emulator's ``EmulatorProcess``), so that the parent process
that orchestrates a benchmark stays light and does not compete with what it measures.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


# -- placement -----------------------------------------------------------------------------------


class Placement:
    """Which CPU the emulator and the client run on.

    With at least two CPUs allowed, the emulator gets the first and every client run the
    second (``os.sched_setaffinity``); otherwise nothing is pinned and the record says so.
    """

    def __init__(self, *, pin: bool = True) -> None:
        allowed: list[int] = []
        if pin and hasattr(os, "sched_getaffinity"):
            allowed = sorted(os.sched_getaffinity(0))
        self.allowed = allowed
        if len(allowed) >= 2:
            self.emulator_cpu: int | None = allowed[0]
            self.client_cpu: int | None = allowed[1]
        else:
            self.emulator_cpu = self.client_cpu = None

    def pin_self(self) -> None:
        """Put this (orchestrating) process on the client's CPU: it is idle while a client runs,
        and its own work (setting up tasks, reading the emulator's stats) then never takes the
        emulator's CPU."""
        if self.client_cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {self.client_cpu})

    def describe(self) -> dict[str, Any]:
        return {
            "allowed_cpus": self.allowed,
            "emulator_cpu": self.emulator_cpu,
            "client_cpu": self.client_cpu,
            "pinned": self.client_cpu is not None,
        }


def start_emulator(scenario: Any, placement: Placement) -> Any:
    """An ``EmulatorProcess`` (started), pinned to the emulator's CPU where allowed."""
    from flux_async.emulator import EmulatorProcess

    cpus = None if placement.emulator_cpu is None else {placement.emulator_cpu}
    emu = EmulatorProcess(scenario, cpus=cpus)
    emu.start()
    return emu


# -- one measured client run -----------------------------------------------------------------------


def run_client(
    module: str,
    function: str,
    params: Mapping[str, Any],
    placement: Placement,
    *,
    timeout: float,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ``benchmarks.<module>.<function>(params)`` in a fresh Python process pinned to the
    client CPU, and return the dict it produced (plus the process's own totals).

    A fresh process per run means the CPU time it reports is the client's alone, imports
    included in the ``process`` totals but not in the figures, which each client measures
    around its own workload. ``prefix`` is a command to run the process under (a profiler, say);
    its standard error comes back as ``stderr``.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "r", prefix="client-", suffix=".tmp", dir=RESULTS, delete=False
    ) as tmp:
        out = Path(tmp.name)
    try:
        spec = {
            "module": f"benchmarks.{module}",
            "function": function,
            "params": dict(params),
            "cpu": placement.client_cpu,
            "out": str(out),
        }
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONHASHSEED", "0")
        started = time.monotonic()
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "benchmarks._worker", json.dumps(spec)],
            cwd=ROOT,
            env=env,
            timeout=timeout,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
            raise RuntimeError(
                f"client run {module}.{function} failed (exit {proc.returncode}):\n{tail}"
            )
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        result["process_wall_s"] = time.monotonic() - started
        if prefix:
            result["stderr"] = proc.stderr
        return result
    finally:
        out.unlink(missing_ok=True)


# -- figures ---------------------------------------------------------------------------------------


def summary(values: Iterable[float]) -> dict[str, Any]:
    """Median and min-max of the repetitions (and the values themselves)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "values": vals,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``, linear between order statistics."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def fmt(value: float, unit: str = "", digits: int = 3) -> str:
    """A number with ``digits`` significant digits (fixed notation) and a unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0:
        text = "0"
    else:
        magnitude = math.floor(math.log10(abs(value)))
        decimals = max(0, digits - 1 - magnitude)
        text = f"{value:,.{decimals}f}"
    return f"{text} {unit}".rstrip()


def fmt_range(s: Mapping[str, Any], unit: str = "", digits: int = 3) -> str:
    """``median (min-max)`` of a :func:`summary`."""
    if len(s["values"]) <= 1:
        return fmt(s["median"], unit, digits)
    return f"{fmt(s['median'], unit, digits)} ({fmt(s['min'], '', digits)}-{fmt(s['max'], '', digits)})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable as plain text too)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


# -- the record ------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def source_state() -> dict[str, Any]:
    """Which library code was measured: the commit, whether ``flux_async/`` differed from it,
    and a digest of the ``flux_async/`` sources as they were (read-only git commands)."""
    import hashlib

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    digest = hashlib.sha256()
    for path in sorted((ROOT / "flux_async").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    status = git("status", "--porcelain", "--", "flux_async")
    return {
        "commit": git("rev-parse", "HEAD"),
        "flux_async_modified_since_commit": None if status is None else bool(status),
        "flux_async_sha256": digest.hexdigest(),
    }


def machine(placement: Placement) -> dict[str, Any]:
    """What a reader needs to judge the figures: CPUs, load, versions, the date."""
    return {
        "date": now_utc().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "aiohttp": _version("aiohttp"),
        "anyio": _version("anyio"),
        "attrs": _version("attrs"),
        "cattrs": _version("cattrs"),
        "flux_async": _version("flux-async"),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "placement": placement.describe(),
        "source": source_state(),
    }


def now_utc() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def write_results(scenario: str, payload: Mapping[str, Any], stamp: str) -> Path:
    """Write ``benchmarks/results/<scenario>-<stamp>.json`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{scenario}-{stamp}.json"
    # Compact: the polling file holds every task's delay (pretty-print with python -m json.tool).
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def stamp() -> str:
    """The date and time used in result file names (UTC)."""
    return now_utc().strftime("%Y-%m-%dT%H%M%SZ")


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by another process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def log(message: str) -> None:
    """Progress on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")
