"""What a ledger holds in memory: the entry values it answers with (:class:`LedgerEntry`,
:class:`SettledSpend`) and the mutable records behind them, with the running totals of what the
settled ones cost. Plain values and dictionaries (no I/O, no clock, no event loop); it must not
import the session, the transport, the scheduler, the codecs or the catalog.

``flux_async.ledger`` builds the ledgers on it and re-exports its public values.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Final, Literal

import attrs

from .models import Cost, CostSource, TaskRef

__all__ = [
    "COST_SOURCES",
    "SETTLED",
    "Entries",
    "LedgerEntry",
    "Record",
    "SettledSpend",
    "SettledStatus",
    "parse_amount",
    "parse_cost",
]

#: How a job ended, as the ledger records it. ``not_submitted``: no task exists (the provider
#: refused the submit, or a lookup proved that the POST created none).
SettledStatus = Literal["succeeded", "failed", "not_submitted"]
SETTLED: Final = frozenset({"succeeded", "failed", "not_submitted"})
#: Where a recorded cost comes from (:class:`~flux_async.Cost`'s ``source``).
COST_SOURCES: Final = frozenset({"reported", "price_table", "unknown"})

_MICROS: Final = 1_000_000


@attrs.frozen(kw_only=True)
class LedgerEntry:
    """What the ledger knows about one idempotency key.

    ``state`` says how far the job got: ``intended`` (the POST may have left: in doubt until
    resolved), ``accepted`` (a task exists: ``ref``) or ``settled`` (``status`` says how it
    ended; ``ref`` is set if a task existed). Times are Unix seconds. ``digest`` is the SHA-256
    of the request without its key (for a key the caller chose), so that a key reused for
    another request is caught.

    ``reserved_usd`` is what the job reserved before its POST (None: its price was unknown, or
    the entry predates costs) for ``images`` images; ``cost`` what it settled at (None until
    settled, and for a settlement that charged nothing: no task was created).
    """

    key: str
    provider: str
    model: str
    digest: str
    intended_at: float
    ref: TaskRef | None = None
    accepted_at: float | None = None
    status: SettledStatus | None = None
    error: str | None = None
    settled_at: float | None = None
    reserved_usd: float | None = None
    images: int = 1
    cost: Cost | None = None

    @property
    def state(self) -> Literal["intended", "accepted", "settled"]:
        """``intended``, ``accepted`` or ``settled``."""
        if self.status is not None:
            return "settled"
        return "intended" if self.ref is None else "accepted"

    @property
    def in_doubt(self) -> bool:
        """True for an intent with neither acceptance nor settlement: a POST of unknown fate."""
        return self.ref is None and self.status is None


@attrs.frozen(kw_only=True)
class SettledSpend:
    """What the settled entries of one model cost, over every entry a ledger ever settled
    (those it has since forgotten included).

    ``jobs`` counts the settlements that may have charged (every one but a ``not_submitted``
    without a cost); ``usd`` sums their known costs; ``unpriced_jobs`` counts those whose cost
    is unknown, and ``unpriced_images`` their images (priced by whoever reads them).
    """

    model: str
    jobs: int = 0
    usd: float = 0.0
    unpriced_jobs: int = 0
    unpriced_images: int = 0


def parse_amount(value: object) -> float | None:
    """A recorded amount of US dollars: a finite number of at least 0, or null (ValueError
    otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"bad amount {value!r}")
    return float(value)


def parse_cost(usd: object, source: object) -> Cost:
    """A recorded cost: ``source`` one of :data:`COST_SOURCES`, ``usd`` an amount (null exactly
    when the source is ``unknown``); ValueError otherwise."""
    if source not in COST_SOURCES:
        raise ValueError(f"unknown cost source {source!r}")
    known: CostSource = source  # type: ignore[assignment]  # checked just above
    return Cost(parse_amount(usd), known)


class Record:
    """One key's entry while a ledger holds it: mutable, so a record costs no copy per step."""

    __slots__ = (
        "accepted_at",
        "cost",
        "digest",
        "error",
        "images",
        "intended_at",
        "key",
        "model",
        "provider",
        "ref",
        "reserved_usd",
        "settled_at",
        "status",
    )

    def __init__(
        self,
        key: str,
        provider: str,
        model: str,
        digest: str,
        at: float,
        reserved_usd: float | None = None,
        images: int = 1,
    ) -> None:
        self.key = key
        self.provider = provider
        self.model = model
        self.digest = digest
        self.intended_at = at
        self.reserved_usd = reserved_usd
        self.images = images
        self.ref: TaskRef | None = None
        self.accepted_at: float | None = None
        self.status: SettledStatus | None = None
        self.error: str | None = None
        self.settled_at: float | None = None
        self.cost: Cost | None = None

    @classmethod
    def of(cls, entry: LedgerEntry) -> Record:
        """A record holding what ``entry`` says."""
        record = cls(
            entry.key, entry.provider, entry.model, entry.digest, entry.intended_at,
            entry.reserved_usd, entry.images,
        )  # fmt: skip
        record.ref = entry.ref
        record.accepted_at = entry.accepted_at
        record.status = entry.status
        record.error = entry.error
        record.settled_at = entry.settled_at
        record.cost = entry.cost
        return record

    def entry(self) -> LedgerEntry:
        return LedgerEntry(
            key=self.key,
            provider=self.provider,
            model=self.model,
            digest=self.digest,
            intended_at=self.intended_at,
            ref=self.ref,
            accepted_at=self.accepted_at,
            status=self.status,
            error=self.error,
            settled_at=self.settled_at,
            reserved_usd=self.reserved_usd,
            images=self.images,
            cost=self.cost,
        )


class _Spent:
    """The running totals of one provider and model's settlements."""

    __slots__ = ("jobs", "micros", "unpriced_images", "unpriced_jobs")

    def __init__(self) -> None:
        self.jobs = 0
        self.micros = 0
        self.unpriced_jobs = 0
        self.unpriced_images = 0

    def add(self, record: Record, sign: int) -> None:
        cost = record.cost
        if cost is None and record.status == "not_submitted":
            return  # no task, no charge
        self.jobs += sign
        if cost is not None and cost.usd is not None:
            self.micros += sign * round(cost.usd * _MICROS)
        else:  # settled at an unknown cost (or recorded before costs were)
            self.unpriced_jobs += sign
            self.unpriced_images += sign * record.images


class Entries:
    """The entries of a ledger in memory: unsettled ones always, settled ones up to a bound
    (least recently settled dropped first), and the totals of every settlement."""

    __slots__ = ("_open", "_settled", "_settled_limit", "_spent")

    def __init__(self, settled_limit: int | None) -> None:
        self._open: dict[str, Record] = {}
        self._settled: OrderedDict[str, Record] = OrderedDict()
        self._settled_limit = settled_limit
        self._spent: dict[str, dict[str, _Spent]] = {}  # provider -> model -> totals

    def get(self, key: str) -> Record | None:
        record = self._open.get(key)
        return record if record is not None else self._settled.get(key)

    def claim(
        self,
        key: str,
        provider: str,
        model: str,
        digest: str,
        at: float,
        reserved_usd: float | None = None,
        images: int = 1,
    ) -> Record | None:
        """Record an intent for ``key``; or the record already holding it (unless it is a
        settlement without a task, which a new intent replaces)."""
        existing = self._open.get(key)
        if existing is None:
            existing = self._settled.get(key)
            if existing is not None and existing.status == "not_submitted":
                del self._settled[key]  # its cost stays in the totals
                existing = None
        if existing is not None:
            return existing
        self._open[key] = Record(key, provider, model, digest, at, reserved_usd, images)
        return None

    def put(self, record: Record) -> None:
        """Hold ``record`` as its key's entry, replacing any other (the totals are left as
        they are: a ledger that loads its entries from elsewhere loads its totals too)."""
        key = record.key
        self._open.pop(key, None)
        self._settled.pop(key, None)
        if record.status is None:
            self._open[key] = record
            return
        settled = self._settled
        settled[key] = record
        limit = self._settled_limit
        if limit is not None and len(settled) > limit:
            settled.popitem(last=False)

    def count_spent(
        self, provider: str, model: str, *, jobs: int, micros: int, unpriced_jobs: int, unpriced_images: int
    ) -> None:
        """Add settlements counted elsewhere to the totals of ``provider`` and ``model``."""
        models = self._spent.setdefault(provider, {})
        spent = models.get(model)
        if spent is None:
            spent = models[model] = _Spent()
        spent.jobs += jobs
        spent.micros += micros
        spent.unpriced_jobs += unpriced_jobs
        spent.unpriced_images += unpriced_images

    def accept(self, key: str, ref: TaskRef, at: float) -> None:
        record = self._open.get(key)  # (get(key), without its call: the key is open)
        if record is None:
            record = self._settled.get(key)
        if record is None:
            raise KeyError(f"no intent recorded for {key!r}")
        record.ref = ref
        record.accepted_at = at

    def settle(
        self, key: str, status: SettledStatus, error: str | None, at: float, cost: Cost | None = None
    ) -> bool:
        settled = self._settled
        record = self._open.pop(key, None)
        if record is None:
            record = settled.get(key)
            if record is None:
                return False
            settled.move_to_end(key)  # settled again: now the most recently settled
        else:
            settled[key] = record  # (an open key is never among the settled ones)
        models = self._spent.get(record.provider)
        if models is None:
            models = self._spent[record.provider] = {}
        spent = models.get(record.model)
        if spent is None:
            spent = models[record.model] = _Spent()
        if record.status is not None:
            spent.add(record, -1)  # settled again: the new settlement replaces the old one
        record.status = status
        record.error = error
        record.settled_at = at
        record.cost = cost
        spent.add(record, 1)
        limit = self._settled_limit
        if limit is not None and len(settled) > limit:
            settled.popitem(last=False)
        return True

    def unsettled(self) -> list[LedgerEntry]:
        return [record.entry() for record in self._open.values()]

    def settled(self) -> Iterator[LedgerEntry]:
        return (record.entry() for record in self._settled.values())

    def settled_spend(self, provider: str) -> Mapping[str, SettledSpend]:
        return MappingProxyType(
            {
                model: SettledSpend(
                    model=model,
                    jobs=spent.jobs,
                    usd=spent.micros / _MICROS,
                    unpriced_jobs=spent.unpriced_jobs,
                    unpriced_images=spent.unpriced_images,
                )
                for model, spent in self._spent.get(provider, {}).items()
            }
        )

    def __len__(self) -> int:
        return len(self._open) + len(self._settled)
