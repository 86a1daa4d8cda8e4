"""Prices as data, and the rules that turn them into costs: what a model costs per image on each
provider (:data:`PRICES`), the prices a session uses (:func:`price_table`), what a job reserves
and settles at (:func:`reserved_cost`, :func:`settled_cost`), and what a set of requests would
cost (:func:`estimate_cost`, the library's dry run). Plain data and arithmetic (no I/O, no
clock, no aiohttp/anyio): it must not import the session, transport, scheduler or codecs, and
imports only ``flux_async.models``, ``flux_async.errors`` and the catalog's model tables.

Prices are US dollars per image, from the providers' own pages where they publish one:

- **bfl**: the published prices, $0.04 for Kontext pro and $0.08 for Kontext max (BFL bills in
  credits of $0.01, and its submit answer reports what a task costs).
- **apimart**: the listed prices, second-hand: about $0.032 (pro) and $0.064 (max) for a 1K
  image. Every task status reports the actual cost, and that is what a job settles at.
- **toapis**: no price is published and nothing reports a cost: the price is *unknown*
  (``None``), never zero. Give one (``Session(prices={"flux-kontext-pro": 0.03})``) to budget.

A job is charged for ``n`` images where the model takes ``n`` (Grok, charged up front), else
for one. Sums are kept in whole micro-dollars (:func:`to_micros`), so that 25 jobs at $0.04
make exactly $1.00 and a budget compares exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs

from ..errors import ConfigurationError
from ..models import Cost, GenerationRequest
from ._specs import model_spec, models_for

__all__ = [
    "PRICES",
    "CostEstimate",
    "ModelEstimate",
    "estimate_cost",
    "from_micros",
    "images_charged",
    "price_table",
    "reserved_cost",
    "settled_cost",
    "to_micros",
    "unit_price",
]

#: USD per image, per provider and model: the documented defaults; None where none is known.
PRICES: Mapping[str, Mapping[str, float | None]] = MappingProxyType(
    {
        "toapis": MappingProxyType(
            {
                "flux-kontext-pro": None,
                "flux-kontext-max": None,
                "grok-4-1-image": None,
                "grok-4-2-image": None,
            }
        ),
        "apimart": MappingProxyType({"flux-kontext-pro": 0.032, "flux-kontext-max": 0.064}),
        "bfl": MappingProxyType({"flux-kontext-pro": 0.04, "flux-kontext-max": 0.08}),
    }
)

_MICROS = 1_000_000


def to_micros(usd: float) -> int:
    """``usd`` in whole micro-dollars (rounded): the unit costs are summed and compared in."""
    return round(usd * _MICROS)


def from_micros(micros: int) -> float:
    """Whole micro-dollars back in US dollars."""
    return micros / _MICROS


def _check_price(model: str, price: object) -> float:
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
        raise ConfigurationError(
            f"the price of {model!r} must be a number of US dollars per image, at least 0 "
            f"(got {price!r})"
        )
    return float(price)


def price_table(provider: str, prices: Mapping[str, float] | None = None) -> Mapping[str, float | None]:
    """The price per image of every model ``provider`` serves: :data:`PRICES`, with ``prices``
    (model -> USD per image) over them.

    Raises ConfigurationError for an unknown provider, a model the provider does not serve (a
    misspelt name must not leave the default in place silently) or a price that is not a
    finite number of at least 0.
    """
    models = models_for(provider)
    table: dict[str, float | None] = dict(PRICES.get(provider, {}))
    for model in models:
        table.setdefault(model, None)
    for model, price in (prices or {}).items():
        if model not in models:
            raise ConfigurationError(
                f"a price was given for {model!r}, which {provider} does not serve "
                f"(its models: {', '.join(models)})"
            )
        table[model] = _check_price(model, price)
    return MappingProxyType(table)


def unit_price(provider: str, model: str, prices: Mapping[str, float] | None = None) -> float | None:
    """USD per image of ``model`` on ``provider`` (``prices`` over the defaults); None when
    unknown."""
    return price_table(provider, prices).get(model)


def images_charged(request: GenerationRequest) -> int:
    """The images a job is charged for: ``n`` where the request sets it (Grok's ``n`` is charged
    up front; validation sets Grok's default of 1), else one."""
    n = request.n
    return n if n is not None and n > 0 else 1


def reserved_cost(price: float | None, images: int) -> Cost:
    """What a job reserves before its submit: ``price`` x ``images`` from the price table, or
    :attr:`Cost.UNKNOWN` when the price is unknown."""
    if price is None:
        return Cost.UNKNOWN
    return Cost(from_micros(to_micros(price) * images), "price_table")


def settled_cost(reserved: Cost, reported_usd: float | None) -> Cost:
    """What a job settles at: the provider's reported cost when there is one, else what it
    reserved (which may be unknown)."""
    if reported_usd is None:
        return reserved
    return Cost(reported_usd, "reported")


@attrs.frozen(kw_only=True)
class ModelEstimate:
    """The estimate for one model: its jobs, the images they are charged for, the price per
    image, and their cost (None when the price is unknown)."""

    model: str
    jobs: int
    images: int
    price_usd: float | None
    usd: float | None


@attrs.frozen(kw_only=True)
class CostEstimate:
    """What a set of requests would cost on one provider, before anything is sent.

    ``usd`` is the total, or None when a model's price is unknown (``unpriced_models`` names
    them; ``priced_usd`` sums the others). ``by_model`` holds one :class:`ModelEstimate` per
    model, in the order the models first appear.
    """

    provider: str
    jobs: int
    images: int
    usd: float | None
    priced_usd: float
    by_model: Mapping[str, ModelEstimate]
    unpriced_models: tuple[str, ...]

    @property
    def known(self) -> bool:
        """True when every model's price is known (``usd`` is the whole total)."""
        return not self.unpriced_models


def estimate_cost(
    requests: Iterable[GenerationRequest],
    provider: str,
    prices: Mapping[str, float] | None = None,
) -> CostEstimate:
    """What ``requests`` would cost on ``provider``: jobs, images charged and US dollars per
    model and in total, from the price table (``prices`` over the defaults). Sends nothing.

    It reads each request's model and ``n`` only: it does not validate the requests
    (:func:`~flux_async.validate` does). Raises ConfigurationError for an unknown provider or
    a bad price, ValidationError for a model the provider does not serve.
    """
    table = price_table(provider, prices)
    jobs: dict[str, int] = {}
    images: dict[str, int] = {}
    for request in requests:
        model = request.model
        if model not in jobs:
            model_spec(provider, model)  # a model the provider does not serve: ValidationError
            jobs[model] = images[model] = 0
        jobs[model] += 1
        images[model] += images_charged(request)
    by_model: dict[str, ModelEstimate] = {}
    priced = 0
    unpriced: list[str] = []
    for model, count in jobs.items():
        price = table[model]
        micros = None if price is None else to_micros(price) * images[model]
        if micros is None:
            unpriced.append(model)
        else:
            priced += micros
        by_model[model] = ModelEstimate(
            model=model,
            jobs=count,
            images=images[model],
            price_usd=price,
            usd=None if micros is None else from_micros(micros),
        )
    return CostEstimate(
        provider=provider,
        jobs=sum(jobs.values()),
        images=sum(images.values()),
        usd=None if unpriced else from_micros(priced),
        priced_usd=from_micros(priced),
        by_model=MappingProxyType(by_model),
        unpriced_models=tuple(unpriced),
    )
