"""``python -m flux_async.emulator``: serve the emulator in the foreground.

::

    python -m flux_async.emulator --port 8080 [--host 127.0.0.1] [--scenario JSON-or-path]
                                  [--seed N] [--key KEY ...] [--any-key] [--json]

Prints the base URL of each provider and the test key, then serves until Ctrl-C / SIGTERM.
With ``--json`` it prints one JSON line instead (for programs that start it, such as
``EmulatorProcess``). ``main(argv)`` is what ``flux-async emulator`` delegates to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from ._process import run_forever
from ._scenario import PROVIDERS, Scenario

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["main"]


def _load_scenario(text: str | None) -> Scenario:
    if not text:
        return Scenario()
    source = text.strip()
    if not source.startswith("{"):
        source = Path(text).read_text(encoding="utf-8")
    data = json.loads(source)
    if not isinstance(data, dict):
        raise ValueError("a scenario is a JSON object")
    return Scenario.from_dict(data)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (shared with ``flux-async emulator``)."""
    parser = argparse.ArgumentParser(
        prog="python -m flux_async.emulator",
        description="Serve fake toapis / apimart / BFL image-generation APIs locally.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (0 = any free port)")
    parser.add_argument("--scenario", help="a Scenario as JSON text, or the path of a JSON file")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument("--key", action="append", help="accepted API key (repeatable; "
                        "replaces the default test key)")
    parser.add_argument("--any-key", action="store_true", help="accept any non-empty key")
    parser.add_argument("--json", action="store_true", help="print one JSON line when ready")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve until interrupted; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        scenario = _load_scenario(args.scenario)
        changes: dict[str, object] = {}
        if args.seed is not None:
            changes["seed"] = args.seed
        if args.key:
            changes["api_keys"] = tuple(args.key)
        if args.any_key:
            changes["accept_any_key"] = True
        if changes:
            scenario = attrs.evolve(scenario, **changes)  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError) as exc:
        parser.error(f"--scenario: {exc}")

    def ready(emulator: Emulator) -> None:
        if args.json:
            info = {
                "url": emulator.url,
                "host": emulator.host,
                "port": emulator.port,
                "providers": {p: emulator.base_url(p) for p in PROVIDERS},
                "api_keys": list(scenario.api_keys),
                "pid": os.getpid(),
            }
            print(json.dumps(info), flush=True)
            return
        print(f"flux_async emulator listening on {emulator.url}  (seed {scenario.seed})")
        for provider in PROVIDERS:
            print(f"  {provider:<8} {emulator.base_url(provider)}")
        print(f"  stats    {emulator.url}/_emulator/stats")
        keys = ", ".join(scenario.api_keys) or "(none)"
        print(f"  API key  {keys}{'  (any key accepted)' if scenario.accept_any_key else ''}")
        print("Press Ctrl-C to stop.", flush=True)

    run_forever(args.port, scenario, host=args.host, on_ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
