"""What a batch is and how far it got: the journal header, the per-request state read back for
``--resume``, and a compact set of request indices. Plain values: no files, no network, no event
loop (``_journal`` reads the files into them); from the library only ``TaskRef``.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from typing import Any, Final

import attrs

from ._api import TaskRef

__all__ = ["JOURNAL_VERSION", "BatchState", "IndexSet", "JournalError", "JournalHeader"]

JOURNAL_VERSION: Final = 2
_JOURNAL_KIND: Final = "flux-async batch journal"


class JournalError(Exception):
    """The output directory cannot be used as asked (exists, mismatched, unreadable)."""


class IndexSet:
    """A set of non-negative ints stored as a bitmap: one bit per index up to the largest."""

    __slots__ = ("_bits", "_count")

    def __init__(self) -> None:
        self._bits = bytearray()
        self._count = 0

    def add(self, index: int) -> None:
        """Add ``index`` (a no-op when already present)."""
        byte, bit = divmod(index, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits)))
        mask = 1 << bit
        if not self._bits[byte] & mask:
            self._bits[byte] |= mask
            self._count += 1

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or index < 0:
            return False
        byte, bit = divmod(index, 8)
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << bit))

    def __len__(self) -> int:
        return self._count


@attrs.frozen(kw_only=True)
class JournalHeader:
    """What a batch is: a resumed batch must match it exactly. Kept in the ledger's header.

    ``fingerprint`` is the SHA-256 of the input file; ``defaults`` are the command line's
    request fields (they shape every request of a ``.txt`` file). ``run`` is made once per batch
    (random) and names its requests: request ``i`` is submitted under the idempotency key
    ``<run>-<i>`` on every run of the batch.
    """

    provider: str
    input: str
    fingerprint: str
    requests: int
    defaults: Mapping[str, Any] = attrs.field(factory=dict)
    run: str = attrs.field(factory=lambda: secrets.token_hex(8))

    def key(self, index: int, attempt: int = 0) -> str:
        """The idempotency key of request ``index``: ``<run>-<index>``, and ``.<attempt>`` after
        it for a request sent again by ``--retry-failed`` (a new key: a new task)."""
        return f"{self.run}-{index}" if attempt == 0 else f"{self.run}-{index}.{attempt}"

    def parse_key(self, key: str) -> tuple[int, int] | None:
        """(index, attempt) of a key of this batch (None for any other key)."""
        prefix, _, rest = key.rpartition("-")
        number, _, attempt = rest.partition(".")
        if prefix != self.run or not number.isdigit() or not (attempt.isdigit() or attempt == ""):
            return None
        return int(number), int(attempt or 0)

    def index_of(self, key: str) -> int | None:
        """The request index a key of this batch names (None for any other key)."""
        parsed = self.parse_key(key)
        return None if parsed is None else parsed[0]

    def to_json(self) -> dict[str, Any]:
        """The header's JSON object (the ledger's ``meta``)."""
        return {
            "journal": _JOURNAL_KIND,
            "version": JOURNAL_VERSION,
            "provider": self.provider,
            "input": self.input,
            "fingerprint": self.fingerprint,
            "requests": self.requests,
            "defaults": dict(self.defaults),
            "run": self.run,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JournalHeader:
        """Read a header; raises JournalError for anything else."""
        if data.get("journal") != _JOURNAL_KIND:
            raise JournalError("the journal's header is not a flux-async batch journal header")
        if data.get("version") != JOURNAL_VERSION:
            raise JournalError(
                f"the journal was written by another version of flux-async (format "
                f"{data.get('version')!r}, this one reads {JOURNAL_VERSION}): finish the batch with that version"
            )
        try:
            return cls(
                provider=str(data["provider"]),
                input=str(data["input"]),
                fingerprint=str(data["fingerprint"]),
                requests=int(data["requests"]),
                defaults=dict(data.get("defaults") or {}),
                run=str(data["run"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(f"the journal header is incomplete: {exc}") from None

    def mismatch(self, other: JournalHeader) -> str | None:
        """Why a batch described by ``other`` cannot continue this journal, or None."""
        if other.provider != self.provider:
            return f"the journal is for provider {self.provider!r}, not {other.provider!r}"
        if other.fingerprint != self.fingerprint:
            return f"the input file changed since the batch started (it was {self.input})"
        if dict(other.defaults) != dict(self.defaults):
            return "the request options (--model, --size, ...) differ from the original run's"
        return None


@attrs.frozen(kw_only=True)
class BatchState:
    """What an output directory says about a batch so far.

    ``finished`` holds the indices with a result line; ``reopened`` those of them sent again
    (``--retry-failed``) whose new attempt has no result yet: they are not done. ``failures``
    maps each index whose latest result is a failure to its error kind (``failed`` counts those
    not reopened). ``attempts`` gives the current attempt of each index sent more than once.
    ``accepted`` maps each index not done whose current attempt the provider accepted to its
    ref; ``in_doubt`` each index not done whose current attempt was sent and never answered on
    record to the time it was sent (Unix seconds).
    """

    header: JournalHeader
    finished: IndexSet
    failed: int
    accepted: Mapping[int, TaskRef]
    in_doubt: Mapping[int, float]
    failures: Mapping[int, str] = attrs.field(factory=dict)
    attempts: Mapping[int, int] = attrs.field(factory=dict)
    reopened: frozenset[int] = frozenset()

    @property
    def previous_done(self) -> int:
        """Requests done in earlier runs."""
        return len(self.finished) - len(self.reopened)

    def done(self, index: int) -> bool:
        """True when request ``index``'s current attempt has a result line."""
        return index in self.finished and index not in self.reopened

    def attempt(self, index: int) -> int:
        """The current attempt of request ``index`` (0: its first)."""
        return self.attempts.get(index, 0)

    def needs_submit(self, index: int) -> bool:
        """True when request ``index`` is not done and has no accepted task: it goes through
        the session (which looks up or refuses an intent in doubt, and sends the rest)."""
        return not self.done(index) and index not in self.accepted

    def retrying(self, kinds: Collection[str]) -> BatchState:
        """This state with every settled failure of one of ``kinds`` (error class names) opened
        again as a new attempt, under a new key: it will be submitted (and paid for) again."""
        chosen = {
            index
            for index, kind in self.failures.items()
            if kind in kinds and index not in self.reopened
        }
        if not chosen:
            return self
        attempts = dict(self.attempts)
        for index in chosen:
            attempts[index] = attempts.get(index, 0) + 1
        return attrs.evolve(
            self, attempts=attempts, reopened=self.reopened | chosen, failed=self.failed - len(chosen)
        )
