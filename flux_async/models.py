"""Frozen values of flux_async's public API: requests, results, task states and outcomes.

Pure values: no I/O, no clock, no aiohttp or anyio. Names here are Python names; the wire
spellings of each provider live only in that provider's codec.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Required, TypeAlias, TypedDict

import attrs

from ._checks import check_task_id
from .errors import ValidationError

__all__ = [
    "Cost",
    "CostSource",
    "GeneratedImage",
    "GenerationFields",
    "GenerationRequest",
    "GenerationResult",
    "ImageInput",
    "Outcome",
    "TaskFailure",
    "TaskRef",
    "TaskState",
    "TaskStatus",
]

#: An input image: an http(s) URL, a local path, or the image's bytes.
ImageInput: TypeAlias = "str | os.PathLike[str] | bytes"


def _to_images(value: ImageInput | Iterable[ImageInput] | None) -> tuple[ImageInput, ...]:
    if value is None or value == ():
        return ()
    if isinstance(value, (str, bytes, os.PathLike)):
        return (value,)
    return tuple(value)


_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def _to_extra(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not value:
        return _NO_EXTRA  # read-only, so one shared empty mapping will do
    return MappingProxyType(dict(value))


class GenerationFields(TypedDict, total=False):
    """:class:`GenerationRequest`'s fields as keywords (``session.generate(model=..., prompt=...)``),
    so that a type checker checks them there too."""

    model: Required[str]
    prompt: Required[str]
    size: str | None
    n: int | None
    images: ImageInput | Iterable[ImageInput] | None
    response_format: str | None
    safety_tolerance: int | None
    prompt_upsampling: bool | None
    seed: int | None
    extra: Mapping[str, Any] | None
    idempotency_key: str | None


@attrs.frozen(kw_only=True)
class GenerationRequest:
    """One image-generation job, as the caller means it (validated by ``catalog.validate``).

    ``images`` holds URLs, paths or bytes: URLs are sent as they are; paths and bytes are
    uploaded first on the aggregators and inlined as base64 on BFL. ``extra`` is merged into the
    provider's body unvalidated, for options this library does not know yet (except the fields
    the library owns, such as toapis' ``client_business_id``).

    ``idempotency_key`` names the job for the session's ledger: a second submit with a key that
    is already accepted returns the existing job instead of paying again, and on toapis the key
    is sent as ``client_business_id``, so a submit whose answer was lost is found by it. Without
    one, the session makes a fresh key for every submit.
    """

    model: str
    prompt: str
    size: str | None = None
    n: int | None = None
    images: tuple[ImageInput, ...] = attrs.field(default=(), converter=_to_images)
    response_format: str | None = None
    safety_tolerance: int | None = None
    prompt_upsampling: bool | None = None
    seed: int | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_extra, hash=False)
    idempotency_key: str | None = None

    def __repr__(self) -> str:
        shown = []
        for field in attrs.fields(GenerationRequest):
            value = getattr(self, field.name)
            if field.name == "images":
                value = tuple(f"<{len(v)} bytes>" if isinstance(v, bytes) else v for v in value)
            elif field.name == "extra":
                value = dict(value)
                if not value:
                    continue
            elif value is None:
                continue
            shown.append(f"{field.name}={value!r}")
        return f"GenerationRequest({', '.join(shown)})"


#: Where a :class:`Cost` comes from: the provider's own figure, the price table, or nowhere.
CostSource: TypeAlias = Literal["reported", "price_table", "unknown"]


@attrs.frozen
class Cost:
    """What a job costs, in US dollars, and where that figure comes from.

    ``source`` is ``"reported"`` (the provider said so: BFL's submit answer, apimart's task
    status, or a BFL task refused by moderation, which is not charged), ``"price_table"``
    (the price per image times the images charged) or ``"unknown"`` (no price is known:
    ``usd`` is None, never a silent zero). :attr:`Cost.UNKNOWN` is the one unknown cost.
    """

    usd: float | None
    source: CostSource

    #: The cost of a job whose price is not known.
    UNKNOWN: ClassVar[Cost]

    def __attrs_post_init__(self) -> None:
        if (self.usd is None) != (self.source == "unknown"):
            raise ValueError("a Cost has an amount exactly when its source is not 'unknown'")

    @property
    def known(self) -> bool:
        """True when the amount is known."""
        return self.usd is not None


Cost.UNKNOWN = Cost(None, "unknown")


@attrs.frozen
class GeneratedImage:
    """One result image: where to fetch it and until when (an aware datetime, or None if unknown)."""

    url: str
    expires_at: datetime | None = None


@attrs.frozen(kw_only=True)
class GenerationResult:
    """The images of a finished task, and what the task cost (:attr:`Cost.UNKNOWN` when no
    price is known, as for a state read with ``Session.get_task``)."""

    task_id: str
    images: tuple[GeneratedImage, ...]
    model: str | None = None
    seed: int | None = None
    cost: Cost = Cost.UNKNOWN


class TaskStatus(enum.Enum):
    """The provider-neutral state of a task."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    MODERATED = "moderated"
    NOT_FOUND = "not_found"

    @property
    def terminal(self) -> bool:
        """True once the task can change no more."""
        return self not in _UNDERWAY


#: The statuses of a task that can still change (a tuple: a member is found by identity, where
#: a set would hash it with a call of Enum's).
_UNDERWAY = (TaskStatus.QUEUED, TaskStatus.RUNNING)


@attrs.frozen
class TaskFailure:
    """Why a task ended without an image, in the provider's words."""

    code: str | int | None
    message: str


@attrs.frozen(kw_only=True)
class TaskState:
    """What one status check said about a task.

    ``raw_status`` is the provider's own spelling. ``progress`` is 0-100 when the provider
    reports it; ``estimated_time`` is the provider's estimate of the total run time in seconds;
    ``created_at`` / ``completed_at`` are the provider's timestamps. A terminal state carries
    ``result`` (success) or ``failure`` (anything else). ``cost_usd`` is what the provider
    reports the task costs, in US dollars, when the status says (apimart on every status; BFL
    0 for a task refused by moderation, which it does not charge); None otherwise.
    """

    task_id: str
    status: TaskStatus
    raw_status: str
    progress: float | None = None
    estimated_time: float | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    result: GenerationResult | None = None
    failure: TaskFailure | None = None
    cost_usd: float | None = None

    @property
    def terminal(self) -> bool:
        """True once the task can change no more."""
        return self.status not in _UNDERWAY  # (status.terminal, without its call)


@attrs.frozen(kw_only=True)
class TaskRef:
    """A small, serialisable handle on a submitted task: enough to poll it from any session.

    ``polling_url`` is BFL's poll URL, kept verbatim (it names the region). ``model`` lets a
    resumed task count against the right limits and timing estimates.

    ``task_id`` goes into URLs, so it is checked here: 1 to 256 characters from ``A-Z a-z 0-9``
    and ``. _ ~ : -``, not only dots; anything else is a ValidationError naming ``task_id``.
    """

    provider: str
    task_id: str
    polling_url: str | None = None
    model: str | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.provider, str) or not self.provider:
            raise ValidationError("provider", self.provider, "a provider's name", reason="not a provider")
        check_task_id(self.task_id)
        # Written out rather than looped over the names: every accepted task makes a ref.
        if self.polling_url is not None and not isinstance(self.polling_url, str):
            raise _not_str("polling_url", self.polling_url)
        if self.model is not None and not isinstance(self.model, str):
            raise _not_str("model", self.model)

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready dict (only the fields that are set)."""
        out = {"provider": self.provider, "task_id": self.task_id}
        if self.polling_url is not None:
            out["polling_url"] = self.polling_url
        if self.model is not None:
            out["model"] = self.model
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskRef:
        """The inverse of :meth:`to_dict`."""
        return cls(
            provider=str(data["provider"]),
            task_id=str(data["task_id"]),
            polling_url=None if data.get("polling_url") is None else str(data["polling_url"]),
            model=None if data.get("model") is None else str(data["model"]),
        )


def _not_str(name: str, value: object) -> ValidationError:
    return ValidationError(name, value, "a str or None", reason=f"not a str but {type(value).__name__}")


@attrs.frozen(kw_only=True)
class Outcome:
    """The end of one job of a batch: a result, or the error that ended it.

    ``index`` is the job's position in the input; ``task_id`` is None when no task was created.
    ``files`` lists the downloaded files when the batch was asked to download. ``cost`` is what
    the job cost (settled when its task ended, failed or not; the reservation for a submit in
    doubt, which counts as spent); None when no task was created (nothing was charged).
    """

    index: int
    request: GenerationRequest
    task_id: str | None = None
    result: GenerationResult | None = None
    error: BaseException | None = None
    files: tuple[Path, ...] = ()
    cost: Cost | None = None

    @property
    def ok(self) -> bool:
        """True when the job produced a result."""
        return self.error is None and self.result is not None
