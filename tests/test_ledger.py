"""The ledger: written ahead of every paid action, read back by the next session.

The file format and the in-memory bounds are tested as plain objects; the promises (nothing is
sent without an intent on record, a failed acceptance write stops the session, an accepted key
is never paid twice, an intent in doubt is never sent again silently, any kind of cancellation
leaves the paid task on record) against the emulator over real sockets, counting submits there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from flux_async import (
    Cost,
    FileLedger,
    GenerationRequest,
    Ledger,
    LedgerEntry,
    LedgerError,
    MemoryLedger,
    SubmissionUncertainError,
    TaskRef,
    ValidationError,
)
from flux_async._ledger_entries import Entries
from flux_async._submit import request_digest
from flux_async.catalog import validate
from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario
from flux_async.errors import ConfigurationError
from flux_async.scheduler import PollPolicy
from flux_async.session import Limits, Session

PROVIDERS = ("toapis", "apimart", "bfl")
MODEL = "flux-kontext-pro"
FAST = PollPolicy(target_delay=0.02, first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.05)


async def intend(ledger: Ledger, key: str, **fields: Any) -> LedgerEntry | None:
    """Record an intent for ``key`` with test values for whatever ``fields`` leaves out."""
    values: dict[str, Any] = {"provider": "toapis", "model": MODEL, "digest": "d", "at": 1.0}
    values.update(fields)
    return await ledger.intend(key, **values)


def digest_of(r: GenerationRequest, provider: str) -> str:
    """The digest the session records for ``r`` (of the request as validation leaves it)."""
    return request_digest(validate(r, provider))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def session_for(emu: Emulator, provider: str, **kwargs: Any) -> Session:
    return Session(
        provider, api_key=DEFAULT_API_KEY, base_url=emu.base_url(provider), poll_policy=FAST, **kwargs
    )


def request(prompt: str = "a lighthouse", **fields: Any) -> GenerationRequest:
    return GenerationRequest(model=MODEL, prompt=prompt, **fields)


# -- the file, as a plain object -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_file_ledger_writes_each_record_as_a_line_and_reads_them_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "run.ledger"
    ledger = FileLedger(path, meta={"input": "prompts.txt"})
    ref = TaskRef(provider="bfl", task_id="t1", polling_url="https://api.bfl.ai/v1/get_result?id=t1", model=MODEL)
    assert await intend(ledger, "a") is None
    await ledger.accept("a", ref)
    await intend(ledger, "b")
    await intend(ledger, "c")
    ledger.settle("c", "not_submitted", error="BadRequestError")
    ledger.settle("a", "succeeded")
    ledger.close()
    ops = [(line.get("op"), line.get("key")) for line in lines(path)]
    assert ops == [(None, None), ("intent", "a"), ("accept", "a"), ("intent", "b"), ("intent", "c"),
                   ("settle", "c"), ("settle", "a")]

    again = FileLedger(path)
    assert again.meta == {"input": "prompts.txt"}
    a = await again.get("a")
    assert a is not None
    assert (a.state, a.ref) == ("settled", ref)
    b = await again.get("b")
    assert b is not None
    assert b.in_doubt
    c = await again.get("c")
    assert c is not None
    assert (c.status, c.error) == ("not_submitted", "BadRequestError")
    assert [e.key for e in again.unsettled()] == ["b"]
    # A taken key is not written again; the recorded entry comes back instead.
    taken = await intend(again, "a")
    assert taken is not None
    assert taken.ref == ref
    # A key settled without a task may be used again.
    assert await intend(again, "c") is None
    again.close()
    assert sum(1 for line in lines(path) if line.get("key") == "c" and line.get("op") == "intent") == 2


@pytest.mark.anyio
async def test_a_crash_mid_write_loses_only_the_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "run.ledger"
    ledger = FileLedger(path)
    await intend(ledger, "a")
    ledger.close()
    whole = json.dumps({"op": "accept", "key": "a", "ref": {"provider": "toapis", "task_id": "t"}, "at": 2.0})
    with open(path, "a") as handle:
        handle.write(whole)  # a whole acceptance whose newline never made it: kept
    again = FileLedger(path)
    a = await again.get("a")
    assert a is not None
    assert a.ref == TaskRef(provider="toapis", task_id="t")
    await intend(again, "b")
    again.close()
    with open(path, "a") as handle:
        handle.write('{"op":"intent","key":"c","prov')  # cut mid-write: dropped
    third = FileLedger(path)
    assert await third.get("c") is None
    assert await third.get("b") is not None
    third.close()
    assert path.read_text().endswith("\n")


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ConfigurationError, match="not a flux-async ledger"):
        FileLedger(path)
    path.write_text('{"ledger":"flux-async ledger","version":1,"meta":{}}\n{"op":"launch","key":"a","at":1}\n')
    with pytest.raises(ConfigurationError, match=r"notes\.txt:2"):
        FileLedger(path)


@pytest.mark.anyio
async def test_a_memory_ledger_forgets_settled_entries_past_its_bound_but_never_unsettled_ones() -> None:
    ledger = MemoryLedger(max_settled=2)
    for key in "abcde":
        await intend(ledger, key)
    for key in "abc":
        ledger.settle(key, "succeeded")
    assert await ledger.get("a") is None  # the oldest settled one went first
    assert await ledger.get("b") is not None
    assert await ledger.get("c") is not None
    assert {e.key for e in ledger.unsettled()} == {"d", "e"}


@pytest.mark.anyio
async def test_a_file_ledger_records_reservations_and_settled_costs_and_reads_them_back(tmp_path: Path) -> None:
    path = tmp_path / "run.ledger"
    ledger = FileLedger(path)
    await intend(ledger, "a", provider="bfl", reserved_usd=0.04)
    await intend(ledger, "b", provider="toapis", model="grok-4-1-image", images=4)  # price unknown
    await intend(ledger, "c", provider="bfl", reserved_usd=0.04)
    await intend(ledger, "d", provider="bfl", model="flux-kontext-max", reserved_usd=0.08)
    ledger.settle("a", "succeeded", cost=Cost(0.04, "reported"))
    ledger.settle("b", "failed", error="TaskFailedError", cost=Cost.UNKNOWN)
    ledger.settle("c", "not_submitted", error="BadRequestError")
    ledger.close()
    written = {(r.get("op"), r.get("key")): r for r in lines(path)[1:]}
    assert (written["intent", "a"]["reserved_usd"], written["intent", "a"]["images"]) == (0.04, 1)
    assert (written["intent", "b"]["reserved_usd"], written["intent", "b"]["images"]) == (None, 4)
    assert written["settle", "a"]["cost"] == {"usd": 0.04, "source": "reported"}
    assert written["settle", "b"]["cost"] == {"usd": None, "source": "unknown"}
    assert "cost" not in written["settle", "c"]  # nothing was charged

    with FileLedger(path) as again:
        a, b, c, d = [await again.get(key) for key in "abcd"]
        assert a is not None
        assert b is not None
        assert c is not None
        assert d is not None
        assert (a.reserved_usd, a.images, a.cost) == (0.04, 1, Cost(0.04, "reported"))
        assert (b.reserved_usd, b.images, b.cost) == (None, 4, Cost.UNKNOWN)
        assert (c.status, c.cost) == ("not_submitted", None)
        assert (d.state, d.reserved_usd, d.cost) == ("intended", 0.08, None)
        bfl = again.settled_spend("bfl")
        assert set(bfl) == {"flux-kontext-pro"}  # c charged nothing; d is not settled
        assert (bfl["flux-kontext-pro"].jobs, bfl["flux-kontext-pro"].usd) == (1, 0.04)
        grok = again.settled_spend("toapis")["grok-4-1-image"]
        assert (grok.jobs, grok.usd, grok.unpriced_jobs, grok.unpriced_images) == (1, 0.0, 1, 4)


@pytest.mark.anyio
async def test_entries_written_before_costs_read_back_as_unpriced(tmp_path: Path) -> None:
    path = tmp_path / "old.ledger"
    path.write_text(
        '{"ledger":"flux-async ledger","version":1,"meta":{}}\n'
        '{"op":"intent","key":"a","provider":"bfl","model":"flux-kontext-pro","digest":"d","at":1}\n'
        '{"op":"accept","key":"a","ref":{"provider":"bfl","task_id":"t"},"at":2}\n'
        '{"op":"settle","key":"a","status":"succeeded","at":3}\n'
        '{"op":"intent","key":"b","provider":"bfl","model":"flux-kontext-pro","digest":"d","at":4}\n'
    )
    with FileLedger(path) as ledger:
        a = await ledger.get("a")
        assert a is not None
        assert (a.reserved_usd, a.images, a.cost) == (None, 1, None)
        spent = ledger.settled_spend("bfl")["flux-kontext-pro"]
        assert (spent.jobs, spent.unpriced_jobs, spent.unpriced_images) == (1, 1, 1)
        assert [e.key for e in ledger.unsettled()] == ["b"]


@pytest.mark.parametrize(
    "record",
    [
        '{"op":"intent","key":"a","provider":"bfl","model":"m","digest":"d","at":1,"reserved_usd":-1}',
        '{"op":"intent","key":"a","provider":"bfl","model":"m","digest":"d","at":1,"reserved_usd":"1"}',
        '{"op":"intent","key":"a","provider":"bfl","model":"m","digest":"d","at":1,"images":0}',
        '{"op":"settle","key":"a","status":"succeeded","at":1,"cost":{"usd":1,"source":"guess"}}',
        '{"op":"settle","key":"a","status":"succeeded","at":1,"cost":{"usd":null,"source":"reported"}}',
        '{"op":"settle","key":"a","status":"succeeded","at":1,"cost":7}',
    ],
)
def test_a_bad_cost_in_a_ledger_file_is_refused(tmp_path: Path, record: str) -> None:
    path = tmp_path / "bad.ledger"
    path.write_text('{"ledger":"flux-async ledger","version":1,"meta":{}}\n'
                    '{"op":"intent","key":"a","provider":"bfl","model":"m","digest":"d","at":1}\n'
                    + record + "\n")
    with pytest.raises(ConfigurationError, match=r"bad\.ledger:3"):
        FileLedger(path)


@pytest.mark.anyio
async def test_spend_totals_outlive_forgotten_entries_and_a_second_settlement_replaces_the_first() -> None:
    ledger = MemoryLedger(max_settled=1)
    for key in "abc":
        await intend(ledger, key, provider="apimart", reserved_usd=0.032)
        ledger.settle(key, "succeeded", cost=Cost(0.03, "reported"))
    ledger.settle("c", "failed", cost=Cost(0.0, "reported"))  # settled again: replaces
    assert await ledger.get("a") is None  # forgotten...
    spent = ledger.settled_spend("apimart")["flux-kontext-pro"]
    assert (spent.jobs, spent.usd) == (3, pytest.approx(0.06))  # ...but still counted
    assert ledger.settled_spend("bfl") == {}


# -- the session writes ahead ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_every_job_is_intended_accepted_and_settled_in_that_order(provider: str, tmp_path: Path) -> None:
    path = tmp_path / "run.ledger"
    with anyio.fail_after(20):
        async with Emulator(Scenario(seed=1, duration=Duration.fixed(0.05))) as emu:
            ledger = FileLedger(path)
            async with session_for(emu, provider, ledger=ledger) as session:
                result = await session.generate(request(idempotency_key="job-1"))
                outcomes = [o async for o in session.as_completed([request(f"p{i}") for i in range(5)])]
            ledger.close()
    assert result.images
    assert all(o.ok for o in outcomes)
    records = lines(path)[1:]
    keys = {r["key"] for r in records}
    assert "job-1" in keys
    assert len(keys) == 6
    for key in keys:
        ops = [r["op"] for r in records if r["key"] == key]
        assert ops == ["intent", "accept", "settle"], (key, ops)
        settle = next(r for r in records if r["key"] == key and r["op"] == "settle")
        assert settle["status"] == "succeeded"
    with FileLedger(path) as reread:
        assert not reread.unsettled()


@pytest.mark.anyio
async def test_toapis_gets_the_idempotency_key_as_client_business_id() -> None:
    seen: list[Any] = []
    async with (
        Emulator(Scenario(seed=1, duration=Duration.fixed(0.02))) as emu,
        session_for(emu, "toapis") as session,
    ):
        send = session._net().send

        async def spy(http: Any, **kwargs: Any) -> Any:
            if http.method == "POST":
                seen.append(http.json)
            return await send(http, **kwargs)

        session._net().send = spy  # type: ignore[method-assign]
        await session.generate(request(idempotency_key="order-42:v1"))
    assert [body["client_business_id"] for body in seen] == ["order-42:v1"]


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_extra_may_not_set_the_librarys_own_id(provider: str) -> None:
    async with Emulator(Scenario(seed=1)) as emu:
        async with session_for(emu, provider) as session:
            with pytest.raises(ValidationError) as caught:
                await session.submit(request(extra={"client_business_id": "mine"}))
            assert caught.value.field == "extra.client_business_id"
            assert "idempotency_key" in str(caught.value)
        assert emu.stats()["requests"]["submit"] == 0


class FailingLedger(MemoryLedger):
    """A ledger whose disk fills up: intents, acceptances or both fail like a full disk."""

    def __init__(self, *, intents: bool = False, acceptances: bool = False) -> None:
        super().__init__()
        self.fail_intents = intents
        self.fail_acceptances = acceptances

    async def intend(self, key: str, **fields: Any) -> LedgerEntry | None:
        if self.fail_intents:
            raise OSError(28, "No space left on device")
        return await super().intend(key, **fields)

    async def accept(self, key: str, ref: TaskRef) -> None:
        if self.fail_acceptances:
            raise OSError(28, "No space left on device")
        await super().accept(key, ref)


class _FailingEntries(Entries):
    """The default ledger's own entries failing (they are written without its async methods)."""

    def __init__(self, *, intents: bool = False, acceptances: bool = False) -> None:
        super().__init__(10_000)
        self.fail_intents = intents
        self.fail_acceptances = acceptances

    def claim(self, key: str, *args: Any, **kwargs: Any) -> Any:
        if self.fail_intents:
            raise OSError(28, "No space left on device")
        return super().claim(key, *args, **kwargs)

    def accept(self, key: str, ref: TaskRef, at: float) -> None:
        if self.fail_acceptances:
            raise OSError(28, "No space left on device")
        super().accept(key, ref, at)


def failing_ledger(how: str, *, intents: bool = False, acceptances: bool = False) -> MemoryLedger:
    if how == "methods":
        return FailingLedger(intents=intents, acceptances=acceptances)
    ledger = MemoryLedger()
    ledger._entries = _FailingEntries(intents=intents, acceptances=acceptances)
    return ledger


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["methods", "entries"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_intent_that_cannot_be_written_is_never_sent(provider: str, how: str) -> None:
    async with Emulator(Scenario(seed=1)) as emu:
        async with session_for(emu, provider, ledger=failing_ledger(how, intents=True)) as session:
            with pytest.raises(LedgerError, match="nothing was sent"):
                await session.generate(request())
            with pytest.raises(LedgerError):
                async for _ in session.as_completed([request(f"p{i}") for i in range(4)]):
                    pass
        assert emu.stats()["requests"]["submit"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["methods", "entries"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_acceptance_that_cannot_be_written_stops_the_session_but_keeps_the_task(
    provider: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="flux_async")
    ledger = failing_ledger(how, acceptances=True)
    with anyio.fail_after(20):
        async with Emulator(Scenario(seed=1, duration=Duration.fixed(0.05))) as emu:
            async with session_for(emu, provider, ledger=ledger) as session:
                result = await session.generate(request())  # paid: still waited for
                stats = session.statistics()
                with pytest.raises(LedgerError, match="sends nothing more"):
                    await session.generate(request("another"))
            data = emu.stats()
    assert result.images
    assert data["requests"]["submit"] == 1
    (lost,) = stats.unrecorded_tasks
    assert lost.task_id == data["tasks"][0]["id"]
    # Enough is logged to resume it by hand.
    assert json.dumps(lost.to_dict(), sort_keys=True) in caplog.text


# -- idempotency keys -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_two_concurrent_submits_with_one_key_pay_once(provider: str) -> None:
    with anyio.fail_after(20):
        async with Emulator(Scenario(seed=1, latency=0.05, duration=Duration.fixed(0.1))) as emu:
            async with session_for(emu, provider) as session:
                results: list[Any] = [None, None]

                async def click(i: int) -> None:
                    results[i] = await session.generate(request(idempotency_key="user-7-click"))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(click, 0)
                    tg.start_soon(click, 1)
                stats = session.statistics()
            data = emu.stats()
    assert data["requests"]["submit"] == 1
    assert results[0] == results[1]
    assert (stats.submitted, stats.deduplicated) == (1, 1)


@pytest.mark.anyio
async def test_a_key_reused_for_another_request_is_refused() -> None:
    async with Emulator(Scenario(seed=1, duration=Duration.fixed(0.02))) as emu:
        async with session_for(emu, "apimart") as session:
            await session.generate(request("a fox", idempotency_key="k1"))
            with pytest.raises(ValidationError) as caught:
                await session.generate(request("a wolf", idempotency_key="k1"))
            assert caught.value.field == "idempotency_key"
        assert emu.stats()["requests"]["submit"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "é"])
async def test_an_unusable_key_is_refused_before_sending(bad: str) -> None:
    async with Emulator(Scenario(seed=1)) as emu:
        async with session_for(emu, "toapis") as session:
            with pytest.raises(ValidationError) as caught:
                await session.submit(request(idempotency_key=bad))
            assert caught.value.field == "idempotency_key"
        assert emu.stats()["requests"]["submit"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_rerun_on_the_same_file_ledger_pays_for_nothing_already_accepted(
    provider: str, tmp_path: Path
) -> None:
    path = tmp_path / "run.ledger"
    requests = [request(f"p{i}", idempotency_key=f"line-{i}") for i in range(6)]
    with anyio.fail_after(30):
        async with Emulator(Scenario(seed=1, duration=Duration.fixed(0.05))) as emu:
            with FileLedger(path) as ledger:
                async with session_for(emu, provider, ledger=ledger) as session:
                    first = [o async for o in session.as_completed(requests[:4])]
            with FileLedger(path) as ledger:
                async with session_for(emu, provider, ledger=ledger) as session:
                    second = [o async for o in session.as_completed(requests)]
                    stats = session.statistics()
            data = emu.stats()
    assert data["requests"]["submit"] == 6  # four, then only the two new ones
    assert data["duplicate_submits"] == 0
    assert all(o.ok for o in first + second)
    assert {o.task_id for o in first} <= {o.task_id for o in second}
    assert stats.deduplicated == 4


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_inputs_of_one_batch_sharing_a_key_share_one_task_and_each_is_delivered(
    provider: str,
) -> None:
    keys = ["k0", "k1", "k0", "k2", "k1", "k0"]
    requests = [request("same for the key " + k, idempotency_key=k) for k in keys]
    submitted: dict[int, str] = {}
    with anyio.fail_after(30):
        async with Emulator(Scenario(seed=1, duration=Duration.fixed(0.05))) as emu:
            async with session_for(emu, provider) as session:
                outcomes = [
                    o
                    async for o in session.as_completed(
                        requests, on_submit=lambda i, ref: submitted.__setitem__(i, ref.task_id)
                    )
                ]
                stats = session.statistics()
            data = emu.stats()
    assert sorted(o.index for o in outcomes) == list(range(len(keys)))  # each input once
    assert all(o.ok for o in outcomes)
    task_of = {o.index: o.task_id for o in outcomes}
    assert task_of == submitted
    for k in set(keys):
        assert len({task_of[i] for i, key in enumerate(keys) if key == k}) == 1
    assert len(set(task_of.values())) == 3
    assert data["requests"]["submit"] == 3
    assert data["duplicate_submits"] == 0
    assert stats.deduplicated == 3
    assert not stats.abandoned_tasks


# -- in doubt -------------------------------------------------------------------------------------------


async def _raw_toapis_submit(emu: Emulator, cbid: str) -> str:
    """A task created at the emulator under ``cbid`` as if by a process that died before it
    read the answer."""
    async with aiohttp.ClientSession() as http, http.post(
        emu.base_url("toapis") + "/v1/images/generations",
        json={"model": MODEL, "prompt": "orphan", "client_business_id": cbid},
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    ) as resp:
        assert resp.status == 200
        return str((await resp.json())["id"])


@pytest.mark.anyio
async def test_toapis_recovers_an_intent_by_its_key_and_sends_only_what_never_arrived(tmp_path: Path) -> None:
    path = tmp_path / "run.ledger"
    arrived, lost = request("arrived", idempotency_key="k-arrived"), request("lost", idempotency_key="k-lost")
    with anyio.fail_after(20):
        async with Emulator(Scenario(seed=1, duration=Duration.fixed(0.05))) as emu:
            with FileLedger(path) as ledger:  # what a process killed mid-POST leaves behind
                for r in (arrived, lost):
                    await intend(ledger, r.idempotency_key or "", digest=digest_of(r, "toapis"))
            orphan = await _raw_toapis_submit(emu, "k-arrived")
            with FileLedger(path) as ledger:
                async with session_for(emu, "toapis", ledger=ledger) as session:
                    jobs = await session.recover()
                    assert [job.task_id for job in jobs] == [orphan]
                    assert session.statistics().in_doubt == ()
                    # The request that never arrived is sent once; the other is not sent again.
                    results = [await session.generate(r) for r in (arrived, lost)]
            data = emu.stats()
    assert data["requests"]["submit"] == 2  # the orphan's, then the lost one's
    assert all(r.images for r in results)


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["apimart", "bfl"])
async def test_without_a_lookup_an_intent_stays_in_doubt_until_resubmitting_is_chosen(
    provider: str, tmp_path: Path
) -> None:
    path = tmp_path / "run.ledger"
    doubtful = request("doubtful", idempotency_key="k-doubt")
    with FileLedger(path) as ledger:
        await intend(ledger, "k-doubt", provider=provider, digest=digest_of(doubtful, provider))
    with anyio.fail_after(20):
        async with Emulator(Scenario(seed=1, duration=Duration.fixed(0.05))) as emu:
            with FileLedger(path) as ledger:
                async with session_for(emu, provider, ledger=ledger) as session:
                    assert await session.recover() == []
                    (listed,) = session.statistics().in_doubt
                    assert listed.key == "k-doubt"
                    with pytest.raises(SubmissionUncertainError) as caught:
                        await session.generate(doubtful)
                    assert caught.value.idempotency_key == "k-doubt"
                assert emu.stats()["requests"]["submit"] == 0
                async with session_for(emu, provider, ledger=ledger, resubmit_in_doubt=True) as session:
                    result = await session.generate(doubtful)
                    assert session.statistics().in_doubt == ()
            assert emu.stats()["requests"]["submit"] == 1
    assert result.images


# -- cancellation of any kind ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("how", ["asyncio.wait_for", "asyncio.timeout", "task.cancel", "anyio.fail_after"])
async def test_a_caller_cancelled_mid_post_leaves_the_task_recorded_and_listed(provider: str, how: str) -> None:
    ledger = MemoryLedger()
    with anyio.fail_after(20):
        async with Emulator(Scenario(seed=1, duration=Duration.fixed(30))) as emu:
            emu.fail_next("submit", "slow", provider=provider, delay=0.3)  # created at once, answered late
            async with session_for(emu, provider, ledger=ledger) as session:
                send = session._net().send
                on_wire = asyncio.Event()

                answered = asyncio.Event()

                async def spy(http: Any, **kwargs: Any) -> Any:
                    if http.method != "POST":
                        return await send(http, **kwargs)
                    on_wire.set()
                    try:
                        return await send(http, **kwargs)
                    finally:
                        answered.set()

                session._net().send = spy  # type: ignore[method-assign]

                async def call() -> None:
                    if how == "asyncio.wait_for":
                        await asyncio.wait_for(session.generate(request(idempotency_key="k")), 0.05)
                    elif how == "asyncio.timeout":
                        async with asyncio.timeout(0.05):
                            await session.generate(request(idempotency_key="k"))
                    elif how == "anyio.fail_after":
                        with anyio.fail_after(0.05):
                            await session.generate(request(idempotency_key="k"))
                    else:
                        task = asyncio.ensure_future(session.generate(request(idempotency_key="k")))
                        await on_wire.wait()
                        task.cancel()
                        await task

                with pytest.raises((TimeoutError, asyncio.CancelledError)):
                    await call()
                assert on_wire.is_set()
                # The POST is answered later; the session itself records it.
                with anyio.fail_after(5):
                    await answered.wait()
                await asyncio.sleep(0)  # the session's own task registers the answer
                (abandoned,) = session.statistics().abandoned_tasks
                recorded = await ledger.get("k")
            data = emu.stats()
    assert [t["id"] for t in data["tasks"]] == [abandoned.task_id]
    assert recorded is not None
    assert recorded.ref == abandoned


@pytest.mark.anyio
async def test_a_caller_cancelled_before_its_submit_is_sent_sends_nothing() -> None:
    async with Emulator(Scenario(seed=1)) as emu:
        async with session_for(emu, "toapis", limits=Limits(max_concurrent_submits=1)) as session:
            await session._jobs._slots.acquire()  # the one slot is busy: the submit queues
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(session.generate(request(idempotency_key="queued")), 0.05)
            session._jobs._slots.release()
            await asyncio.sleep(0.05)
            assert await session.ledger.get("queued") is None
            assert session.statistics().abandoned_tasks == ()
        assert emu.stats()["requests"]["submit"] == 0


class _RaisingSettlements(MemoryLedger):
    """A ledger whose settlements raise (against the ledger's contract: they must not)."""

    def settle(self, key: str, status: Any, *, error: str | None = None, cost: Any = None) -> None:
        raise RuntimeError("settlement refused")


@pytest.mark.anyio
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_ledger_whose_settlements_raise_loses_no_job(
    provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Each job is still delivered (a batch and a generate() call do not wait forever), the
    # failure is reported, and the session's own totals still count each job as spent.
    async with Emulator(Scenario(seed=1)) as emu:
        async with session_for(emu, provider, ledger=_RaisingSettlements()) as session:
            with anyio.fail_after(10):  # (the emulator's jobs end at once: only a hang takes long)
                batch = [request(prompt=f"p{i}") for i in range(4)]
                outcomes = [o async for o in session.as_completed(batch)]
                result = await session.generate(request(prompt="one more"))
            stats = session.statistics()
        assert sorted(o.index for o in outcomes if o.ok) == [0, 1, 2, 3]
        assert result.images
        assert emu.stats()["duplicate_submits"] == 0
    failed = [r for r in caplog.records if "could not record how" in r.getMessage()]
    assert len(failed) == 5
    # No reservation left held: each job counted as settled by the session's own totals.
    assert stats.reserved_usd == 0
    assert sum(m.settled_jobs for m in stats.spend_by_model.values()) == 5
    assert sum(m.open_jobs for m in stats.spend_by_model.values()) == 0


@pytest.mark.anyio
async def test_a_job_whose_end_cannot_be_recorded_is_still_delivered(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Any failure in the bookkeeping of a job's end: reported, and the job delivered anyway.
    def broken(self: Any, job: Any) -> None:
        raise RuntimeError("bookkeeping broke")

    monkeypatch.setattr("flux_async._jobs.Jobs.finished", broken)
    async with Emulator(Scenario(seed=1)) as emu, session_for(emu, "toapis") as session:
        with anyio.fail_after(10):
            outcomes = [o async for o in session.as_completed([request(prompt=f"p{i}") for i in range(3)])]
            result = await session.generate(request(prompt="one more"))
    assert sorted(o.index for o in outcomes if o.ok) == [0, 1, 2]
    assert result.images
    assert len([r for r in caplog.records if "recording its end failed" in r.getMessage()]) == 4
