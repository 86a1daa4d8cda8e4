"""The apimart codec (https://api.apimart.ai): Flux Kontext pro/max.

Pure: builds :class:`~flux_async._http.HttpRequest` values and reads
:class:`~flux_async._http.HttpResponse` values; no I/O, no clock, no aiohttp/anyio, nothing
from transport, scheduler or session. Wire names live here and in this module's private
converter only.

Tolerated (the providers' documentation): ``data`` as a list (documented for submit) or a single object (seen
on other model pages; accepted on submit and on poll alike), ``result.images[].url`` as a list
of strings or one string, and extra fields (``usage``...) ignored.

Cost: a task status carries ``cost`` (USD) and ``credits_cost`` (documented as cost x 10; the
documentation's own examples disagree, so ``cost`` is read first and ``credits_cost`` / 10 only
when ``cost`` is missing or unusable). Either is a hint: a missing, negative or non-numeric
value is no cost (``TaskState.cost_usd`` None), never a failed response.

Choices:
- Options (``response_format``, ``safety_tolerance``, ``prompt_upsampling``) sit at the top
  level of the body; ``response_format`` "jpeg" is spelt "jpg" here.
- ``seed`` is not documented by apimart, so it is not sent: a request with ``seed`` set raises
  ValidationError; pass it through ``extra`` (``extra={"seed": 42}``) to try it anyway.
- ``n`` is sent for Grok models only; apimart documents Kontext, which has no ``n``.
- apimart cannot look a task up by a client id: ``client_business_id`` is ignored and
  :meth:`ApimartCodec.build_lookup` returns None.
- A 404 on a poll is a terminal ``NOT_FOUND`` state (the session raises TaskNotFoundError).
- A webhook target (``webhook_url``) is sent as the top-level ``webhook``, a base URL: apimart
  posts to ``<webhook>/callback``, and silently drops a URL that is not public http(s) on port
  80/443. apimart does not sign its webhooks, so a ``webhook_secret`` is not sent.
- A webhook body (:func:`read_webhook`) is the ``GET /v1/tasks/{id}`` reply, read with the
  same tolerance as a poll (``data`` an object or a one-item list).
- The upload reply is not wrapped (``{"url": ...}``); the ``{"data": {"url": ...}}`` envelope of
  apimart's other replies is accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NewType

import attrs

from .. import catalog
from .._http import FormField, HttpRequest, HttpResponse
from ..models import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    TaskRef,
    TaskState,
    TaskStatus,
)
from ._build import aggregator_fields, merge_extra, path_segment, webhook_target
from ._codec import BaseCodec
from ._convert import (
    Amount,
    Failure,
    Percent,
    Seconds,
    Timestamp,
    Urls,
    make_converter,
    read_amount,
    read_failure,
    read_object,
    read_percent,
    read_seconds,
    read_str,
    read_timestamp,
    read_url_list,
    register_one_or_many,
)
from ._status import map_status
from ._webhook import WebhookBody, WebhookBodyError, object_field, task_id_field

__all__ = ["ApimartCodec", "read_webhook"]

_STATUSES = {
    "submitted": TaskStatus.QUEUED,
    "pending": TaskStatus.QUEUED,
    "processing": TaskStatus.RUNNING,
    "in_progress": TaskStatus.RUNNING,
    "completed": TaskStatus.SUCCEEDED,
    "failed": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
}

# Wire shapes (only the fields we read; everything else is ignored). Private and alive for one
# parse only, so plain slotted classes: a frozen one pays a guarded setattr per field.


@attrs.define
class _SubmitItem:
    task_id: str


_SubmitItems = NewType("_SubmitItems", list[_SubmitItem])


@attrs.define
class _Submit:
    data: _SubmitItems


@attrs.define
class _Image:
    url: Urls
    expires_at: Timestamp | None = None


@attrs.define
class _Result:
    images: list[_Image] | None = None


@attrs.define
class _Task:
    status: str
    progress: Percent | None = None
    estimated_time: Seconds | None = None
    created: Timestamp | None = None
    completed: Timestamp | None = None
    result: _Result | None = None
    error: Failure | None = None
    cost: Amount | None = None
    credits_cost: Amount | None = None


#: apimart credits per US dollar (``credits_cost`` = ``cost`` x 10).
_CREDITS_PER_USD = 10

_Tasks = NewType("_Tasks", list[_Task])


@attrs.define
class _Poll:
    data: _Tasks


@attrs.define
class _UploadData:
    url: str


@attrs.define
class _Upload:
    url: str | None = None
    data: _UploadData | None = None


_converter = make_converter()
register_one_or_many(_converter, _SubmitItems, _SubmitItem)
register_one_or_many(_converter, _Tasks, _Task)


def _read_image(value: object) -> _Image:
    item = read_object(value)
    return _Image(url=read_url_list(item["url"]), expires_at=read_timestamp(item.get("expires_at")))


def _read_task(value: object) -> _Task:
    data = read_object(value)
    result = data.get("result")
    if result is not None:
        images = read_object(result).get("images")
        if images is not None:
            if not isinstance(images, list):
                raise TypeError("expected an array")
            images = [_read_image(item) for item in images]
        result = _Result(images=images)
    return _Task(
        status=read_str(data["status"]),
        progress=read_percent(data.get("progress")),
        estimated_time=read_seconds(data.get("estimated_time")),
        created=read_timestamp(data.get("created")),
        completed=read_timestamp(data.get("completed")),
        result=result,
        error=read_failure(data.get("error")),
        cost=read_amount(data.get("cost")),
        credits_cost=read_amount(data.get("credits_cost")),
    )


def _read_poll(data: dict[str, Any]) -> _Poll:
    """A poll body read by hand (see ``BaseCodec._readers``): one task or a list of them."""
    items = data["data"]
    return _Poll(data=[_read_task(item) for item in (items if isinstance(items, list) else [items])])  # type: ignore[arg-type]


@attrs.frozen(kw_only=True)
class ApimartCodec(BaseCodec):
    """apimart's wire format. ``ApimartCodec(api_key=..., user_agent=...)``."""

    name = "apimart"
    default_base_url = "https://api.apimart.ai"
    max_upload_bytes = catalog.max_upload_bytes("apimart")
    supports_client_business_id = False
    # A 503 in apimart's own error envelope is its API turning the request away (unavailable),
    # not a failure after a task was made. A 500 is not trusted: some parameter errors are
    # reported as 500 `build_request_failed`, and nothing says whether a task exists then.
    refused_server_statuses = frozenset({503})
    _wire = _converter
    _readers = MappingProxyType({_Poll: _read_poll})

    def build_submit(
        self,
        request: GenerationRequest,
        *,
        client_business_id: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> HttpRequest:
        """``POST /v1/images/generations`` with the request's set fields, options at top level;
        ``idempotency_key`` goes in the ``Idempotency-Key`` header apimart documents for some
        models (unconfirmed for Kontext: a courtesy, never relied on); ``webhook_url`` becomes
        the top-level ``webhook`` (apimart posts to ``<webhook>/callback``); ``webhook_secret``
        is not sent (apimart does not sign)."""
        body, options = aggregator_fields(request, provider=self.name)
        body.update(options)
        if webhook_url is not None:
            body["webhook"] = webhook_target(webhook_url)
        merge_extra(body, request.extra)
        headers = self._headers()
        if idempotency_key is not None:
            headers = {**headers, "Idempotency-Key": idempotency_key}
        return HttpRequest(method="POST", url="/v1/images/generations", headers=headers, json=body)

    def parse_submit(self, response: HttpResponse, *, model: str) -> TaskRef:
        """The task from a submit response (``data[0].task_id``; ``data`` a list or an object)."""
        submit = self._structure(response, _Submit, "submit")
        if not submit.data:
            raise self._protocol_error(response, "submit response carries no task")
        task_id = self._task_id(submit.data[0].task_id, response)
        return TaskRef(provider=self.name, task_id=task_id, model=model)

    def build_poll(self, ref: TaskRef) -> HttpRequest:
        """``GET /v1/tasks/{task_id}``."""
        self._check_ref(ref)
        return self._get(f"/v1/tasks/{path_segment(ref.task_id)}")

    def parse_poll(self, response: HttpResponse, *, ref: TaskRef) -> TaskState:
        """The task's state; a 404 is a terminal NOT_FOUND state."""
        if response.status == 404:
            return self._not_found(response, ref)
        poll = self._structure(response, _Poll, "poll")
        if not poll.data:
            raise self._protocol_error(response, "poll response carries no task")
        task = poll.data[0]
        status = map_status(self.name, task.status, _STATUSES)
        result = failure = None
        if status is TaskStatus.SUCCEEDED:
            wire_images = task.result.images if task.result is not None else None
            images = tuple(
                GeneratedImage(url, image.expires_at)
                for image in wire_images or ()
                for url in image.url
            )
            if not images:
                raise self._protocol_error(response, "completed task carries no image URL")
            result = GenerationResult(task_id=ref.task_id, images=images, model=ref.model)
        elif status is TaskStatus.FAILED:
            failure = self._failure(task.error, "task failed")
            status = self._failed_status(failure)
        elif status is TaskStatus.CANCELLED:
            failure = self._failure(task.error, "task cancelled")
        cost: float | None = task.cost
        if cost is None and task.credits_cost is not None:
            cost = task.credits_cost / _CREDITS_PER_USD
        return TaskState(
            task_id=ref.task_id,
            status=status,
            raw_status=task.status,
            progress=task.progress,
            estimated_time=task.estimated_time,
            created_at=task.created,
            completed_at=task.completed,
            result=result,
            failure=failure,
            cost_usd=cost,
        )

    def build_lookup(self, client_business_id: str) -> HttpRequest | None:
        """None: apimart cannot find a task by a client-chosen id."""
        return None

    def parse_lookup(self, response: HttpResponse, *, model: str) -> TaskRef | None:
        """None: there is no lookup on apimart."""
        return None

    def build_upload(self, data: bytes, *, filename: str, content_type: str) -> HttpRequest:
        """``POST /v1/uploads/images``, multipart field ``file``."""
        form = (FormField(name="file", value=data, filename=filename, content_type=content_type),)
        return HttpRequest(
            method="POST", url="/v1/uploads/images", headers=self._headers(), form=form
        )

    def parse_upload(self, response: HttpResponse) -> str:
        """The uploaded image's URL (``{"url": ...}``)."""
        upload = self._structure(response, _Upload, "upload")
        url = upload.url or (upload.data.url if upload.data is not None else None)
        if not url:
            raise self._protocol_error(response, "upload response carries no URL")
        return url


def read_webhook(data: Mapping[str, object]) -> WebhookBody:
    """The task and status of an apimart webhook body, which is the ``GET /v1/tasks/{id}``
    reply (``{"code": 200, "data": {"id", "status", ...}}``; ``data`` an object or a one-item
    list). Raises WebhookBodyError naming the field that is wrong."""
    items = data.get("data")
    if isinstance(items, list):
        if len(items) != 1:
            raise WebhookBodyError("data must hold exactly one task")
        items = items[0]
    task = object_field(items, "data")
    task_id = task_id_field(task.get("id", task.get("task_id")), "data.id")
    try:
        raw = read_str(task.get("status"))
        _read_task(task)  # the same shape checks as a poll
    except (TypeError, ValueError, KeyError) as exc:
        raise WebhookBodyError(f"data is not a task as a poll reports it ({exc})") from exc
    return WebhookBody(task_id=task_id, status=map_status("apimart", raw, _STATUSES), raw_status=raw)
