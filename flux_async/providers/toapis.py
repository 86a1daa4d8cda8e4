"""The toapis codec (https://toapis.com): Flux Kontext pro/max and Grok image models.

Pure: builds :class:`~flux_async._http.HttpRequest` values and reads
:class:`~flux_async._http.HttpResponse` values; no I/O, no clock, no aiohttp/anyio, nothing
from transport, scheduler or session. Wire names live here and in this module's private
converter only.

Tolerated (the providers' documentation): the ``submitted`` status and the ``image.generation`` object (ignored:
``object`` is not read), result URLs in ``result.data[].url``, a top-level ``images[].url`` or a
top-level ``url``, and an error ``code`` that is a string or an integer.

Choices:
- Options (``response_format``, ``safety_tolerance``, ``prompt_upsampling``) go under
  ``metadata``; ``response_format`` "jpeg" is spelt "jpg" here.
- ``n`` is sent for Grok models only (it is not documented for Kontext).
- ``seed`` is not documented by toapis, so it is not sent: a request with ``seed`` set raises
  ValidationError, and a caller who knows better passes it through ``extra``
  (e.g. ``extra={"metadata": {"seed": 42}}``; objects in ``extra`` are merged, not replaced).
- A 404 on a poll is a terminal ``NOT_FOUND`` state (the session raises TaskNotFoundError).
- A task's top-level ``expires_at`` applies to every image of it.
- A webhook target (``webhook_url``) is sent as ``callback_url``; toapis signs with the
  per-key secret set in its console, so a ``webhook_secret`` has no field here and is not sent.
- A webhook body (:func:`read_webhook`) is ``{"id", "type", "data": {"task_id", "task_type",
  "model", "status"}}``, second-hand in part, so: ``data.id`` is accepted for a missing
  ``data.task_id``, and a missing ``data.status`` is taken from ``type``
  (``generation.completed`` / ``generation.failed``). ``endpoint.test`` names no task.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from .. import catalog
from .._http import FormField, HttpRequest, HttpResponse
from .._values import new_image, new_result, new_task_ref, new_task_state
from ..errors import BadRequestError
from ..models import (
    GeneratedImage,
    GenerationRequest,
    TaskRef,
    TaskState,
    TaskStatus,
)
from ._build import aggregator_fields, merge_extra, path_segment, webhook_target
from ._codec import BaseCodec
from ._convert import (
    Failure,
    Percent,
    Timestamp,
    Urls,
    make_converter,
    read_failure,
    read_object,
    read_optional_str,
    read_percent,
    read_str,
    read_timestamp,
    read_urls,
)
from ._errors import clip, redact
from ._status import map_status
from ._webhook import WebhookBody, WebhookBodyError, object_field, task_id_field, text_field

__all__ = ["ToapisCodec", "read_webhook"]

_GENERATIONS = "/v1/images/generations"

_STATUSES = {
    "queued": TaskStatus.QUEUED,
    "submitted": TaskStatus.QUEUED,
    "in_progress": TaskStatus.RUNNING,
    "completed": TaskStatus.SUCCEEDED,
    "failed": TaskStatus.FAILED,
}

# Wire shapes (only the fields we read; everything else is ignored). Private and alive for one
# parse only, so plain slotted classes: a frozen one pays a guarded setattr per field.


@attrs.define
class _Result:
    data: Urls | None = None


@attrs.define
class _Task:
    status: str
    model: str | None = None
    progress: Percent | None = None
    created_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    # The documented place, and the two spellings tolerated when it is empty.
    result: _Result | None = None
    images: Urls | None = None
    url: Urls | None = None
    error: Failure | None = None


@attrs.define
class _UploadData:
    url: str


@attrs.define
class _Upload:
    success: bool | None = None
    message: str | None = None
    data: _UploadData | None = None


_converter = make_converter()


def _read_task(data: dict[str, Any]) -> _Task:
    """A poll body read by hand (see ``BaseCodec._readers``): the ``read_*`` functions, with
    the optional fields that are absent on most polls skipped inline."""
    result = data.get("result")
    if result is not None:
        result = _Result(read_urls(read_object(result).get("data")))
    images = data.get("images")
    url = data.get("url")
    error = data.get("error")
    return _Task(
        read_str(data["status"]),
        read_optional_str(data.get("model")),
        read_percent(data.get("progress")),
        read_timestamp(data.get("created_at")),
        read_timestamp(data.get("completed_at")),
        read_timestamp(data.get("expires_at")),
        result,
        None if images is None else read_urls(images),
        None if url is None else read_urls(url),
        None if error is None else read_failure(error),
    )


@attrs.frozen(kw_only=True)
class ToapisCodec(BaseCodec):
    """toapis' wire format. ``ToapisCodec(api_key=..., user_agent=...)``."""

    name = "toapis"
    default_base_url = "https://toapis.com"
    max_upload_bytes = catalog.max_upload_bytes("toapis")
    supports_client_business_id = True
    _wire = _converter
    _readers = MappingProxyType({_Task: _read_task})

    def build_submit(
        self,
        request: GenerationRequest,
        *,
        client_business_id: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> HttpRequest:
        """``POST /v1/images/generations`` with the request's set fields; ``webhook_url``
        becomes ``callback_url`` (toapis accepts only the origin of the key's default callback
        URL); ``webhook_secret`` is not sent (toapis' secret is set per key in its console)."""
        body, options = aggregator_fields(request, provider=self.name)
        if options:
            body["metadata"] = options
        if client_business_id is not None:
            body["client_business_id"] = client_business_id
        if webhook_url is not None:
            body["callback_url"] = webhook_target(webhook_url)
        merge_extra(body, request.extra)
        return HttpRequest(method="POST", url=_GENERATIONS, headers=self._headers(), json=body)

    def parse_submit(self, response: HttpResponse, *, model: str) -> TaskRef:
        """The task from a submit response (``id``)."""
        data = self._object(response, "submit")
        task_id = self._task_id(data.get("id"), response)
        if model.__class__ is not str:
            return TaskRef(provider=self.name, task_id=task_id, model=model)  # checks it
        return new_task_ref(self.name, task_id, None, model)  # the id is checked above

    def build_poll(self, ref: TaskRef) -> HttpRequest:
        """``GET /v1/images/generations/{task_id}``."""
        self._check_ref(ref)
        return self._get(f"{_GENERATIONS}/{path_segment(ref.task_id)}")

    def parse_poll(self, response: HttpResponse, *, ref: TaskRef) -> TaskState:
        """The task's state; a 404 is a terminal NOT_FOUND state."""
        if response.status == 404:
            return self._not_found(response, ref)
        task = self._structure(response, _Task, "poll")
        status = _STATUSES.get(task.status) or map_status(self.name, task.status, _STATUSES)
        result = failure = None
        if status is TaskStatus.SUCCEEDED:
            result = new_result(ref.task_id, self._images(task, response), task.model or ref.model)
        elif status is TaskStatus.FAILED:
            failure = self._failure(task.error, "task failed")
            status = self._failed_status(failure)
        # Every field read above is of its type (the reader's and the converter's checks).
        return new_task_state(
            task_id=ref.task_id,
            status=status,
            raw_status=task.status,
            progress=task.progress,
            created_at=task.created_at,
            completed_at=task.completed_at,
            result=result,
            failure=failure,
        )

    def build_lookup(self, client_business_id: str) -> HttpRequest | None:
        """``GET /v1/images/generations/{client_business_id}``: toapis finds a task by the id
        the client gave it at submit time, which recovers a task whose submit reply was lost."""
        return self._get(f"{_GENERATIONS}/{path_segment(client_business_id, 'client_business_id')}")

    def parse_lookup(self, response: HttpResponse, *, model: str) -> TaskRef | None:
        """The task (with its real task id) found by a lookup, or None on 404."""
        if response.status == 404:
            return None
        data = self._object(response, "lookup")
        task_id = self._task_id(data.get("id"), response)
        return TaskRef(provider=self.name, task_id=task_id, model=model)

    def build_upload(self, data: bytes, *, filename: str, content_type: str) -> HttpRequest:
        """``POST /v1/uploads/images``, multipart ``file`` plus ``purpose=generation``."""
        form = (
            FormField(name="file", value=data, filename=filename, content_type=content_type),
            FormField(name="purpose", value="generation"),
        )
        return HttpRequest(
            method="POST", url="/v1/uploads/images", headers=self._headers(), form=form
        )

    def parse_upload(self, response: HttpResponse) -> str:
        """The uploaded image's URL from ``{"success": true, "data": {"url": ...}}``;
        ``"success": false`` is a BadRequestError with the provider's message, whatever the
        HTTP status."""
        upload = self._structure(response, _Upload, "upload")
        if upload.success is False:
            message = clip(redact(upload.message or "upload refused", self.api_key))
            raise BadRequestError(message, status=response.status, provider=self.name)
        if upload.data is None or not upload.data.url:
            raise self._protocol_error(response, "upload response carries no URL")
        return upload.data.url

    def _images(self, task: _Task, response: HttpResponse) -> tuple[GeneratedImage, ...]:
        urls = (task.result.data if task.result else None) or task.images or task.url
        if not urls:
            raise self._protocol_error(response, "completed task carries no image URL")
        expires_at = task.expires_at
        return tuple([new_image(url, expires_at) for url in urls])


#: The statuses a webhook's ``type`` implies when its ``data.status`` is missing.
_EVENT_STATUSES = {"generation.completed": "completed", "generation.failed": "failed"}


def read_webhook(data: Mapping[str, object]) -> WebhookBody:
    """The task and status of a toapis webhook body (already authenticated and JSON-decoded).

    ``endpoint.test`` (a test delivery from toapis' console) names no task: its ``task_id`` and
    ``status`` are None. Raises WebhookBodyError naming the field that is wrong.
    """
    kind = text_field(data, "type")
    inner = data.get("data")
    if kind == "endpoint.test" and not (isinstance(inner, dict) and inner.get("task_id")):
        return WebhookBody(task_id=None, status=None, raw_status=None)
    fields = object_field(inner, "data")
    task_id = task_id_field(
        fields.get("task_id") if fields.get("task_id") is not None else fields.get("id"),
        "data.task_id",
    )
    raw = text_field(fields, "status", "data.")
    if raw is None:
        raw = _EVENT_STATUSES.get(kind or "")
        if raw is None:
            raise WebhookBodyError("data.status is missing and type names no outcome")
    return WebhookBody(task_id=task_id, status=map_status("toapis", raw, _STATUSES), raw_status=raw)
