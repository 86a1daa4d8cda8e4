"""The Redis ledger against a real ``redis-server`` (the ``redis_url`` fixture).

The ledger behaviour every ledger shares runs over MemoryLedger, FileLedger and RedisLedger
alike; then what only a shared ledger promises: one claim of a key across ledgers, clients and
OS processes started on one barrier; other processes' entries seen through ``get`` and
``refresh``; settlements written in order by the ledger's own writer, through an outage, and
bounded at close; nothing sent when Redis cannot record an intent; no password anywhere.
Outages come from a relay in front of the server that a test can cut (:class:`Gate`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import pytest
import redis.asyncio as aioredis

from flux_async import (
    Cost,
    FileLedger,
    GenerationRequest,
    Ledger,
    LedgerEntry,
    LedgerError,
    MemoryLedger,
    TaskRef,
)
from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, Scenario
from flux_async.fleet import RedisLedger
from flux_async.fleet._redis_url import redacted_url
from flux_async.scheduler import PollPolicy
from flux_async.session import Session

MODEL = "flux-kontext-pro"
FAST = PollPolicy(target_delay=0.02, first_poll=0.01, min_interval=0.005, quantum=0.005, max_interval=0.05)
REF = TaskRef(provider="bfl", task_id="t-1", polling_url="https://api.bfl.ai/v1/get_result?id=t-1", model=MODEL)


async def intend(ledger: Ledger, key: str, **fields: Any) -> LedgerEntry | None:
    values: dict[str, Any] = {"provider": "bfl", "model": MODEL, "digest": "d", "at": 1.0}
    values.update(fields)
    return await ledger.intend(key, **values)


async def flushed(ledger: Ledger) -> None:
    """Wait until a Redis ledger has written its queued settlements (other ledgers write at once)."""
    if isinstance(ledger, RedisLedger):
        with anyio.fail_after(5):
            await ledger.wait_flushed()


# -- a relay that can be cut -----------------------------------------------------------------------


class Gate:
    """A TCP relay on 127.0.0.1 in front of the test Redis: ``open`` relays, ``refuse`` drops
    every connection at once, ``hang`` accepts and never answers."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.mode: Literal["open", "refuse", "hang"] = "open"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, userinfo: str = "") -> str:
        return f"redis://{userinfo}127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self._cut_all()
        await self._server.wait_closed()

    def cut(self, mode: Literal["refuse", "hang"] = "refuse") -> None:
        self.mode = mode
        self._cut_all()

    def restore(self) -> None:
        self.mode = "open"

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        self._writers.add(writer)
        if self.mode == "hang":
            while await reader.read(65536):
                pass
            return
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class LogEvent(logging.Handler):
    """Sets an event when a record at ``level`` or above is logged by flux_async."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.event = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.event.set()


@pytest.fixture
def warnings_logged() -> Iterator[LogEvent]:
    handler = LogEvent(logging.WARNING)
    logger = logging.getLogger("flux_async")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
async def gate(redis_url: str) -> AsyncIterator[Gate]:
    async with Gate(redis_url) as relay:
        yield relay


# -- what every ledger does ------------------------------------------------------------------------


@pytest.fixture(params=["memory", "file", "redis"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        yield MemoryLedger()
    elif request.param == "file":
        with FileLedger(tmp_path / "run.ledger") as file_ledger:
            yield file_ledger
    else:
        async with RedisLedger(request.getfixturevalue("redis_url")) as redis_ledger:
            yield redis_ledger


@pytest.mark.anyio
async def test_an_intent_then_its_acceptance_then_its_settlement(ledger: Ledger) -> None:
    assert isinstance(ledger, Ledger)
    assert await intend(ledger, "a", at=1.25, reserved_usd=0.08, images=2, digest="sha") is None
    a = await ledger.get("a")
    assert a is not None
    assert (a.state, a.in_doubt, a.intended_at, a.reserved_usd, a.images, a.digest) == (
        "intended", True, 1.25, 0.08, 2, "sha"
    )
    await ledger.accept("a", REF)
    a = await ledger.get("a")
    assert a is not None
    assert (a.state, a.ref) == ("accepted", REF)
    assert a.accepted_at is not None
    ledger.settle("a", "succeeded", cost=Cost(0.08, "reported"))
    await flushed(ledger)
    a = await ledger.get("a")
    assert a is not None
    assert (a.state, a.status, a.cost, a.error) == ("settled", "succeeded", Cost(0.08, "reported"), None)
    assert a.settled_at is not None
    assert await ledger.get("missing") is None
    await ledger.aclose()


@pytest.mark.anyio
async def test_intending_a_recorded_key_returns_its_entry_and_records_nothing(ledger: Ledger) -> None:
    await intend(ledger, "a", digest="first", at=1.0)
    await ledger.accept("a", REF)
    taken = await intend(ledger, "a", digest="second", at=2.0)
    assert taken is not None
    assert (taken.digest, taken.intended_at, taken.ref) == ("first", 1.0, REF)
    ledger.settle("a", "failed", error="TaskFailedError")
    await flushed(ledger)
    again = await intend(ledger, "a", digest="third")
    assert again is not None
    assert (again.digest, again.status) == ("first", "failed")
    assert [e.key for e in ledger.unsettled()] == []


@pytest.mark.anyio
async def test_a_key_settled_without_a_task_may_be_intended_again(ledger: Ledger) -> None:
    await intend(ledger, "a", digest="first")
    ledger.settle("a", "not_submitted", error="BadRequestError")
    assert await intend(ledger, "a", digest="second", at=5.0) is None
    a = await ledger.get("a")
    assert a is not None
    assert (a.state, a.digest, a.intended_at, a.error) == ("intended", "second", 5.0, None)
    assert [e.key for e in ledger.unsettled()] == ["a"]


@pytest.mark.anyio
async def test_unsettled_lists_intents_in_doubt_and_accepted_tasks_only(ledger: Ledger) -> None:
    for i, key in enumerate("abcd"):
        await intend(ledger, key, at=float(i))
    await ledger.accept("b", REF)
    ledger.settle("c", "succeeded", cost=Cost(0.04, "reported"))
    ledger.settle("d", "not_submitted")
    listed = {e.key: e for e in ledger.unsettled()}
    assert set(listed) == {"a", "b"}
    assert listed["a"].in_doubt
    assert listed["b"].ref == REF


@pytest.mark.anyio
async def test_settled_spend_totals_per_model_and_a_second_settlement_replaces_the_first(ledger: Ledger) -> None:
    await intend(ledger, "a", reserved_usd=0.04)
    await intend(ledger, "b", model="grok-4-1-image", images=4)
    await intend(ledger, "c", reserved_usd=0.04)
    await intend(ledger, "d", reserved_usd=0.04)
    await intend(ledger, "e", provider="toapis", reserved_usd=0.03)
    ledger.settle("a", "succeeded", cost=Cost(0.04, "reported"))
    ledger.settle("b", "failed", error="TaskFailedError", cost=Cost.UNKNOWN)
    ledger.settle("c", "not_submitted", error="BadRequestError")  # charged nothing
    ledger.settle("d", "succeeded", cost=Cost(0.04, "price_table"))
    ledger.settle("d", "failed", cost=Cost(0.0, "reported"))  # settled again: replaces
    ledger.settle("e", "succeeded", cost=Cost(0.03, "reported"))
    await flushed(ledger)
    bfl = ledger.settled_spend("bfl")
    assert set(bfl) == {MODEL, "grok-4-1-image"}
    pro, grok = bfl[MODEL], bfl["grok-4-1-image"]
    assert (pro.jobs, pro.usd, pro.unpriced_jobs) == (2, pytest.approx(0.04), 0)
    assert (grok.jobs, grok.usd, grok.unpriced_jobs, grok.unpriced_images) == (1, 0.0, 1, 4)
    assert ledger.settled_spend("toapis")[MODEL].usd == pytest.approx(0.03)
    assert ledger.settled_spend("apimart") == {}
    if isinstance(ledger, RedisLedger):  # and Redis holds the same totals
        await ledger.refresh()
        assert ledger.settled_spend("bfl") == bfl


# -- shared through Redis ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_field_reads_back_exactly_from_redis(redis_url: str) -> None:
    async with RedisLedger(redis_url) as first:
        await intend(first, "a", at=1700000000.123456789, reserved_usd=0.1 + 0.2, images=3, digest="x" * 64)
        await first.accept("a", REF)
        await intend(first, "b", provider="toapis", reserved_usd=None)
        await first.accept("b", TaskRef(provider="toapis", task_id="t-2"))
        await intend(first, "c", model="grok-4-1-image")
        first.settle("a", "succeeded", cost=Cost(1 / 3, "reported"))
        first.settle("c", "failed", error="ModerationError: é ✓", cost=Cost.UNKNOWN)
        await first.wait_flushed()
        mine = [await first.get(key) for key in "abc"]
        async with RedisLedger(redis_url) as second:
            assert [await second.get(key) for key in "abc"] == mine
            assert second.unsettled() == first.unsettled()
            assert second.settled_spend("bfl") == first.settled_spend("bfl")
    a = mine[0]
    assert a is not None
    assert (a.intended_at, a.reserved_usd, a.cost) == (1700000000.123456789, 0.1 + 0.2, Cost(1 / 3, "reported"))


@pytest.mark.anyio
async def test_twenty_ledgers_claiming_one_key_at_once_give_it_to_exactly_one(redis_url: str) -> None:
    ledgers = [RedisLedger(redis_url) for _ in range(20)]  # twenty clients, twenty connections
    go = anyio.Event()
    answers: list[LedgerEntry | None] = []

    async def claim(ledger: RedisLedger, i: int) -> None:
        await go.wait()
        answers.append(await intend(ledger, "one-key", digest=f"d{i}"))

    try:
        for ledger in ledgers:
            await ledger.open()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i, ledger in enumerate(ledgers):
                    tg.start_soon(claim, ledger, i)
                await anyio.wait_all_tasks_blocked()
                go.set()
    finally:
        for ledger in reversed(ledgers):
            await ledger.aclose()
    assert sum(answer is None for answer in answers) == 1
    winners = {answer.digest for answer in answers if answer is not None}
    assert len(winners) == 1  # every loser was shown the one recorded intent
    assert sum(ledger.statistics().intents for ledger in ledgers) == 1


def _claim_in_a_process(url: str, barrier: Any, results: Any, i: int) -> None:
    async def main() -> None:
        async with RedisLedger(url) as ledger:
            barrier.wait()  # every process connected and loaded: claim together
            entry = await intend(ledger, "one-key", digest=f"process-{i}")
            results.put(None if entry is None else entry.digest)

    asyncio.run(main())


def test_separate_processes_claiming_one_key_at_once_give_it_to_exactly_one(redis_url: str) -> None:
    n = 6
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(n, timeout=60)
    results = context.Queue()
    processes = [context.Process(target=_claim_in_a_process, args=(redis_url, barrier, results, i)) for i in range(n)]
    for process in processes:
        process.start()
    try:
        answers = [results.get(timeout=60) for _ in range(n)]
    finally:
        for process in processes:
            process.join(timeout=30)
    assert [process.exitcode for process in processes] == [0] * n
    assert answers.count(None) == 1
    assert len({answer for answer in answers if answer is not None}) == 1


@pytest.mark.anyio
async def test_a_second_ledger_sees_the_first_ones_entries_through_get_and_after_refresh(redis_url: str) -> None:
    async with RedisLedger(redis_url) as first, RedisLedger(redis_url, name="default") as second:
        await intend(first, "a", reserved_usd=0.04)
        await first.accept("a", REF)
        assert second.unsettled() == []  # its view is as of its open...
        seen = await second.get("a")  # ...but get asks the server
        assert seen is not None
        assert seen.ref == REF
        await second.refresh()
        assert [e.key for e in second.unsettled()] == ["a"]
        first.settle("a", "succeeded", cost=Cost(0.04, "reported"))
        await first.wait_flushed()
        assert second.settled_spend("bfl") == {}
        await second.refresh()
        assert second.unsettled() == []
        assert second.settled_spend("bfl")[MODEL].usd == pytest.approx(0.04)
        # The second one's claim of the key sees the first one's task.
        taken = await intend(second, "a")
        assert taken is not None
        assert taken.ref == REF
    async with RedisLedger(redis_url, name="another") as elsewhere:  # another ledger, same server
        assert await elsewhere.get("a") is None


@pytest.mark.anyio
async def test_queued_settlements_are_all_written_in_order_by_aclose(redis_url: str) -> None:
    keys = [f"k{i}" for i in range(150)]  # more than one batch of the writer
    async with RedisLedger(redis_url) as ledger:
        for key in keys:
            await intend(ledger, key, reserved_usd=0.04)
        for key in keys:
            ledger.settle(key, "failed", cost=Cost(0.0, "reported"))
        for key in keys[::2]:
            ledger.settle(key, "succeeded", cost=Cost(0.04, "reported"))  # the later one wins
        assert ledger.statistics().settlements_queued == 225
    stats = ledger.statistics()
    assert (stats.settlements_written, stats.pending, stats.settlements_dropped) == (225, 0, 0)
    async with RedisLedger(redis_url) as reread:
        statuses = [(await reread.get(key) or pytest.fail(key)).status for key in keys]
        assert statuses == ["succeeded", "failed"] * 75
        assert reread.unsettled() == []
        spent = reread.settled_spend("bfl")[MODEL]
        assert (spent.jobs, spent.usd) == (150, pytest.approx(75 * 0.04))


@pytest.mark.anyio
async def test_a_settlement_while_redis_is_down_does_not_raise_and_is_written_once_it_is_back(
    gate: Gate, redis_url: str, warnings_logged: LogEvent
) -> None:
    async with RedisLedger(gate.url(), retry_delay=0.01) as ledger:
        await intend(ledger, "a")
        await ledger.accept("a", REF)
        gate.cut()
        ledger.settle("a", "succeeded", cost=Cost(0.04, "reported"))  # no raise
        assert [e.key for e in ledger.unsettled()] == []  # this process knows at once
        with anyio.fail_after(5):
            await warnings_logged.event.wait()
        assert any("could not write 1 settlement" in m for m in warnings_logged.messages)
        gate.restore()
        with anyio.fail_after(5):
            await ledger.wait_flushed()
        stats = ledger.statistics()
        assert stats.write_failures >= 1
        assert (stats.settlements_written, stats.settlements_dropped) == (1, 0)
    async with RedisLedger(redis_url) as reread:
        a = await reread.get("a")
        assert a is not None
        assert (a.status, a.cost) == ("succeeded", Cost(0.04, "reported"))


@pytest.mark.anyio
async def test_aclose_gives_up_on_an_unreachable_redis_within_its_bound_and_logs_what_it_drops(
    gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="flux_async")
    ledger = RedisLedger(gate.url(), flush_timeout=0.2, retry_delay=0.01)
    with anyio.fail_after(5):  # the bound is 0.2 s
        async with ledger:
            await intend(ledger, "lost-settlement")
            gate.cut()
            ledger.settle("lost-settlement", "succeeded")
    assert ledger.statistics().settlements_dropped == 1
    assert "lost-settlement" in caplog.text
    ledger.settle("lost-settlement", "failed")  # closed: logged, never raised
    assert ledger.statistics().settlements_dropped == 2


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["refuse", "hang"])
async def test_an_intent_redis_cannot_record_raises_promptly(gate: Gate, mode: Literal["refuse", "hang"]) -> None:
    async with RedisLedger(gate.url(), timeout=0.2) as ledger:
        gate.cut(mode)
        with anyio.fail_after(3), pytest.raises(LedgerError, match="could not record the intent"):
            await intend(ledger, "a")
        with anyio.fail_after(3), pytest.raises(LedgerError):
            await ledger.accept("a", REF)
        assert ledger.unsettled() == []
        gate.restore()


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
async def test_a_session_whose_redis_ledger_is_unreachable_sends_nothing(gate: Gate, provider: str) -> None:
    async with Emulator(Scenario(seed=1)) as emu, RedisLedger(gate.url(), timeout=0.2) as ledger:
        session = Session(provider, api_key=DEFAULT_API_KEY, base_url=emu.base_url(provider), ledger=ledger)
        async with session:
            gate.cut()
            with anyio.fail_after(5), pytest.raises(LedgerError, match="nothing was sent"):
                await session.generate(GenerationRequest(model=MODEL, prompt="a lighthouse"))
        gate.restore()
        assert emu.stats()["requests"]["submit"] == 0


@pytest.mark.anyio
async def test_sessions_in_two_processes_pay_once_for_one_key_through_the_shared_ledger(redis_url: str) -> None:
    request = GenerationRequest(model=MODEL, prompt="a fox", idempotency_key="order-7")
    with anyio.fail_after(20):
        async with Emulator(Scenario(seed=1, duration=Duration.fixed(0.05))) as emu:
            results = []
            for _ in range(2):  # two processes, one after the other: each its own ledger client
                async with RedisLedger(redis_url) as ledger:
                    session = Session(
                        "bfl", api_key=DEFAULT_API_KEY, base_url=emu.base_url("bfl"), ledger=ledger, poll_policy=FAST
                    )
                    async with session:
                        results.append(await session.generate(request))
                entry = await _read(redis_url, "order-7")
                assert entry.status == "succeeded"
            data = emu.stats()
    async with RedisLedger(redis_url) as reread:
        spent = reread.settled_spend("bfl")[MODEL]
        assert (spent.jobs, spent.usd) == (1, pytest.approx(0.04))  # settled twice, counted once
    assert data["requests"]["submit"] == 1
    assert results[0].task_id == results[1].task_id


async def _read(url: str, key: str) -> LedgerEntry:
    async with RedisLedger(url) as ledger:
        entry = await ledger.get(key)
        assert entry is not None
        return entry


@pytest.mark.anyio
async def test_wait_replicas_refuses_an_intent_no_replica_acknowledged(redis_url: str) -> None:
    # The server's clock ticks every 100 ms: WAIT (half the timeout) needs a few of them.
    async with RedisLedger(redis_url, wait_replicas=1, timeout=0.5) as ledger:
        with pytest.raises(LedgerError, match="0 of the 1 replicas"):
            await intend(ledger, "a")
        await ledger.wait_flushed()
        a = await ledger.get("a")
        assert a is not None
        assert (a.status, a.error) == ("not_submitted", "intent not replicated")  # nothing was sent


@pytest.mark.anyio
async def test_settled_entries_expire_when_asked_and_the_totals_stay(redis_url: str) -> None:
    async with RedisLedger(redis_url, settled_ttl=3600) as ledger:
        await intend(ledger, "a")
        await intend(ledger, "b")
        ledger.settle("a", "succeeded", cost=Cost(0.04, "reported"))
        await ledger.wait_flushed()
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert 0 < await client.pttl("flux-async:ledger:default:entry:a") <= 3_600_000
        assert await client.pttl("flux-async:ledger:default:entry:b") == -1  # unsettled: kept
        assert await client.persist("flux-async:ledger:default:spent") == 0  # never expires
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_a_ledger_must_be_open_to_be_used(redis_url: str) -> None:
    ledger = RedisLedger(redis_url)
    with pytest.raises(RuntimeError, match="never opened"):
        ledger.unsettled()
    # A session takes it unopened and opens it when it opens (see test_fleet_session).
    Session("bfl", api_key=DEFAULT_API_KEY, ledger=ledger)
    assert not ledger.is_open
    with pytest.raises(LedgerError, match="not open"):
        await intend(ledger, "a")
    async with ledger:
        await intend(ledger, "a")
    assert [e.key for e in ledger.unsettled()] == ["a"]  # the view outlives the connection
    with pytest.raises(LedgerError, match="closed"):
        await intend(ledger, "b")


# -- secrets ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_password_of_the_url_never_shows(
    gate: Gate, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_async")
    password = "s3cret-Pa55word"
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.acl_setuser("ledger-user", enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
        url = gate.url(f"ledger-user:{password}@")
        errors: list[str] = []
        async with RedisLedger(url, timeout=0.2, flush_timeout=0.1, retry_delay=0.01) as ledger:
            shown = repr(ledger)
            await intend(ledger, "a")
            gate.cut()
            try:
                await intend(ledger, "b")
            except LedgerError as exc:
                errors.append(str(exc))
            ledger.settle("a", "succeeded")
        gate.restore()
        try:
            async with RedisLedger(gate.url(f"ledger-user:wrong-{password}@")):
                pass
        except LedgerError as exc:
            errors.append(str(exc))
    finally:
        await admin.acl_deluser("ledger-user")
        await admin.aclose()
    assert len(errors) == 2
    assert "ledger-user:***@" in shown
    for text in [shown, caplog.text, *errors]:
        assert password not in text
    assert "could not write" in caplog.text
    assert redacted_url(f"redis://127.0.0.1:1/0?password={password}&db=0") == "redis://127.0.0.1:1/0?password=***&db=0"
    assert redacted_url(f"rediss://:{password}@example.com:6380/2") == "rediss://:***@example.com:6380/2"


def test_the_fleet_needs_the_redis_extra_and_flux_async_does_not() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import flux_async\n"
        "try:\n"
        "    import flux_async.fleet\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 'pip install "flux-async[redis]"' in out
