"""The batch output directory: its ledger, results.jsonl and reading them back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux_async import TaskRef
from flux_async.cli._batchstate import IndexSet, JournalError, JournalHeader
from flux_async.cli._journal import JOURNAL_NAME, RESULTS_NAME, OutputDir, image_name, load_state

HEADER = JournalHeader(
    provider="bfl",
    input="jobs.txt",
    fingerprint="ab" * 32,
    requests=5,
    defaults={"model": "flux-kontext-pro"},
)


def ref(n: int) -> TaskRef:
    return TaskRef(
        provider="bfl",
        task_id=f"t{n}",
        polling_url=f"https://api.us1.bfl.ai/v1/get_result?id=t{n}",
        model="flux-kontext-pro",
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@given(
    st.sets(st.integers(min_value=0, max_value=5000), max_size=200),
    st.integers(min_value=-3, max_value=5100),
)
def test_index_set_behaves_like_a_set(members: set[int], probe: int) -> None:
    bits = IndexSet()
    for m in members:
        bits.add(m)
        bits.add(m)
    assert len(bits) == len(members)
    assert (probe in bits) == (probe in members)


def test_create_writes_the_header_and_refuses_an_existing_batch(tmp_path: Path) -> None:
    out = OutputDir.create(tmp_path / "out", HEADER)
    out.close()
    header_line = lines(tmp_path / "out" / JOURNAL_NAME)[0]
    assert header_line["ledger"] == "flux-async ledger"
    assert JournalHeader.from_json(header_line["meta"]) == HEADER  # type: ignore[arg-type]
    assert (tmp_path / "out" / RESULTS_NAME).exists()
    with pytest.raises(JournalError, match="--resume"):
        OutputDir.create(tmp_path / "out", HEADER)


def test_every_request_has_a_key_of_its_own_that_names_its_index() -> None:
    keys = {HEADER.key(i) for i in range(1000)}
    assert len(keys) == 1000
    assert all(HEADER.index_of(HEADER.key(i)) == i for i in (0, 7, 999))
    other = JournalHeader(provider="bfl", input="jobs.txt", fingerprint="ab" * 32, requests=5)
    assert other.run != HEADER.run  # a new batch gets new keys
    assert HEADER.index_of(other.key(3)) is None
    assert HEADER.index_of("not-ours") is None


async def intend(out: OutputDir, index: int) -> None:
    """What the session writes before a POST under the batch's key for ``index``."""
    await out.ledger.intend(HEADER.key(index), provider="bfl", model="flux-kontext-pro", digest="", at=100.0 + index)


@pytest.mark.anyio
async def test_results_are_flushed_not_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    out = OutputDir.create(tmp_path, HEADER)
    monkeypatch.setattr(os, "fsync", spy)
    await intend(out, 3)
    await out.ledger.accept(HEADER.key(3), ref(3))
    assert len(synced) == 2  # the ledger forces intent and acceptance to disk
    out.record_result(3, 7, task_id="t3", status="succeeded", files=[tmp_path / "3-t3.png"])
    assert lines(tmp_path / RESULTS_NAME) == [
        {
            "index": 3,
            "line": 7,
            "task_id": "t3",
            "status": "succeeded",
            "files": ["3-t3.png"],
            "error": None,
        }
    ]
    assert len(synced) == 2  # results are flushed, not fsynced
    out.close()


@pytest.mark.anyio
async def test_reopen_sorts_requests_into_done_accepted_in_doubt_and_never_sent(tmp_path: Path) -> None:
    out = OutputDir.create(tmp_path, HEADER)
    for i in (0, 1, 3, 4):
        await intend(out, i)
    for i in (0, 1, 3):
        await out.ledger.accept(HEADER.key(i), ref(i))
    out.record_result(0, 1, task_id="t0", status="succeeded", files=[tmp_path / "0-t0.png"])
    out.record_result(
        2, 3, task_id=None, status="failed", error={"kind": "BadRequestError", "message": "no"}
    )
    out.close()
    reopened, state = OutputDir.reopen(tmp_path)
    reopened.close()
    assert state.header == HEADER
    assert dict(state.accepted) == {1: ref(1), 3: ref(3)}
    assert dict(state.in_doubt) == {4: 104.0}  # sent, never answered on record
    assert [i for i in range(5) if state.needs_submit(i)] == [4]  # the session decides on it
    assert len(state.finished) == 2
    assert state.failed == 1
    again = load_state(tmp_path)
    assert (again.accepted, again.in_doubt, again.failed) == (state.accepted, state.in_doubt, state.failed)


def test_resume_of_a_directory_without_a_journal_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="nothing to resume"):
        load_state(tmp_path)


@pytest.mark.anyio
async def test_a_cut_short_last_line_is_ignored_and_removed_on_reopen(tmp_path: Path) -> None:
    out = OutputDir.create(tmp_path, HEADER)
    await intend(out, 0)
    await out.ledger.accept(HEADER.key(0), ref(0))
    out.record_result(0, 1, task_id="t0", status="succeeded")
    out.close()
    with open(tmp_path / RESULTS_NAME, "a", encoding="utf-8") as f:
        f.write('{"index": 1, "task_')
    with open(tmp_path / JOURNAL_NAME, "a", encoding="utf-8") as f:
        f.write('{"op":"accept","key":"' + HEADER.key(1) + '","ref":{"provider":"bfl","task_id":"t1","polling_')
    state = load_state(tmp_path)
    assert 1 not in state.finished
    assert 1 not in state.accepted
    reopened, _ = OutputDir.reopen(tmp_path)
    reopened.record_result(1, 2, task_id=None, status="failed", error={"kind": "X", "message": "y"})
    reopened.close()
    assert [r["index"] for r in lines(tmp_path / RESULTS_NAME)] == [0, 1]
    assert len(lines(tmp_path / JOURNAL_NAME)) == 3  # header, intent, acceptance: the cut line is gone


@pytest.mark.anyio
async def test_a_complete_acceptance_missing_its_newline_is_kept(tmp_path: Path) -> None:
    out = OutputDir.create(tmp_path, HEADER)
    await intend(out, 0)
    out.close()
    with open(tmp_path / JOURNAL_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps({"op": "accept", "key": HEADER.key(0), "ref": ref(0).to_dict(), "at": 1.0}))
    assert dict(load_state(tmp_path).accepted) == {0: ref(0)}
    reopened, _ = OutputDir.reopen(tmp_path)
    await reopened.ledger.intend(HEADER.key(1), provider="bfl", model="m", digest="", at=2.0)
    await reopened.ledger.accept(HEADER.key(1), ref(1))
    reopened.close()
    assert dict(load_state(tmp_path).accepted) == {0: ref(0), 1: ref(1)}


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    out = OutputDir.create(tmp_path, HEADER)
    out.close()
    with open(tmp_path / JOURNAL_NAME, "a", encoding="utf-8") as f:
        f.write("garbage\n" + json.dumps({"op": "accept", "key": "k", "ref": ref(0).to_dict(), "at": 1}) + "\n")
    with pytest.raises(JournalError, match=r"journal.jsonl:2"):
        load_state(tmp_path)


def test_a_journal_must_start_with_a_header(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_NAME).write_text(json.dumps({"index": 0}) + "\n")
    with pytest.raises(JournalError, match="not a flux-async ledger"):
        load_state(tmp_path)


def test_a_journal_of_the_earlier_format_is_refused_with_a_reason(tmp_path: Path) -> None:
    old = {"journal": "flux-async batch journal", "version": 1, "provider": "bfl", "input": "x",
           "fingerprint": "ab", "requests": 1, "defaults": {}}  # fmt: skip
    (tmp_path / JOURNAL_NAME).write_text(json.dumps({"ledger": "flux-async ledger", "version": 1, "meta": old}) + "\n")
    with pytest.raises(JournalError, match="another version of flux-async"):
        load_state(tmp_path)


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"provider": "toapis"}, "provider"),
        ({"fingerprint": "cd" * 32}, "input file changed"),
        ({"defaults": {"model": "flux-kontext-max"}}, "options"),
    ],
)
def test_header_mismatch_explains_itself(change: dict[str, object], text: str) -> None:
    other = JournalHeader.from_json({**HEADER.to_json(), **change})
    reason = HEADER.mismatch(other)
    assert reason is not None
    assert text in reason
    assert HEADER.mismatch(JournalHeader.from_json(HEADER.to_json())) is None


def test_image_names() -> None:
    assert image_name(4, "task_01", "png") == "4-task_01.png"
    assert image_name(4, "a/b:c", ".jpg") == "4-a_b_c.jpg"
    assert image_name(0, "t", "webp", k=2, count=4) == "0-t-2.webp"


@pytest.mark.anyio
async def test_retrying_failures_opens_them_again_under_new_keys(tmp_path: Path) -> None:
    out = OutputDir.create(tmp_path, HEADER)
    for i, kind in ((0, None), (1, "ModerationError"), (2, "TaskFailedError")):
        await intend(out, i)
        await out.ledger.accept(HEADER.key(i), ref(i))
        if kind is None:
            out.record_result(i, i + 1, task_id=f"t{i}", status="succeeded")
        else:
            out.record_result(i, i + 1, task_id=f"t{i}", status="failed", error={"kind": kind, "message": "no"})
    out.close()
    state = load_state(tmp_path)
    assert (state.failed, state.previous_done) == (2, 3)
    again = state.retrying({"ModerationError"})
    assert (again.failed, again.previous_done) == (1, 2)
    assert [i for i in range(3) if again.needs_submit(i)] == [1]
    assert again.attempt(1) == 1
    assert HEADER.key(1, again.attempt(1)) != HEADER.key(1)  # a new key: a new task
    assert HEADER.parse_key(HEADER.key(1, 1)) == (1, 1)
    assert state.retrying({"BadRequestError"}) is state  # nothing of that kind

    # The retry is accepted, then the process dies: the next resume re-attaches the retry's
    # task, not the failed original, and does not submit it again.
    reopened, _ = OutputDir.reopen(tmp_path)
    key = HEADER.key(1, 1)
    await reopened.ledger.intend(key, provider="bfl", model="flux-kontext-pro", digest="", at=5.0)
    await reopened.ledger.accept(key, ref(11))
    reopened.close()
    after_crash = load_state(tmp_path)
    assert dict(after_crash.accepted) == {1: ref(11)}
    assert not after_crash.done(1)
    assert after_crash.attempt(1) == 1
    assert [i for i in range(3) if after_crash.needs_submit(i)] == []

    # Its result lands: done again, a success now.
    reopened, _ = OutputDir.reopen(tmp_path)
    reopened.record_result(1, 2, task_id="t11", status="succeeded", attempt=1)
    reopened.close()
    final = load_state(tmp_path)
    assert final.done(1)
    assert (final.failed, dict(final.failures)) == (1, {2: "TaskFailedError"})
