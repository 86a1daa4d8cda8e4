"""What the emulated providers put on the wire: error envelopes, submit replies, task states.

Written from the providers' documentation, never from the client's codecs (a shared misreading would hide).
Every function returns ``bytes`` ready to send (compact JSON).

Standard library and the emulator's own modules only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Iterable

from ._scenario import Scenario
from ._task import (
    CANCELLED,
    CONTENT_MODERATED,
    DONE,
    FAILED,
    OK,
    QUEUED,
    REQUEST_MODERATED,
    Task,
)

__all__ = [
    "apimart_submit",
    "apimart_task",
    "bfl_submit",
    "bfl_task",
    "dumps",
    "error_body",
    "result_url",
    "signature",
    "toapis_submit",
    "toapis_task",
]

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# The C encoder built once: JSONEncoder.encode builds a new one per call, which is half the
# cost of encoding a small poll reply.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode: Callable[[object, int], Iterable[str]] | None = (
    _c_make_encoder(
        None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    if _c_make_encoder is not None
    else None
)


def dumps(value: object) -> bytes:
    """Compact UTF-8 JSON."""
    if _c_encode is not None:
        return "".join(_c_encode(value, 0)).encode()
    return _encoder.encode(value).encode()


# -- errors ----------------------------------------------------------------------------------------

_TOAPIS_ERRORS: dict[int, tuple[str | int, str]] = {
    400: ("invalid_request", "invalid_request_error"),
    401: ("invalid_api_key", "authentication_error"),
    402: ("insufficient_balance", "payment_required"),
    403: ("forbidden", "permission_error"),
    404: (404, "not_found_error"),
    413: ("request_too_large", "invalid_request_error"),
    422: ("content_policy_violation", "invalid_request_error"),
    429: ("rate_limit_exceeded", "rate_limit_error"),
}
_APIMART_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "payment_required",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_DEFAULT_MESSAGES = {
    400: "Bad request",
    401: "Invalid API key",
    402: "Insufficient balance: please top up your account",
    403: "This API key has no access to this resource",
    404: "Not found",
    413: "Request entity too large",
    422: "Your request was rejected by the safety system",
    429: "Too many requests, please slow down",
    500: "Internal server error",
    502: "Bad gateway: upstream error",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


def error_body(
    provider: str,
    status: int,
    message: str | None = None,
    *,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """The provider's error envelope for an HTTP error ``status``."""
    text = message or _DEFAULT_MESSAGES.get(status, "Error")
    if provider == "bfl":
        return dumps({"detail": text})
    if provider == "toapis":
        default_code, kind = _TOAPIS_ERRORS.get(status, ("server_error", "server_error"))
        err: dict[str, object] = {"code": code or default_code, "message": text}
        if param is not None:
            err["param"] = param
        err["type"] = kind
        return dumps({"error": err})
    err = {"code": status, "message": text, "type": _APIMART_TYPES.get(status, "server_error")}
    if param is not None:
        err["param"] = param
    return dumps({"error": err})


# -- shared ----------------------------------------------------------------------------------------


def _ext(task: Task) -> str:
    return task.fmt  # png | jpg | jpeg: the file extension is the format's own name


#: The key the emulator signs BFL result URLs with. A fixed key keeps the emulator's answers
#: deterministic; a signature only has to make a tampered URL fail, as BFL's delivery host does.
_URL_KEY = b"flux_async emulator: BFL result URLs"


def signature(task_id: str, index: int, expires: int) -> str:
    """The ``sig`` of a BFL result URL: an HMAC over the task, the image and the expiry."""
    message = f"{task_id}:{index}:{expires}".encode()
    return hmac.new(_URL_KEY, message, hashlib.sha256).hexdigest()[:32]


def result_url(origin: str, task: Task, index: int, expires: float) -> str:
    """Where image ``index`` of ``task`` is served; BFL's is signed like a CDN URL (``se`` the
    expiry, ``sig`` the signature the file handler checks). ``origin`` is the emulator's own,
    unless the scenario's ``result_origin`` says otherwise (the callers pick)."""
    url = f"{origin}/files/{task.provider}/{task.id}/{index}.{_ext(task)}"
    if task.provider == "bfl":
        url += f"?se={int(expires)}&sig={signature(task.id, index, int(expires))}"
    return url


def _percent(frac: float) -> int:
    return min(99, max(1, int(frac * 100)))


# -- toapis ----------------------------------------------------------------------------------------


def toapis_submit(task: Task, sc: Scenario) -> bytes:
    """The reply to a toapis submit."""
    return dumps(
        {
            "id": task.id,
            "object": "image.generation" if sc.toapis_legacy_object else "generation.task",
            "model": task.model,
            "status": "submitted" if sc.toapis_submitted_status else "queued",
            "progress": 0,
            "created_at": int(task.created),
            "metadata": {},
        }
    )


_TOAPIS_FAILURES = {
    FAILED: ("generation_failed", "call upstream API failed: upstream returned status 422"),
    REQUEST_MODERATED: ("content_policy_violation", "The prompt was rejected by the safety system"),
    CONTENT_MODERATED: ("content_policy_violation", "The output was flagged by the safety system"),
    CANCELLED: ("task_cancelled", "The task was cancelled"),
}


def toapis_task(task: Task, now: float, sc: Scenario, origin: str) -> bytes:
    """A toapis task as ``GET /v1/images/generations/{id}`` reports it at ``now``."""
    phase, frac = task.phase(now, sc.queue_fraction)
    if phase == QUEUED:
        status = sc.unknown_status or ("submitted" if sc.toapis_submitted_status else "queued")
        progress = 0
    elif phase != DONE:
        status, progress = "in_progress", _percent(frac)
    elif task.outcome == OK:
        status, progress = "completed", 100
    else:
        status, progress = "failed", 0
    body: dict[str, object] = {
        "id": task.id,
        "object": "image.generation" if sc.toapis_legacy_object else "generation.task",
        "model": task.model,
        "status": status,
    }
    if sc.report_progress:
        body["progress"] = progress
    body["created_at"] = int(task.created)
    if phase != DONE:
        return dumps(body)
    if task.outcome != OK:
        code, message = _TOAPIS_FAILURES[task.outcome]
        body["error"] = {"code": code, "message": message}
        return dumps(body)
    end = task.end
    expires = end + sc.url_ttl.get("toapis", 86400.0)
    urls = [result_url(sc.result_origin or origin, task, i, expires) for i in range(task.n)]
    body["completed_at"] = int(end)
    body["expires_at"] = int(expires)
    layout = sc.toapis_result_layout
    if layout == "result.data":
        body["result"] = {"type": "image", "data": [{"url": u} for u in urls]}
    elif layout == "images":
        body["images"] = [{"url": u} for u in urls]
    else:
        body["url"] = urls[0]
    return dumps(body)


# -- apimart ---------------------------------------------------------------------------------------


def apimart_submit(task: Task, sc: Scenario) -> bytes:
    """The reply to an apimart submit: ``data`` a one-item list (or, as a variant, an object)."""
    item = {"status": "submitted", "task_id": task.id}
    return dumps({"code": 200, "data": item if sc.apimart_data_object else [item]})


_APIMART_FAILURES = {
    FAILED: ("task_failed", "Image generation failed: upstream returned an error"),
    REQUEST_MODERATED: ("content_policy_violation", "The prompt was rejected by the safety system"),
    CONTENT_MODERATED: ("content_policy_violation", "The output was flagged by the safety system"),
    CANCELLED: ("task_cancelled", "The task was cancelled"),
}


def apimart_task(task: Task, now: float, sc: Scenario, origin: str) -> bytes:
    """An apimart task as ``GET /v1/tasks/{id}`` reports it at ``now``."""
    phase, frac = task.phase(now, sc.queue_fraction)
    estimate = sc.duration_for("apimart", task.model).typical() * sc.time_scale
    data: dict[str, object] = {"id": task.id}
    if phase == QUEUED:
        data["status"] = sc.unknown_status or "pending"
        progress = 0
    elif phase != DONE:
        data["status"] = "processing"
        progress = _percent(frac)
    elif task.outcome == OK:
        data["status"] = "completed"
        progress = 100
        expires = task.end + sc.url_ttl.get("apimart", 86400.0)
        url = result_url(sc.result_origin or origin, task, 0, expires)
        data["result"] = {
            "images": [{"url": url if sc.apimart_url_string else [url], "expires_at": int(expires)}]
        }
    else:
        code, message = _APIMART_FAILURES[task.outcome]
        data["status"] = "cancelled" if task.outcome == CANCELLED else "failed"
        progress = 0
        data["error"] = {"message": message, "type": "task_failed", "code": code}
    if sc.report_progress:
        data["progress"] = progress
    data["created"] = int(task.created)
    if phase == DONE:
        data["completed"] = int(task.end)
        data["actual_time"] = max(1, round(task.duration))
    data["estimated_time"] = max(1, math.ceil(estimate))
    if task.cost is not None:  # every status carries the task's cost, in USD and in credits
        data["cost"] = task.cost
        data["credits_cost"] = round(task.cost * 10, 6)
    if sc.apimart_extra_fields:
        data["usage"] = {"images": task.n}
    return dumps({"code": 200, "data": data})


# -- BFL -------------------------------------------------------------------------------------------


def bfl_submit(task: Task, sc: Scenario, origin: str) -> bytes:
    """The reply to a BFL submit; ``polling_url`` names a regional host path."""
    body: dict[str, object] = {
        "id": task.id,
        "polling_url": f"{origin}/bfl-us1/v1/get_result?id={task.id}",
    }
    if task.cost is not None:  # in credits of $0.01
        body["cost"] = round(task.cost * 100, 6)
    if sc.bfl_extra_fields:
        body["input_mp"] = 0.0
        body["output_mp"] = 1.05
    return dumps(body)


def bfl_not_found(task_id: str) -> bytes:
    """A poll for an id BFL does not know (never created, or expired)."""
    return dumps(
        {"id": task_id, "status": "Task not found", "result": None, "progress": None,
         "details": None}
    )


def bfl_task(task: Task, now: float, sc: Scenario, origin: str) -> bytes:
    """A BFL task as ``GET polling_url`` reports it at ``now``."""
    phase, frac = task.phase(now, sc.queue_fraction)
    if phase != DONE:
        status = (sc.unknown_status or "Pending") if phase == QUEUED else "Pending"
        progress = round(frac, 3) if phase != QUEUED and sc.report_progress else None
        return dumps(
            {"id": task.id, "status": status, "result": None, "progress": progress,
             "details": None}
        )
    outcome = task.outcome
    if outcome == OK:
        expires = task.end + sc.url_ttl.get("bfl", 600.0)
        return dumps(
            {
                "id": task.id,
                "status": "Ready",
                "result": {
                    "sample": result_url(sc.result_origin or origin, task, 0, expires),
                    "prompt": task.prompt,
                    "seed": task.seed,
                    "start_time": task.created,
                    "end_time": task.end,
                    "duration": task.duration,
                },
            }
        )
    if outcome in (REQUEST_MODERATED, CONTENT_MODERATED):
        reason = "Derivative Works" if outcome == REQUEST_MODERATED else "Explicit Content"
        return dumps(
            {
                "id": task.id,
                "status": "Request Moderated" if outcome == REQUEST_MODERATED
                else "Content Moderated",
                "result": None,
                "details": {"Moderation Reasons": [reason]},
            }
        )
    return dumps({"id": task.id, "status": "Error", "error": "Generation failed: internal error"})
