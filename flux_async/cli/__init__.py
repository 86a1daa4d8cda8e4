"""The ``flux-async`` command: one-off jobs, resumable batches, status checks, the emulator, a demo.

Built on the library's public API only; nothing in the library imports it. ``main`` is the
console entry point. The command needs the ``cli`` extra (click and rich); without it ``main``
says how to install it instead of failing with an import error, except for ``flux-async
emulator``, which needs only the runtime dependencies and runs all the same.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

_CLI_DEPENDENCIES = frozenset({"click", "rich"})


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``flux-async`` command with ``argv`` (default: the process's arguments)."""
    try:
        from ._app import cli
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _CLI_DEPENDENCIES:
            raise
        args = list(sys.argv[1:] if argv is None else argv)
        if args[:1] == ["emulator"]:
            from ..emulator.__main__ import main as emulator_main

            raise SystemExit(emulator_main(args[1:], prog="flux-async emulator")) from None
        sys.stderr.write(
            f"flux-async: the command line needs the 'cli' extra ({exc.name} is missing): "
            "pip install 'flux-async[cli]'\n"
        )
        raise SystemExit(2) from None
    cli.main(args=None if argv is None else list(argv), prog_name="flux-async")
