"""``python -m benchmarks overhead|polling|scale|completion|webhooks|instructions|fleet|all [--quick] [--reps N] [--jobs N] [--no-pin]``.

Runs the chosen scenarios (``all``: overhead, polling, scale, completion, webhooks, in that order; ``instructions``,
which needs valgrind, and ``fleet``, which needs redis-server, only when named), prints each one's
table on stdout (progress goes to stderr) and writes every raw figure, with the machine it ran
on, to ``benchmarks/results/<scenario>-<date>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any

from . import _harness as h

SCENARIOS = ("overhead", "polling", "scale", "completion", "webhooks")
#: Scenarios whose workload size ``--jobs`` sets.
SIZED = ("webhooks",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("scenario", choices=(*SCENARIOS, "instructions", "fleet", "all"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller workloads and fewer repetitions: a smoke run, not figures to quote",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help=(
            "measured repetitions after one warm-up (default: overhead 5; polling 3 for the "
            "library and the 0.5 s poller, 1 for the others; scale 3 measurement windows; "
            "completion 3; webhooks 1; fleet 3; "
            "--quick: 1)"
        ),
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="jobs per provider (webhooks only; default 1000, --quick 60)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the emulator and the client to separate CPUs",
    )
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.jobs is not None and (args.jobs < 1 or args.scenario not in SIZED):
        parser.error(f"--jobs must be at least 1 and is for {', '.join(SIZED)} only")

    placement = h.Placement(pin=not args.no_pin)
    placement.pin_self()
    if placement.client_cpu is None:
        h.log(
            "not pinning: fewer than two CPUs allowed (or --no-pin); the emulator and the client share CPUs"
        )
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    started = time.monotonic()
    when = h.stamp()
    rendered: list[str] = []
    for name in names:
        module: Any = importlib.import_module(f"benchmarks.{name}")
        reps = args.reps if args.reps is not None else (1 if args.quick else module.DEFAULT_REPS)
        t0 = time.monotonic()
        record = h.machine(placement)
        sized = {"jobs": args.jobs} if name in SIZED and args.jobs is not None else {}
        result = module.run(
            quick=args.quick,
            reps=reps,
            placement=placement,
            reps_given=args.reps is not None,
            **sized,
        )
        record["loadavg_at_end"] = h.loadavg()
        # Other people may edit the library while a benchmark runs: say if it changed meanwhile.
        end = h.source_state()
        record["source_changed_during_run"] = (
            end["flux_async_sha256"] != record["source"]["flux_async_sha256"]
        )
        result["machine"] = record
        result["command"] = "python -m benchmarks " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        result["quick"] = args.quick
        result["elapsed_s"] = time.monotonic() - t0
        if hasattr(module, "plot"):
            result["plot"] = module.plot(result, h.RESULTS / f"{name}-{when}.png")
        path = h.write_results(name, result, when)
        text = module.render(result)
        rendered.append(text)
        print(text, flush=True)
        print(
            f"\n(raw figures: {path.relative_to(h.ROOT)}; {result['elapsed_s']:.0f} s)\n",
            flush=True,
        )
    h.log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
