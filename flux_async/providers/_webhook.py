"""What the codecs share for reading a webhook's body: :class:`WebhookBody` (the task and status
a delivery names) and :class:`WebhookBodyError` (what is wrong with one), plus the small field
checks every provider's reader uses. Pure: no I/O, no clock, no aiohttp/anyio, nothing from
transport, scheduler or session, and nothing from the other provider modules.

Each codec module reads its own provider's webhook body (the wire names and the tolerance rules
stay there); :mod:`flux_async.webhooks` checks the signature first and then calls that reader.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ..models import TaskStatus

__all__ = ["WebhookBody", "WebhookBodyError", "object_field", "task_id_field", "text_field"]


class WebhookBodyError(ValueError):
    """A webhook body that does not say what the provider documents; the message names the
    field (never a value: a body may carry a prompt)."""


@attrs.frozen(kw_only=True)
class WebhookBody:
    """What a webhook delivery says: the task (None only for a delivery about no task, such as
    toapis' ``endpoint.test``), its status in the library's terms and in the provider's words."""

    task_id: str | None
    status: TaskStatus | None
    raw_status: str | None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else type(value).__name__


def text_field(data: Mapping[str, object], name: str, where: str = "") -> str | None:
    """``data[name]`` as a string, None when absent or null; WebhookBodyError for another type."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise WebhookBodyError(f"{where}{name} must be a string, not {_kind(value)}")
    return value


def task_id_field(value: object, where: str) -> str:
    """A usable task id (a non-empty printable string of at most 1000 characters)."""
    if value is None:
        raise WebhookBodyError(f"{where} is missing")
    if not isinstance(value, str):
        raise WebhookBodyError(f"{where} must be a string, not {_kind(value)}")
    if not value.strip() or len(value) > 1000 or not value.isprintable():
        raise WebhookBodyError(f"{where} is not a usable task id")
    return value


def object_field(value: object, where: str) -> Mapping[str, object]:
    """``value`` as a JSON object, WebhookBodyError naming ``where`` otherwise."""
    if not isinstance(value, dict):
        raise WebhookBodyError(f"{where} must be an object, not {_kind(value)}")
    return value
