"""One request of a batch file: the command line's :class:`Defaults`, the :class:`Entry` a good
line becomes or the :class:`LineError` a bad one does, and how a line's fields and the defaults
make a :class:`~flux_async.GenerationRequest`. Part of the command line, never imported by the
library. No I/O, no network, no event loop; from the library it takes only ``GenerationRequest``.

The per-format readers of ``_batchfile`` turn a line into fields; everything after that (which
default fills a missing field, where a relative image path points) is decided here, once for
every format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from ._api import GenerationRequest

__all__ = [
    "REQUEST_FIELDS",
    "Defaults",
    "Entry",
    "LineError",
    "missing_model",
    "request_from",
]

#: The request fields a ``.jsonl`` object or a ``.csv`` header may name.
REQUEST_FIELDS: Final = (
    "model",
    "prompt",
    "size",
    "n",
    "images",
    "response_format",
    "safety_tolerance",
    "prompt_upsampling",
    "seed",
    "extra",
)


@attrs.frozen(kw_only=True)
class Defaults:
    """The request fields given on the command line; a file's own fields take precedence.

    ``images`` are added to a request that names none of its own.
    """

    model: str | None = None
    size: str | None = None
    n: int | None = None
    images: tuple[str, ...] = ()
    response_format: str | None = None
    safety_tolerance: int | None = None
    prompt_upsampling: bool | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (for the batch journal's header)."""
        out = attrs.asdict(self)
        out["images"] = list(self.images)
        return out


@attrs.frozen
class Entry:
    """One request read from a file: its index among the file's requests and its line number."""

    index: int
    line: int
    request: GenerationRequest


@attrs.frozen
class LineError:
    """A line that does not hold a valid request: where, which field, and why."""

    index: int
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def request_from(
    fields: Mapping[str, Any], defaults: Defaults, base: Path | None
) -> GenerationRequest:
    """The request a line's ``fields`` make with ``defaults``; image paths resolved from ``base``."""
    images = fields.get("images")
    if images is None:
        images = defaults.images
    elif base is not None:
        images = tuple(_resolve_image(image, base) for image in images)
    return GenerationRequest(
        model=fields.get("model", defaults.model),
        prompt=fields["prompt"],
        size=fields.get("size", defaults.size),
        n=fields.get("n", defaults.n),
        images=images,
        response_format=fields.get("response_format", defaults.response_format),
        safety_tolerance=fields.get("safety_tolerance", defaults.safety_tolerance),
        prompt_upsampling=fields.get("prompt_upsampling", defaults.prompt_upsampling),
        seed=fields.get("seed", defaults.seed),
        extra=fields.get("extra") or {},
    )


def _resolve_image(image: str, base: Path) -> str:
    """A relative path in a file means relative to the file; URLs are left alone."""
    if "://" in image or image[:5].lower() == "data:" or not image:
        return image
    path = Path(image).expanduser()
    return os.fspath(path if path.is_absolute() else base / path)


def missing_model(index: int, line: int, fields: Mapping[str, Any], defaults: Defaults) -> LineError | None:
    """The error for a line that names no model when the command line gave none either."""
    if fields.get("model", defaults.model) is None:
        return LineError(index, line, "model", "no model: name one in the file or with --model")
    return None
