"""Money on the command line: ``--price``/``--prices``, ``--max-spend`` and ``--dry-run`` of
``flux-async batch``, and how an estimate is shown. Part of the command line, never imported by
the library; the prices, the cost rules and the estimate are the catalog's (plain functions).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from ._api import ConfigurationError, CostEstimate, catalog, estimate_cost
from ._batchentry import Defaults, Entry
from ._batchfile import read_entries
from ._runtime import EXIT_USAGE, Output, console, fail

__all__ = ["check_budget", "dry_run", "read_prices", "spend_options", "usd"]

F = TypeVar("F", bound=Callable[..., Any])


def spend_options(command: F) -> F:
    """``--price``, ``--prices``, ``--max-spend`` and ``--dry-run``."""
    for option in reversed(
        (
            click.option(
                "--price", "price", multiple=True, metavar="MODEL=USD",
                help="The price of one image of MODEL, in US dollars, over the built-in table (repeatable).",
            ),
            click.option(
                "--prices", "prices_file", type=click.Path(dir_okay=False, path_type=Path),
                help='A JSON file of prices: {"MODEL": USD, ...} (--price wins over it).',
            ),
            click.option(
                "--max-spend", "max_spend", type=click.FloatRange(min=0), metavar="USD",
                help=(
                    "Never spend more than USD on this batch, all its runs together: a submit that "
                    "could pass it is not sent, and the batch stops (exit 3; --resume with a larger "
                    "budget continues)."
                ),
            ),
            click.option(
                "--dry-run", is_flag=True,
                help="Check the file and print the jobs, images and estimated cost per model; send nothing.",
            ),
        )
    ):  # fmt: skip
        command = option(command)
    return command


def read_prices(price: tuple[str, ...], prices_file: Path | None, provider: str) -> dict[str, float]:
    """The user's prices (file first, then each ``--price``), checked against the provider's
    models; a bad one ends the command with exit 2."""
    prices: dict[str, float] = {}
    if prices_file is not None:
        try:
            loaded = json.loads(prices_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            fail(f"--prices {prices_file}: no such file", EXIT_USAGE)
        except (OSError, ValueError) as exc:
            fail(f"--prices {prices_file}: not a JSON object of prices ({exc})", EXIT_USAGE)
        if not isinstance(loaded, dict):
            fail(f'--prices {prices_file}: expected a JSON object like {{"flux-kontext-pro": 0.04}}', EXIT_USAGE)
        for model, value in loaded.items():
            prices[str(model)] = _price(f"--prices {prices_file}: {model}", value)
    for item in price:
        model, sep, value = item.partition("=")
        if not sep or not model.strip():
            fail(f"--price {item!r}: expected MODEL=USD, e.g. --price flux-kontext-pro=0.04", EXIT_USAGE)
        prices[model.strip()] = _price(f"--price {item}", value.strip())
    try:
        catalog.price_table(provider, prices)
    except ConfigurationError as exc:
        fail(f"{exc}", EXIT_USAGE)
    return prices


def _price(where: str, value: object) -> float:
    try:
        usd = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        fail(f"{where}: {value!r} is not a price in US dollars", EXIT_USAGE)
    if not usd >= 0 or usd == float("inf"):
        fail(f"{where}: a price must be a number of US dollars, at least 0", EXIT_USAGE)
    return usd


def estimate(file: Path, defaults: Defaults, provider: str, prices: dict[str, float]) -> CostEstimate:
    """What the batch file would cost: one streaming pass (the file was checked already)."""
    requests = (
        catalog.validate(item.request, provider)
        for item in read_entries(file, defaults)
        if isinstance(item, Entry)
    )
    return estimate_cost(requests, provider, prices)


def check_budget(found: CostEstimate, max_spend: float | None) -> None:
    """A budget needs every price: refuse to start (exit 2) and say which ones to give."""
    if max_spend is not None and found.unpriced_models:
        wanted = " ".join(f"--price {model}=USD" for model in found.unpriced_models)
        fail(
            f"--max-spend needs the price of every model, and {found.provider} publishes none for "
            f"{', '.join(found.unpriced_models)}: give {wanted}",
            EXIT_USAGE,
        )


def usd(amount: float | None) -> str:
    """``$1.23`` (``$0.0320`` below a dollar's cent precision), or ``unknown``."""
    if amount is None:
        return "unknown"
    return f"${amount:.2f}" if amount >= 1 or amount == 0 else f"${amount:.4f}".rstrip("0").rstrip(".")


def dry_run(out: Output, file: Path, found: CostEstimate, max_spend: float | None) -> int:
    """Print the estimate (a table, or JSON with --json): exit 0, nothing sent."""
    if out.json:
        out.data(
            {
                "dry_run": True,
                "provider": found.provider,
                "jobs": found.jobs,
                "images": found.images,
                "usd": found.usd,
                "priced_usd": found.priced_usd,
                "unpriced_models": list(found.unpriced_models),
                "max_spend_usd": max_spend,
                "by_model": {
                    model: {"jobs": m.jobs, "images": m.images, "price_usd": m.price_usd, "usd": m.usd}
                    for model, m in found.by_model.items()
                },
            }
        )
        return 0
    table = Table(title=f"dry run: {file.name} on {found.provider} (nothing sent)", title_justify="left")
    for column in ("model", "jobs", "images", "price per image", "cost"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, m in found.by_model.items():
        table.add_row(model, str(m.jobs), str(m.images), usd(m.price_usd), usd(m.usd))
    table.add_row("total", str(found.jobs), str(found.images), "", usd(found.usd), style="bold")
    console(stderr=False).print(table)
    if found.unpriced_models:
        out.error(
            f"no published price for {', '.join(found.unpriced_models)}: the total is unknown "
            f"(give --price MODEL=USD; priced part {usd(found.priced_usd)})"
        )
    if max_spend is not None and found.usd is not None and found.usd > max_spend:
        out.error(f"--max-spend {usd(max_spend)} stops this batch after about {usd(max_spend)} of {usd(found.usd)}")
    return 0
