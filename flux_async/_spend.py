"""The session's money: what each job reserves before its submit, what it settles at when it
ends, the budget that refuses a submit which could pass it, and the totals ``statistics()``
reports. Synchronous and loop-free; it must not import the transport, the scheduler, the codecs
or the session (it sees the ledger through its protocol, the prices through the catalog).

:class:`Spend` owns the session's price table, its budget (``Limits.max_spend_usd``) and one
reservation per open idempotency key (a job in flight or in doubt), and it writes every
settlement the session makes to the ledger, so that the ledger and the totals never disagree.
A check and its reservation happen with no await between them: concurrent submits of one
session can never both pass a cap that has room for one. Amounts are whole micro-dollars.
It does no I/O of its own (the ledger's ``settle`` must not block).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from . import catalog
from ._config import ModelSpend
from .catalog import from_micros, to_micros
from .errors import BudgetExceededError, ConfigurationError
from .ledger import Ledger, SettledStatus
from .models import Cost

__all__ = ["Spend"]

_log = logging.getLogger("flux_async")


class _Account:
    """One model's price and totals, in micro-dollars and jobs."""

    __slots__ = (
        "model",
        "open_jobs",
        "reserved",
        "settled_jobs",
        "spent",
        "unit",
        "unit_cost",
        "unknown_open",
        "unknown_settled",
    )

    def __init__(self, model: str, price: float | None) -> None:
        self.model = model
        self.unit = None if price is None else to_micros(price)  # one image, in micro-dollars
        self.unit_cost = catalog.reserved_cost(price, 1)  # the same, as a Cost (one shared value)
        self.spent = 0
        self.reserved = 0
        self.settled_jobs = 0
        self.open_jobs = 0
        self.unknown_open = 0
        self.unknown_settled = 0


class SpendObserver(Protocol):
    """Told of every release and settlement (the coordinator shared with other processes)."""

    def released(self, key: str) -> None: ...

    def settled(self, key: str, model: str | None, usd: float | None, charged: bool) -> None: ...


class Spend:
    """Reservations, settlements and the budget of one session (see the module docstring).

    ``spent`` and ``reserved`` start with what the ledger holds for the provider: its settled
    entries at their settled cost, its unsettled ones (in flight or in doubt) at their
    reservation; an entry recorded without a cost is priced from the table, and under a budget
    an entry that cannot be priced is a ConfigurationError.
    """

    __slots__ = (
        "_accounts",
        "_budget",
        "_held",
        "_ledger",
        "_open",
        "_prices",
        "budget_usd",
        "carried_over",
        "observer",
        "provider",
        "reserved",
        "spent",
    )

    def __init__(
        self,
        provider: str,
        ledger: Ledger,
        *,
        prices: Mapping[str, float] | None = None,
        max_spend_usd: float | None = None,
        load: bool = True,
    ) -> None:
        self.provider = provider
        self._ledger = ledger
        #: Told of releases and settlements (a coordinator shared with other processes).
        self.observer: SpendObserver | None = None
        self._prices = catalog.price_table(provider, prices)
        self.budget_usd = max_spend_usd
        self._budget = None if max_spend_usd is None else to_micros(max_spend_usd)
        self._accounts = {model: _Account(model, price) for model, price in self._prices.items()}
        # An open key's model account, and (only when it is known) what it reserved: no
        # object per job beyond the dictionaries' own slots.
        self._open: dict[str, _Account] = {}
        self._held: dict[str, int] = {}
        self.spent = 0
        self.reserved = 0
        self.carried_over = 0
        if load:
            self.load()

    def load(self) -> None:
        """Count what the ledger holds from earlier sessions (once; at construction, or once a
        ledger that must be opened first is open)."""
        self._load()
        self.carried_over = self.spent + self.reserved

    @property
    def prices(self) -> Mapping[str, float | None]:
        """The price per image of every model of the provider, as this session uses them."""
        return self._prices

    def _account(self, model: str) -> _Account:
        account = self._accounts.get(model)
        if account is None:  # a model the catalog does not price (an old ledger's)
            account = self._accounts[model] = _Account(model, None)
        return account

    def _price(self, account: _Account, images: int, what: str) -> int | None:
        unit = account.unit
        if unit is None:
            if self._budget is not None:
                raise ConfigurationError(
                    f"no price is known for {account.model} on {self.provider}, and a budget "
                    f"(Limits.max_spend_usd) needs one for {what}: give it in US dollars per "
                    f"image with Session(prices={{{account.model!r}: ...}})"
                )
            return None
        return unit if images == 1 else unit * images

    def _load(self) -> None:
        provider = self.provider
        for entry in self._ledger.unsettled():
            if entry.provider != provider:
                continue
            account = self._account(entry.model)
            micros = (
                to_micros(entry.reserved_usd)
                if entry.reserved_usd is not None
                else self._price(account, entry.images, "the jobs its ledger holds")
            )
            self._hold(entry.key, account, micros)
        for model, settled in self._ledger.settled_spend(provider).items():
            account = self._account(model)
            micros = to_micros(settled.usd)
            account.settled_jobs += settled.jobs
            if settled.unpriced_images:
                extra = self._price(account, settled.unpriced_images, "the jobs its ledger holds")
                if extra is None:
                    account.unknown_settled += settled.unpriced_jobs
                else:
                    micros += extra
            account.spent += micros
            self.spent += micros

    def _hold(self, key: str, account: _Account, micros: int | None) -> None:
        self._open[key] = account
        account.open_jobs += 1
        if micros is None:
            account.unknown_open += 1
        else:
            self._held[key] = micros
            account.reserved += micros
            self.reserved += micros

    def _drop(self, key: str) -> _Account | None:
        account = self._open.pop(key, None)
        if account is not None:
            account.open_jobs -= 1
            micros = self._held.pop(key, None)
            if micros is None:
                account.unknown_open -= 1
            else:
                account.reserved -= micros
                self.reserved -= micros
        return account

    # -- a submit --------------------------------------------------------------------------------

    def holds(self, key: str) -> bool:
        """True when ``key`` holds a reservation (a job in flight or in doubt)."""
        return key in self._open

    def reserve(self, key: str, model: str, images: int) -> Cost | None:
        """Reserve what a job of ``images`` images of ``model`` costs, before its submit, and
        return it; None when ``key`` already holds a reservation (it keeps that one). Raises
        BudgetExceededError when the budget has no room for it, ConfigurationError under a
        budget when the price is unknown: then nothing is held."""
        if key in self._open:
            return None
        account = self._accounts.get(model)
        if account is None:
            account = self._account(model)
        unit = account.unit
        # The common case (one image of a priced model) without a call.
        micros = unit if images == 1 and unit is not None else self._price(account, images, "every job it submits")
        budget = self._budget
        if budget is not None and micros is not None and self.spent + self.reserved + micros > budget:
            raise BudgetExceededError(
                f"submitting this {model} job (${from_micros(micros):.4f}) would pass the budget "
                f"of ${from_micros(budget):.2f}: ${from_micros(self.spent):.4f} spent and "
                f"${from_micros(self.reserved):.4f} reserved by jobs in flight or in doubt; "
                "nothing was sent",
                model=model,
                max_spend_usd=from_micros(budget),
                spent_usd=from_micros(self.spent),
                reserved_usd=from_micros(self.reserved),
                needed_usd=from_micros(micros),
            )
        self._hold(key, account, micros)
        if images == 1 or micros is None:
            return account.unit_cost
        return Cost(from_micros(micros), "price_table")

    def release(self, key: str) -> None:
        """Drop ``key``'s reservation: nothing was sent for it."""
        self._drop(key)
        if self.observer is not None:
            self.observer.released(key)

    def accepted(self, key: str, reported_usd: float) -> Cost:
        """The provider said at acceptance what the task costs (BFL): the reservation becomes
        that amount."""
        account = self._drop(key)
        if account is not None:
            self._hold(key, account, to_micros(reported_usd))
        return Cost(reported_usd, "reported")

    def cost_of(self, key: str | None, model: str | None) -> Cost:
        """What a job attached to ``key`` (or to a bare task of ``model``) is taken to cost
        until it settles: the key's reservation, else one image at the table's price, else
        unknown."""
        if key is not None and key in self._open:
            micros = self._held.get(key)
            return Cost.UNKNOWN if micros is None else Cost(from_micros(micros), "price_table")
        account = self._accounts.get(model) if model is not None else None
        return Cost.UNKNOWN if account is None else account.unit_cost

    # -- the end of a job --------------------------------------------------------------------------

    def settle(
        self,
        key: str,
        status: SettledStatus,
        *,
        error: str | None = None,
        cost: Cost | None = None,
    ) -> None:
        """Record in the ledger how ``key``'s job ended and what it cost (None: nothing was
        charged), and move its reservation into the spent total (once: a key settled again
        changes nothing here)."""
        try:
            self._ledger.settle(key, status, error=error, cost=cost)
        except Exception:
            # A ledger must not raise here; one that does is reported, and this session's own
            # totals still move on (a lost settlement costs a status check on recovery).
            _log.exception("the ledger could not record how %s ended (%s)", key, status)
        account = self._drop(key)
        if self.observer is not None:
            model = None if account is None else account.model
            self.observer.settled(key, model, None if cost is None else cost.usd, cost is not None)
        if account is None or cost is None:
            return
        account.settled_jobs += 1
        usd = cost.usd
        if usd is None:
            account.unknown_settled += 1
        else:
            micros = to_micros(usd)
            account.spent += micros
            self.spent += micros

    def reservation(self, key: str) -> Cost | None:
        """What ``key`` holds, as a cost (None when it holds nothing)."""
        return self.cost_of(key, None) if key in self._open else None

    # -- totals ------------------------------------------------------------------------------------

    def by_model(self) -> Mapping[str, ModelSpend]:
        """Each model's totals."""
        return MappingProxyType(
            {
                model: ModelSpend(
                    model=model,
                    spent_usd=from_micros(account.spent),
                    reserved_usd=from_micros(account.reserved),
                    settled_jobs=account.settled_jobs,
                    open_jobs=account.open_jobs,
                    unknown_cost_jobs=account.unknown_open + account.unknown_settled,
                )
                for model, account in self._accounts.items()
            }
        )

    def unknown_cost_jobs(self) -> int:
        """Jobs, settled or open, whose cost is unknown."""
        return sum(a.unknown_open + a.unknown_settled for a in self._accounts.values())

    def statistics(self) -> dict[str, Any]:
        """The money fields of ``SessionStatistics``."""
        return {
            "spent_usd": from_micros(self.spent),
            "reserved_usd": from_micros(self.reserved),
            "spend_by_model": self.by_model(),
            "unknown_cost_jobs": self.unknown_cost_jobs(),
            "carried_over_usd": from_micros(self.carried_over),
            "max_spend_usd": self.budget_usd,
        }
