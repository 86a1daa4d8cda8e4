"""How a :class:`~flux_async.ledger.LedgerEntry` is held in Redis by
:class:`~flux_async.fleet.RedisLedger`: numbers as Python's ``repr`` (they read back exactly),
the task ref as JSON, and the validation of what is read back (the same rules as a ledger
file's, from ``_ledger_entries``). Pure functions over strings: no I/O, no ``redis``; it must not
import the session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .._ledger_entries import SETTLED, LedgerEntry, parse_amount, parse_cost
from ..errors import ConfigurationError
from ..models import TaskRef

__all__ = ["num", "pairs", "parse_entry", "text_map"]


def num(value: float) -> str:
    """A number as stored: Python's repr of the float, which reads back exactly."""
    return repr(float(value))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pairs(flat: Sequence[object]) -> dict[str, str]:
    """HGETALL's flat list of pairs as a dict of text."""
    it = iter(flat)
    return {_text(field): _text(value) for field, value in zip(it, it, strict=True)}


def text_map(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(field): _text(value) for field, value in raw.items()}


def parse_entry(fields: Mapping[str, str], where: str) -> LedgerEntry:
    """The entry a hash holds; ConfigurationError naming the Redis key when it is not one."""
    try:
        status = fields.get("status")
        if status is not None and status not in SETTLED:
            raise ValueError(f"unknown status {status!r}")
        images = int(fields.get("images", "1"))
        if images < 1:
            raise ValueError(f"bad images {images!r}")
        source = fields.get("cost_source")
        ref = fields.get("ref")
        return LedgerEntry(
            key=fields["key"],
            provider=fields["provider"],
            model=fields["model"],
            digest=fields["digest"],
            intended_at=float(fields["intended_at"]),
            ref=None if ref is None else TaskRef.from_dict(json.loads(ref)),
            accepted_at=_number(fields.get("accepted_at")),
            status=status,  # type: ignore[arg-type]  # checked above
            error=fields.get("error"),
            settled_at=_number(fields.get("settled_at")),
            reserved_usd=parse_amount(_number(fields.get("reserved_usd"))),
            images=images,
            cost=None if source is None else parse_cost(_number(fields.get("cost_usd")), source),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"{where} is not a flux-async ledger entry ({exc})") from None


def _number(value: str | None) -> float | None:
    return None if value is None else float(value)
