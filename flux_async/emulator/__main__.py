"""``python -m flux_async.emulator``: serve the emulator in the foreground.

::

    python -m flux_async.emulator --port 8080 [--host 127.0.0.1] [--scenario JSON-or-path]
                                  [--seed N] [--key KEY ...] [--any-key] [--public-url URL]
                                  [--json]

Prints the base URL of each provider and the test key, then serves until Ctrl-C / SIGTERM.
With ``--json`` it prints one JSON line instead (:func:`ready_document`; for programs that
start it, such as ``EmulatorProcess``). ``main(argv, prog=...)`` is what ``flux-async
emulator`` runs too, so both take the same options and print the same things; it needs only
the runtime dependencies (no ``cli`` extra). Imports the emulator's own modules and the
standard library only.
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

__all__ = ["build_parser", "load_scenario", "main", "ready_document"]


def load_scenario(text: str | None) -> Scenario:
    """A scenario from JSON text (it starts with ``{``) or from the JSON file ``text`` names;
    raises ``ValueError`` with a readable reason (a missing file is "no such file")."""
    if not text:
        return Scenario()
    source = text.strip()
    from_file = not source.startswith("{")
    if from_file:
        path = Path(text).expanduser()
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "no such file"
            raise ValueError(f"{what}: {text} (give a JSON object or the path of a JSON file)")
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {text}: {exc}") from None
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        where = f"{text}: " if from_file else ""
        raise ValueError(f"{where}not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("a scenario is a JSON object")
    return Scenario.from_dict(data)


def ready_document(emulator: Emulator, scenario: Scenario) -> dict[str, object]:
    """The one JSON line ``--json`` prints once the emulator listens."""
    keys = list(scenario.api_keys)
    return {
        "url": emulator.url,
        "host": emulator.host,
        "port": emulator.port,
        "providers": {p: emulator.base_url(p) for p in PROVIDERS},
        "api_key": keys[0] if keys else None,
        "api_keys": keys,
        "any_key": scenario.accept_any_key,
        "stats": f"{emulator.url}/_emulator/stats",
        "pid": os.getpid(),
    }


def build_parser(prog: str = "python -m flux_async.emulator") -> argparse.ArgumentParser:
    """The command-line parser (shared with ``flux-async emulator``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve fake toapis / apimart / BFL image-generation APIs locally, in the "
        "foreground, until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (0 = any free port)")
    parser.add_argument("--scenario", help="a Scenario as JSON text, or the path of a JSON file")
    parser.add_argument("--seed", type=int, help="override the scenario's seed")
    parser.add_argument("--key", action="append", help="accepted API key (repeatable; "
                        "replaces the default test key)")
    parser.add_argument("--any-key", action="store_true", help="accept any non-empty key")
    parser.add_argument("--public-url", metavar="URL", help="the address clients reach this "
                        "server at, when it is not the one it listens on (a published container "
                        "port, a proxy): the URLs it hands out start with it")
    parser.add_argument("--json", action="store_true", help="print one JSON line when ready")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m flux_async.emulator") -> int:
    """Parse ``argv`` and serve until interrupted; returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
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
    if args.public_url is not None and not args.public_url.lower().startswith(("http://", "https://")):
        parser.error(f"--public-url: {args.public_url!r} is not an http(s) URL")

    def ready(emulator: Emulator) -> None:
        if args.json:
            print(json.dumps(ready_document(emulator, scenario)), flush=True)
            return
        print(f"flux_async emulator listening on {emulator.url}  (seed {scenario.seed})")
        for provider in PROVIDERS:
            print(f"  {provider:<8} {emulator.base_url(provider)}")
        print(f"  stats    {emulator.url}/_emulator/stats")
        keys = ", ".join(scenario.api_keys) or "(none)"
        print(f"  API key  {keys}{'  (any key accepted)' if scenario.accept_any_key else ''}")
        print("Press Ctrl-C to stop.", flush=True)

    try:
        run_forever(args.port, scenario, host=args.host, on_ready=ready, public_url=args.public_url)
    except OSError as exc:
        print(f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
