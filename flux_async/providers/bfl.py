"""The Black Forest Labs codec (https://api.bfl.ai): Flux Kontext pro/max from the model's maker.

Pure: builds :class:`~flux_async._http.HttpRequest` values and reads
:class:`~flux_async._http.HttpResponse` values; no I/O, no clock, no aiohttp/anyio, nothing
from transport, scheduler or session. Wire names live here and in this module's private
converter only.

Tolerated (the providers' documentation): ``progress`` null or a number; ``input_mp``, ``output_mp``
and any other extra field ignored.

Cost: the submit answer may carry ``cost`` in credits (1 credit = $0.01), read by
:meth:`BflCodec.submit_cost` (a missing or unusable value is no cost, never a failed submit);
a task refused by moderation is not charged, so its state reports ``cost_usd`` 0.

Choices:
- Auth is the ``x-key`` header, not Bearer.
- ``polling_url`` is kept verbatim in ``TaskRef.polling_url`` and polled verbatim: it names the
  region, so it is never rebuilt from the id. Only when a reply has no usable (http/https)
  polling URL, or a task is resumed from a bare id, does the poll fall back to the documented
  ``/v1/get_result?id=...`` on the session's base URL, rather than losing a paid task's id.
- ``size`` becomes ``aspect_ratio``; ``match_input_image`` (or ``auto``) means "omit it" (BFL
  then follows the input image). ``response_format`` becomes ``output_format`` ("png"/"jpeg").
- Images are inlined: a string (URL or base64) as is, bytes as base64, at most 4
  (``input_image``, ``input_image_2`` .. ``input_image_4``). There is no upload API:
  :meth:`BflCodec.build_upload` raises ConfigurationError.
- ``Pending`` is RUNNING (BFL does not tell queued from running). ``Request Moderated`` and
  ``Content Moderated`` are MODERATED, ``Task not found`` (or an HTTP 404) is NOT_FOUND.
- Result URLs carry no expiry field but are documented to live 10 minutes: ``expires_at`` is
  the response's ``received_at`` plus 10 minutes, or None when the arrival time is unknown.
- A webhook target is sent as ``webhook_url`` and ``webhook_secret`` (both optional).
- A webhook body (:func:`read_webhook`) is ``{"id", "status", ...}`` with the poll's statuses;
  ``task_id`` is accepted for a missing ``id``.
- ``progress`` is documented only as "a number or null", and both scales are seen: a value up to
  1 is read as a fraction (0.35 = 35 %), a larger one as a percentage (clamped to 0-100).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, NewType

import attrs

from .. import catalog
from .._http import HttpRequest, HttpResponse
from ..errors import ConfigurationError, ValidationError
from ..models import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    TaskFailure,
    TaskRef,
    TaskState,
    TaskStatus,
)
from ._build import (
    inline_image,
    merge_extra,
    path_segment,
    send_n,
    webhook_secret_field,
    webhook_target,
)
from ._codec import BaseCodec
from ._convert import (
    Failure,
    Percent,
    make_converter,
    read_amount,
    read_failure,
    read_object,
    read_optional_str,
    read_percent,
    read_str,
)
from ._errors import clip, is_success, redact
from ._status import map_status
from ._webhook import WebhookBody, WebhookBodyError, task_id_field, text_field

__all__ = ["BflCodec", "read_webhook"]

#: How long a result URL lives, per BFL's documentation.
RESULT_URL_LIFETIME = timedelta(minutes=10)

_STATUSES = {
    "pending": TaskStatus.RUNNING,
    "ready": TaskStatus.SUCCEEDED,
    "error": TaskStatus.FAILED,
    "request_moderated": TaskStatus.MODERATED,
    "content_moderated": TaskStatus.MODERATED,
    "task_not_found": TaskStatus.NOT_FOUND,
}

#: BFL credits per US dollar (1 credit = $0.01).
_CREDITS_PER_USD = 100

_OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}
_SIZES_MEANING_INPUT = frozenset({"match_input_image", "auto"})
_IMAGE_FIELDS = ("input_image", "input_image_2", "input_image_3", "input_image_4")


# Wire shapes (only the fields we read; everything else is ignored). Private and alive for one
# parse only, so plain slotted classes: a frozen one pays a guarded setattr per field.

#: The seed a result reports: informative only, so anything but an integer is dropped.
_Seed = NewType("_Seed", int)
#: An absolute http(s) URL, kept verbatim; anything else is dropped (the id is what matters).
_PollingUrl = NewType("_PollingUrl", str)


@attrs.define
class _Submit:
    id: str
    polling_url: _PollingUrl | None = None


@attrs.define
class _Result:
    sample: str | None = None
    seed: _Seed | None = None


@attrs.define
class _Task:
    status: str
    progress: Percent | None = None
    result: _Result | None = None
    error: Failure | None = None
    details: Any = None


def _seed(value: object, _: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _polling_url(value: object, _: object) -> str | None:
    if isinstance(value, str) and value.lower().startswith(("https://", "http://")):
        return value
    return None


def _expiry(response: HttpResponse) -> datetime | None:
    """When a result URL received in ``response`` expires (None if the arrival time is unknown)."""
    received = response.received_at
    if received is None:
        return None
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    try:
        return received + RESULT_URL_LIFETIME
    except OverflowError:  # an arrival time at the end of the calendar: no usable expiry
        return None


_converter = make_converter()
_converter.register_structure_hook(_Seed, _seed)
_converter.register_structure_hook(_PollingUrl, _polling_url)


def _read_task(data: dict[str, Any]) -> _Task:
    """A poll body read by hand (see ``BaseCodec._readers``)."""
    result = data.get("result")
    if result is not None:
        result = read_object(result)
        seed = result.get("seed")
        result = _Result(
            sample=read_optional_str(result.get("sample")),
            seed=None if seed is None else _seed(seed, None),  # type: ignore[arg-type]
        )
    return _Task(
        status=read_str(data["status"]),
        progress=read_percent(data.get("progress")),
        result=result,
        error=read_failure(data.get("error")),
        details=data.get("details"),
    )


@attrs.frozen(kw_only=True)
class BflCodec(BaseCodec):
    """Black Forest Labs' wire format. ``BflCodec(api_key=..., user_agent=...)``."""

    name = "bfl"
    default_base_url = "https://api.bfl.ai"
    max_upload_bytes = catalog.max_upload_bytes("bfl")
    supports_client_business_id = False
    # BFL documents 500 and 503 on submit as errors to retry with backoff: with BFL's own JSON
    # body (``detail``) they mean the request was not taken. A gateway's 502/504 stays in doubt.
    refused_server_statuses = frozenset({500, 503})
    _wire = _converter
    _readers = MappingProxyType({_Task: _read_task})

    def _auth_headers(self) -> dict[str, str]:
        return {"x-key": self.api_key}

    def build_submit(
        self,
        request: GenerationRequest,
        *,
        client_business_id: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> HttpRequest:
        """``POST /v1/{model}`` with the request's set fields (``client_business_id`` is not
        supported by BFL and is ignored); ``webhook_url`` and ``webhook_secret`` are sent as
        BFL names them."""
        send_n(request)  # BFL has no n: only None or 1 pass
        if len(request.images) > len(_IMAGE_FIELDS):
            raise ValidationError(
                "images", f"{len(request.images)} images", f"at most {len(_IMAGE_FIELDS)} on bfl"
            )
        body: dict[str, Any] = {"prompt": request.prompt}
        for index, (field, image) in enumerate(zip(_IMAGE_FIELDS, request.images, strict=False)):
            body[field] = inline_image(image, index)
        if request.size is not None and request.size not in _SIZES_MEANING_INPUT:
            body["aspect_ratio"] = request.size
        if request.response_format is not None:
            body["output_format"] = _OUTPUT_FORMATS.get(
                request.response_format, request.response_format
            )
        if request.seed is not None:
            body["seed"] = request.seed
        if request.safety_tolerance is not None:
            body["safety_tolerance"] = request.safety_tolerance
        if request.prompt_upsampling is not None:
            body["prompt_upsampling"] = request.prompt_upsampling
        if webhook_url is not None:
            body["webhook_url"] = webhook_target(webhook_url)
        if webhook_secret is not None:
            body["webhook_secret"] = webhook_secret_field(webhook_secret)
        merge_extra(body, request.extra)
        return HttpRequest(
            method="POST",
            url=f"/v1/{path_segment(request.model, 'model')}",
            headers=self._headers(),
            json=body,
        )

    def parse_submit(self, response: HttpResponse, *, model: str) -> TaskRef:
        """The task from a submit response: ``id`` and ``polling_url`` (kept verbatim)."""
        submit = self._structure(response, _Submit, "submit")
        task_id = self._task_id(submit.id, response)
        return TaskRef(
            provider=self.name, task_id=task_id, polling_url=submit.polling_url, model=model
        )

    def submit_cost(self, response: HttpResponse) -> float | None:
        """The submit answer's ``cost`` (credits) in US dollars; None when absent or unusable."""
        try:
            data = response.decoded()
        except (ValueError, RecursionError):
            return None
        amount = read_amount(data.get("cost")) if isinstance(data, dict) else None
        return None if amount is None else amount / _CREDITS_PER_USD

    def build_poll(self, ref: TaskRef) -> HttpRequest:
        """``GET`` the ref's ``polling_url`` exactly as BFL returned it."""
        self._check_ref(ref)
        if ref.polling_url:
            return self._get(ref.polling_url)
        return self._get(f"/v1/get_result?id={path_segment(ref.task_id)}")

    def parse_poll(self, response: HttpResponse, *, ref: TaskRef) -> TaskState:
        """The task's state; an HTTP 404 is a terminal NOT_FOUND state, like ``Task not found``."""
        if response.status == 404:
            return self._not_found(response, ref)
        task = self._structure(response, _Task, "poll")
        status = map_status(self.name, task.status, _STATUSES)
        result = failure = None
        cost = None
        if status is TaskStatus.SUCCEEDED:
            if task.result is None or not task.result.sample:
                raise self._protocol_error(response, "Ready task carries no result.sample URL")
            result = GenerationResult(
                task_id=ref.task_id,
                images=(GeneratedImage(task.result.sample, _expiry(response)),),
                model=ref.model,
                seed=task.result.seed,
            )
        elif status is TaskStatus.FAILED:
            failure = self._failure(task.error, "task failed")
        elif status is TaskStatus.MODERATED:
            failure = TaskFailure(code=task.status, message=self._moderation_message(task))
            cost = 0.0  # "not charged"
        elif status is TaskStatus.NOT_FOUND:
            failure = TaskFailure(code=None, message=task.status)
        return TaskState(
            task_id=ref.task_id,
            status=status,
            raw_status=task.status,
            progress=_percent_or_fraction(task.progress),
            result=result,
            failure=failure,
            cost_usd=cost,
        )

    def build_lookup(self, client_business_id: str) -> HttpRequest | None:
        """None: BFL cannot find a task by a client-chosen id."""
        return None

    def parse_lookup(self, response: HttpResponse, *, model: str) -> TaskRef | None:
        """None: there is no lookup on BFL."""
        return None

    def build_upload(self, data: bytes, *, filename: str, content_type: str) -> HttpRequest:
        """Always ConfigurationError: BFL has no upload API; images are inlined in the submit."""
        raise ConfigurationError("bfl has no upload API: images are sent inline with the request")

    def parse_upload(self, response: HttpResponse) -> str:
        """Never a URL: BFL has no upload API. Like every parse function it raises only
        APIError (for an HTTP error) or ProtocolError (anything else)."""
        if not is_success(response):
            raise self.parse_error(response)
        raise self._protocol_error(
            response, "bfl has no upload API, so no upload response is valid"
        )

    def _moderation_message(self, task: _Task) -> str:
        """``"Request Moderated"`` plus BFL's ``details`` (e.g. the moderation reasons)."""
        if not task.details:
            return task.status
        try:
            details = json.dumps(task.details, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError, RecursionError):
            return task.status
        return clip(redact(f"{task.status}: {details}", self.api_key))


def _percent_or_fraction(value: float | None) -> float | None:
    """BFL progress on the 0-100 scale, whichever scale it was sent on."""
    if value is None:
        return None
    return value * 100.0 if value <= 1.0 else value


def read_webhook(data: Mapping[str, object]) -> WebhookBody:
    """The task and status of a BFL webhook body (``{"id", "status": "Ready", "result": {...},
    "timestamp"}`` or ``{"id", "status": "Error", "error", ...}``). Raises WebhookBodyError
    naming the field that is wrong."""
    task_id = task_id_field(data.get("id", data.get("task_id")), "id")
    raw = text_field(data, "status")
    if raw is None:
        raise WebhookBodyError("status is missing")
    return WebhookBody(task_id=task_id, status=map_status("bfl", raw, _STATUSES), raw_status=raw)
