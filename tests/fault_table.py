"""Run the fault matrix and print its figures as a table (faults x providers).

Usage, from the repository root::

    .venv/bin/python tests/fault_table.py            # Markdown table on stdout
    .venv/bin/python tests/fault_table.py --json     # the raw figures

Each cell reads ``jobs / lost / duplicated / POSTs per job`` and, after a colon, how the jobs
ended (``ok`` or the error every job ended with); a ``remote running`` note marks tasks the
provider was still running when the cell ended (a job deadline shorter than the provider).
The figures are those the matrix test itself asserted on (``test_faults.FIGURES``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


class _Collect:
    """A pytest plugin that keeps the matrix module's figures once the run is over."""

    def __init__(self) -> None:
        self.figures: dict[tuple[str, str], dict[str, Any]] = {}

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        module = sys.modules.get("test_faults")
        if module is not None:
            self.figures = dict(module.FIGURES)


def _cell(fig: dict[str, Any] | None) -> str:
    if fig is None:
        return "(not run)"
    ended = "ok" if fig["error"] is None else fig["error"]
    text = (
        f"{fig['jobs']} / {fig['lost']} / {fig['duplicated']} / {fig['posts_per_job']:.1f}: {ended}"
    )
    if fig["remote_running"]:
        text += f" ({fig['remote_running']} remote running)"
    return text


def table(figures: dict[tuple[str, str], dict[str, Any]]) -> str:
    """The figures as a Markdown table, rows in the matrix's order."""
    faults = list(dict.fromkeys(label for label, _ in figures))
    providers = ("toapis", "apimart", "bfl")
    lines = [
        "| fault | " + " | ".join(providers) + " |",
        "|---|" + "---|" * len(providers),
    ]
    for fault in faults:
        cells = [_cell(figures.get((fault, p))) for p in providers]
        lines.append(f"| {fault} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: jobs / lost / duplicated / POSTs per job: how every job ended.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    collect = _Collect()
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", str(HERE / "test_faults.py")], plugins=[collect]
    )
    if "--json" in argv:
        rows = [{"fault": f, "provider": p, **fig} for (f, p), fig in collect.figures.items()]
        print(json.dumps(rows, indent=1))
    else:
        print()
        print(table(collect.figures))
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
