"""The options and helpers several ``flux-async`` commands share: the connection, output and
request options, image paths from the command line, opening a session, downloading a result.
Part of the command line, never imported by the library; imports click, anyio and the
library's public names only (no rich: drawing is ``_display``'s).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio
import click

from ._api import PROVIDERS, GeneratedImage, Limits, Session

__all__ = [
    "connection_options",
    "download_all",
    "local_images",
    "open_session",
    "output_options",
    "request_options",
]

P = ParamSpec("P")
T = TypeVar("T")

_DEFAULT_MODEL = "flux-kontext-pro"


def connection_options(fn: Callable[P, T]) -> Callable[P, T]:
    """``--provider``, ``--api-key`` and ``--base-url``: what every command that calls a service takes."""
    fn = click.option(
        "--base-url",
        default=None,
        metavar="URL",
        help="Another endpoint: a running emulator, a regional host (or FLUX_ASYNC_BASE_URL).",
    )(fn)
    fn = click.option(
        "--api-key",
        default=None,
        metavar="KEY",
        help="The API key. Default: TOAPIS_API_KEY, APIMART_API_KEY or BFL_API_KEY (by provider), "
        "then FLUX_ASYNC_API_KEY. Never printed.",
    )(fn)
    return click.option(
        "--provider",
        type=click.Choice(PROVIDERS),
        default="toapis",
        envvar="FLUX_ASYNC_PROVIDER",
        show_default=True,
        help="The service to use (or FLUX_ASYNC_PROVIDER).",
    )(fn)


def output_options(fn: Callable[P, T]) -> Callable[P, T]:
    """``-q/--quiet``, ``--json`` and ``-v/--verbose``."""
    fn = click.option("-v", "--verbose", count=True, help="Show the library's log (-vv: debug).")(fn)
    fn = click.option("--json", "json_", is_flag=True, help="Machine-readable output on stdout.")(fn)
    return click.option("-q", "--quiet", is_flag=True, help="No progress display, notes or summary.")(fn)


def request_options(fn: Callable[P, T]) -> Callable[P, T]:
    """The request fields a command line can give: ``--model``, ``--size``, ``--image``, ``-n``, ``--seed``."""
    fn = click.option("--seed", type=int, default=None, help="A seed (BFL only).")(fn)
    fn = click.option("-n", "n", type=int, default=None, help="Images per job (Grok: 1, 2 or 4).")(fn)
    fn = click.option(
        "--image",
        "images",
        multiple=True,
        metavar="PATH|URL",
        help="An input image to edit (repeatable): a local file or an http(s) URL.",
    )(fn)
    fn = click.option("--size", default=None, help="Aspect ratio: 1:1, 16:9, match_input_image...")(fn)
    return click.option(
        "--model",
        default=_DEFAULT_MODEL,
        show_default=True,
        help="flux-kontext-pro, flux-kontext-max, grok-4-1-image or grok-4-2-image.",
    )(fn)


def local_images(images: Sequence[str]) -> tuple[str, ...]:
    """Image paths on the command line are relative to the working directory."""
    return tuple(
        image if "://" in image or image[:5].lower() == "data:" else os.path.abspath(os.path.expanduser(image))
        for image in images
    )


def open_session(
    provider: str, api_key: str | None, base_url: str | None, limits: Limits | None = None, **options: Any
) -> Session:
    """A session for ``provider`` (``options`` are the Session's other keywords: its ledger...);
    a missing key is a ConfigurationError here, before any request."""
    return Session(provider, api_key=api_key, base_url=base_url, limits=limits, **options)


def _safe(task_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:120]


async def download_all(session: Session, images: Sequence[GeneratedImage], directory: Path, task_id: str) -> list[Path]:
    """``<task_id>.<ext>`` (``-<k>`` added when there are several) in ``directory``."""
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    files = []
    for k, image in enumerate(images):
        suffix = f"-{k}" if len(images) > 1 else ""
        # The suffix is a placeholder: the download replaces it with the image's real type.
        files.append(await session.download(image, directory / f"{_safe(task_id)}{suffix}.img"))
    return files
