"""Prices, the cost rules, the estimate and the session's money accounts, as plain functions and
objects: no network, no event loop (the accounts are fed a memory ledger directly).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import flux_async
from flux_async import (
    PRICES,
    BudgetExceededError,
    ConfigurationError,
    Cost,
    GenerationRequest,
    Limits,
    MemoryLedger,
    ValidationError,
    catalog,
    estimate_cost,
)
from flux_async._spend import Spend


def req(model: str = "flux-kontext-pro", **fields: Any) -> GenerationRequest:
    return GenerationRequest(model=model, prompt="a lighthouse", **fields)


# -- the table ---------------------------------------------------------------------------------------


def test_the_documented_prices_and_the_unknown_ones() -> None:
    assert dict(PRICES["bfl"]) == {"flux-kontext-pro": 0.04, "flux-kontext-max": 0.08}
    assert dict(PRICES["apimart"]) == {"flux-kontext-pro": 0.032, "flux-kontext-max": 0.064}
    # toapis publishes no price: unknown, never zero
    assert set(PRICES["toapis"].values()) == {None}
    for provider in catalog.PROVIDERS:
        assert set(PRICES[provider]) == set(catalog.models_for(provider)), provider


def test_given_prices_go_over_the_defaults() -> None:
    table = catalog.price_table("toapis", {"grok-4-1-image": 0.07, "flux-kontext-pro": 0})
    assert table["grok-4-1-image"] == 0.07
    assert table["flux-kontext-pro"] == 0.0
    assert table["flux-kontext-max"] is None
    assert catalog.price_table("bfl", {"flux-kontext-max": 0.1})["flux-kontext-pro"] == 0.04
    assert catalog.unit_price("bfl", "flux-kontext-max") == 0.08
    assert catalog.unit_price("toapis", "grok-4-2-image") is None
    with pytest.raises(TypeError):
        catalog.price_table("bfl")["flux-kontext-pro"] = 0.0  # type: ignore[index]


@pytest.mark.parametrize("price", [-0.01, float("nan"), float("inf"), True, "0.04", None])
def test_a_bad_price_is_a_configuration_error(price: Any) -> None:
    with pytest.raises(ConfigurationError, match="flux-kontext-pro"):
        catalog.price_table("bfl", {"flux-kontext-pro": price})


def test_a_price_for_a_model_the_provider_does_not_serve_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="grok-4-1-image"):
        catalog.price_table("bfl", {"grok-4-1-image": 0.05})
    with pytest.raises(ConfigurationError, match="nowhere"):
        catalog.price_table("nowhere")


# -- the rules ----------------------------------------------------------------------------------------


def test_a_cost_is_known_exactly_when_it_has_an_amount() -> None:
    assert Cost(None, "unknown") == Cost.UNKNOWN
    assert not Cost.UNKNOWN.known
    assert Cost(0.0, "reported").known
    with pytest.raises(ValueError, match="exactly when"):
        Cost(None, "price_table")
    with pytest.raises(ValueError, match="exactly when"):
        Cost(0.0, "unknown")


def test_images_charged_is_n_where_set_else_one() -> None:
    assert catalog.images_charged(req()) == 1
    assert catalog.images_charged(req("grok-4-1-image", n=4)) == 4
    assert catalog.images_charged(req("grok-4-1-image")) == 1


def test_reserved_and_settled_costs() -> None:
    assert catalog.reserved_cost(0.04, 1) == Cost(0.04, "price_table")
    assert catalog.reserved_cost(0.07, 4) == Cost(0.28, "price_table")
    assert catalog.reserved_cost(None, 4) is Cost.UNKNOWN
    reserved = Cost(0.04, "price_table")
    assert catalog.settled_cost(reserved, None) is reserved
    assert catalog.settled_cost(reserved, 0.0) == Cost(0.0, "reported")
    assert catalog.settled_cost(Cost.UNKNOWN, 0.05) == Cost(0.05, "reported")
    assert catalog.settled_cost(Cost.UNKNOWN, None) is Cost.UNKNOWN


def test_sums_in_micro_dollars_do_not_drift() -> None:
    assert sum([0.1] * 10) != 1.0  # what adding floats does
    assert catalog.from_micros(sum(catalog.to_micros(0.1) for _ in range(10))) == 1.0
    assert catalog.from_micros(catalog.to_micros(0.04) * 25) == 1.0


# -- the estimate ---------------------------------------------------------------------------------------


def test_an_estimate_counts_jobs_images_and_dollars_per_model() -> None:
    requests = [req()] * 25 + [req("flux-kontext-max")] * 3
    estimate = estimate_cost(iter(requests), "bfl")
    assert (estimate.jobs, estimate.images, estimate.usd, estimate.priced_usd) == (28, 28, 1.24, 1.24)
    assert estimate.known
    assert estimate.unpriced_models == ()
    assert list(estimate.by_model) == ["flux-kontext-pro", "flux-kontext-max"]
    pro = estimate.by_model["flux-kontext-pro"]
    assert (pro.jobs, pro.images, pro.price_usd, pro.usd) == (25, 25, 0.04, 1.0)


def test_an_unknown_price_is_named_and_leaves_no_total() -> None:
    requests = [req("grok-4-1-image", n=4), req("grok-4-1-image", n=2), req(), req("flux-kontext-max")]
    estimate = estimate_cost(requests, "toapis", prices={"flux-kontext-pro": 0.03})
    assert estimate.usd is None
    assert not estimate.known
    assert estimate.priced_usd == 0.03
    assert estimate.unpriced_models == ("grok-4-1-image", "flux-kontext-max")
    grok = estimate.by_model["grok-4-1-image"]
    assert (grok.jobs, grok.images, grok.price_usd, grok.usd) == (2, 6, None, None)
    priced = estimate_cost(requests, "toapis", prices={"flux-kontext-pro": 0.03, "grok-4-1-image": 0.05,
                                                       "flux-kontext-max": 0.06})
    assert priced.usd == pytest.approx(0.03 + 6 * 0.05 + 0.06)
    assert priced.usd == priced.priced_usd


def test_an_estimate_of_nothing_is_zero_and_of_a_stranger_model_an_error() -> None:
    empty = estimate_cost([], "apimart")
    assert (empty.jobs, empty.images, empty.usd, dict(empty.by_model)) == (0, 0, 0.0, {})
    with pytest.raises(ValidationError, match="model"):
        estimate_cost([req("grok-4-1-image")], "bfl")
    with pytest.raises(ConfigurationError):
        estimate_cost([req()], "nowhere")
    assert flux_async.estimate_cost is catalog.estimate_cost


@given(
    st.lists(
        st.tuples(st.sampled_from(["flux-kontext-pro", "grok-4-1-image", "grok-4-2-image"]),
                  st.sampled_from([None, 1, 2, 4])),
        max_size=40,
    ),
    st.dictionaries(st.sampled_from(["flux-kontext-pro", "grok-4-1-image", "grok-4-2-image"]),
                    st.integers(0, 200_000).map(lambda micros: micros / 1_000_000)),
)
def test_the_total_is_the_sum_of_the_jobs_reservations(
    jobs: list[tuple[str, int | None]], prices: dict[str, float]
) -> None:
    requests = [req(model, n=n if model != "flux-kontext-pro" else None) for model, n in jobs]
    estimate = estimate_cost(requests, "toapis", prices=prices)
    table = catalog.price_table("toapis", prices)
    costs = [catalog.reserved_cost(table[r.model], catalog.images_charged(r)) for r in requests]
    known = sum(catalog.to_micros(c.usd) for c in costs if c.usd is not None)
    assert catalog.to_micros(estimate.priced_usd) == known
    assert (estimate.usd is None) == any(c.usd is None for c in costs)
    assert estimate.images == sum(catalog.images_charged(r) for r in requests)


# -- the accounts -----------------------------------------------------------------------------------------


def test_limits_take_a_budget_of_dollars() -> None:
    assert Limits().max_spend_usd is None
    assert Limits(max_spend_usd=0).max_spend_usd == 0
    for bad in (-1, float("nan"), float("inf"), True):
        with pytest.raises(ConfigurationError, match="max_spend_usd"):
            Limits(max_spend_usd=bad)


def test_a_reservation_passing_the_budget_is_refused_and_holds_nothing() -> None:
    spend = Spend("bfl", MemoryLedger(), max_spend_usd=0.10)
    assert spend.reserve("a", "flux-kontext-pro", 1) == Cost(0.04, "price_table")
    assert spend.reserve("b", "flux-kontext-pro", 1) == Cost(0.04, "price_table")
    with pytest.raises(BudgetExceededError) as caught:
        spend.reserve("c", "flux-kontext-pro", 1)
    error = caught.value
    assert (error.max_spend_usd, error.spent_usd, error.reserved_usd, error.needed_usd) == (0.1, 0.0, 0.08, 0.04)
    assert error.model == "flux-kontext-pro"
    assert "nothing was sent" in str(error)
    assert not spend.holds("c")
    assert spend.reserved == 80_000
    assert spend.reserve("a", "flux-kontext-pro", 1) is None  # held already: kept, not doubled
    assert spend.reserved == 80_000
    spend.release("b")  # nothing was sent for b
    spend.reserve("c", "flux-kontext-pro", 1)
    with pytest.raises(BudgetExceededError):
        spend.reserve("d", "flux-kontext-max", 1)


def test_exactly_the_budget_fits() -> None:
    spend = Spend("bfl", MemoryLedger(), max_spend_usd=1.00)
    for i in range(25):
        spend.reserve(f"k{i}", "flux-kontext-pro", 1)
    with pytest.raises(BudgetExceededError):
        spend.reserve("k25", "flux-kontext-pro", 1)


def test_under_a_budget_an_unknown_price_names_the_price_to_give() -> None:
    spend = Spend("toapis", MemoryLedger(), max_spend_usd=5)
    with pytest.raises(ConfigurationError, match=r"grok-4-1-image.*prices=\{'grok-4-1-image': \.\.\.\}"):
        spend.reserve("a", "grok-4-1-image", 2)
    assert not spend.holds("a")
    priced = Spend("toapis", MemoryLedger(), prices={"grok-4-1-image": 0.05}, max_spend_usd=0.35)
    assert priced.reserve("a", "grok-4-1-image", 4) == Cost(0.2, "price_table")
    with pytest.raises(BudgetExceededError):
        priced.reserve("b", "grok-4-1-image", 4)
    assert priced.reserve("b", "grok-4-1-image", 2) == Cost(0.1, "price_table")


def test_without_a_budget_an_unknown_price_is_counted_as_unknown() -> None:
    ledger = MemoryLedger()
    spend = Spend("toapis", ledger)
    assert spend.reserve("a", "flux-kontext-pro", 1) is Cost.UNKNOWN
    assert spend.by_model()["flux-kontext-pro"].unknown_cost_jobs == 1
    spend.settle("a", "succeeded", cost=Cost.UNKNOWN)
    model = spend.by_model()["flux-kontext-pro"]
    assert (model.spent_usd, model.settled_jobs, model.open_jobs, model.unknown_cost_jobs) == (0.0, 1, 0, 1)
    assert spend.unknown_cost_jobs() == 1


@pytest.mark.anyio
async def test_settling_moves_a_reservation_to_spent_once() -> None:
    ledger = MemoryLedger()
    spend = Spend("bfl", ledger, max_spend_usd=1)
    for key in ("a", "b", "c", "d"):
        spend.reserve(key, "flux-kontext-pro", 1)
        await ledger.intend(key, provider="bfl", model="flux-kontext-pro", digest="", at=1.0,
                            reserved_usd=0.04)
    assert spend.accepted("a", 0.05) == Cost(0.05, "reported")  # BFL said so at acceptance
    assert (spend.spent, spend.reserved) == (0, 170_000)
    spend.settle("a", "succeeded", cost=Cost(0.05, "reported"))
    spend.settle("a", "succeeded", cost=Cost(0.05, "reported"))  # again: counted once
    spend.settle("b", "failed", error="ModerationError", cost=Cost(0.0, "reported"))
    spend.settle("c", "not_submitted", error="BadRequestError")  # no task, no charge
    assert (spend.spent, spend.reserved) == (50_000, 40_000)
    model = spend.by_model()["flux-kontext-pro"]
    assert (model.spent_usd, model.reserved_usd, model.settled_jobs, model.open_jobs) == (0.05, 0.04, 2, 1)
    entry = await ledger.get("a")
    assert entry is not None
    assert entry.cost == Cost(0.05, "reported")
    assert spend.reservation("d") == Cost(0.04, "price_table")
    assert spend.reservation("a") is None


@pytest.mark.anyio
async def test_what_a_ledger_holds_counts_from_the_start() -> None:
    ledger = MemoryLedger(max_settled=1)  # forgets settled entries, never their totals
    for key, usd in (("a", 0.04), ("b", 0.04), ("c", None), ("d", 0.08)):
        await ledger.intend(key, provider="bfl", model="flux-kontext-pro" if key != "d" else "flux-kontext-max",
                            digest="", at=1.0, reserved_usd=usd)
    await ledger.intend("other", provider="apimart", model="flux-kontext-pro", digest="", at=1.0,
                        reserved_usd=0.5)
    ledger.settle("a", "succeeded", cost=Cost(0.04, "reported"))
    ledger.settle("b", "failed", cost=Cost(0.0, "reported"))
    ledger.settle("c", "succeeded", cost=Cost.UNKNOWN)  # settled when no price was known
    # open: d (0.08); settled: a 0.04, b 0, c unknown -> priced at 0.04 now
    spend = Spend("bfl", ledger, max_spend_usd=0.20)
    assert (spend.spent, spend.reserved, spend.carried_over) == (80_000, 80_000, 160_000)
    assert spend.holds("d")
    assert not spend.holds("other")  # another provider's
    with pytest.raises(BudgetExceededError):
        spend.reserve("e", "flux-kontext-max", 1)
    spend.reserve("e", "flux-kontext-pro", 1)
    spend.settle("d", "succeeded", cost=Cost(0.08, "reported"))  # an earlier job ends here
    assert (spend.spent, spend.reserved) == (160_000, 40_000)


@pytest.mark.anyio
async def test_under_a_budget_an_earlier_job_that_cannot_be_priced_is_refused_at_once() -> None:
    ledger = MemoryLedger()
    await ledger.intend("x", provider="toapis", model="flux-kontext-pro", digest="", at=1.0)
    with pytest.raises(ConfigurationError, match="its ledger holds"):
        Spend("toapis", ledger, max_spend_usd=1.0)
    assert Spend("toapis", ledger).unknown_cost_jobs() == 1
    priced = Spend("toapis", ledger, prices={"flux-kontext-pro": 0.03}, max_spend_usd=1.0)
    assert (priced.reserved, priced.carried_over) == (30_000, 30_000)


def test_costs_are_exported_where_the_design_says() -> None:
    for name in ("Cost", "CostEstimate", "ModelEstimate", "ModelSpend", "SettledSpend",
                 "BudgetExceededError", "estimate_cost", "PRICES"):
        assert name in flux_async.__all__, name
    assert issubclass(BudgetExceededError, flux_async.FluxError)
    assert math.isclose(sum(p or 0 for p in PRICES["bfl"].values()), 0.12)
