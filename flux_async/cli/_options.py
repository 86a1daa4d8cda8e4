"""The options and helpers several ``flux-async`` commands share: the connection, output and
request options, image paths from the command line, opening a session, checking and filling an
output directory. Part of the command line, never imported by the library; imports click, anyio
and the library's public names only (no rich: drawing is ``_display``'s).

Whatever can be checked without the network is checked here, before anything is paid for: the
``--base-url`` is an http(s) URL, the key exists, the output directory can be written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import anyio
import click
from click.core import ParameterSource

from ._api import PROVIDERS, ConfigurationError, GeneratedImage, Limits, Session

__all__ = [
    "check_base_url",
    "connection_options",
    "download_all",
    "local_images",
    "open_session",
    "output_options",
    "request_options",
    "writable_directory",
]

P = ParamSpec("P")
T = TypeVar("T")

_DEFAULT_MODEL = "flux-kontext-pro"


def check_base_url(url: str) -> str:
    """``url`` if it can be a base URL (http or https, a host, no query, no credentials), else
    raises ``ValueError`` saying what is wrong: a typo must not reach the network, where it
    would cost a long timeout and a misleading error."""
    text = url.strip()
    parts = urlsplit(text)
    if "://" not in text:
        raise ValueError(f"{url!r} is not a URL (did you mean http://{text}?)")
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{url!r}: only http:// and https:// URLs are supported")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    try:
        parts.port  # noqa: B018 (reading it validates it)
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("a base URL must not carry credentials: pass the key with --api-key")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a base URL has no query string or fragment")
    return text


def _base_url_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_base_url(value)
    except ValueError as exc:
        source = ctx.get_parameter_source(param.name or "")
        where = " (from FLUX_ASYNC_BASE_URL)" if source is ParameterSource.ENVIRONMENT else ""
        raise click.BadParameter(f"{exc}{where}", ctx=ctx, param=param) from None


def connection_options(fn: Callable[P, T]) -> Callable[P, T]:
    """``--provider``, ``--api-key`` and ``--base-url``: what every command that calls a service takes."""
    fn = click.option(
        "--base-url",
        default=None,
        metavar="URL",
        envvar="FLUX_ASYNC_BASE_URL",
        callback=_base_url_option,
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
    a missing key is a ConfigurationError here, before any request, worded for the command line
    (``--api-key``, not the library's ``api_key=``)."""
    try:
        return Session(provider, api_key=api_key, base_url=base_url, limits=limits, **options)
    except ConfigurationError as exc:
        message = str(exc)
        if "pass api_key=..." in message:
            raise ConfigurationError(message.replace("pass api_key=...", "pass --api-key")) from None
        if "API key" in message:
            raise ConfigurationError(f"{message} (on the command line: --api-key)") from None
        raise


def writable_directory(directory: Path, option: str = "--output") -> Path:
    """Create ``directory`` if needed and prove a file can be written there, before anything is
    paid for; raises ``click.BadParameter`` (exit code 2) naming the reason otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".flux-async-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise click.BadParameter(f"cannot write to {directory}: {reason}", param_hint=f"'{option}'") from None
    return directory


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
