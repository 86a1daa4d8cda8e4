"""Which fault a request gets: the scripted faults first, in order, then the seeded rates.

Owns :class:`FaultSource` (the pending script, one seeded RNG per provider and endpoint, the
count of faults delivered) and nothing else: it decides *which* fault, never how one is put on
the wire (that is the app's). No I/O and no aiohttp; the standard library and the emulator's
scenario values only, never the core, the app or the wire formats.
"""

from __future__ import annotations

import random

from ._scenario import ENDPOINTS, Fault, FaultRates, Scenario

__all__ = ["FaultSource", "Pending"]


class Pending:
    """A scripted fault and how many more requests it applies to."""

    __slots__ = ("fault", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count


class FaultSource:
    """The faults of one running emulator: ``take()`` is asked once per request that passed
    authentication, validation and the limits, so a 401, 400 or 429 never uses one up."""

    def __init__(self) -> None:
        self.script: list[Pending] = []
        #: Faults delivered, by kind (scripted or drawn).
        self.sent: dict[str, int] = {}
        self._plans: dict[str, Scenario] = {}
        self._rates: dict[tuple[str, str], FaultRates | None] = {}
        self._rngs: dict[tuple[str, str], random.Random] = {}
        # Drawn faults are values: one per (endpoint, status) or (endpoint, kind), made once.
        self._status_faults: dict[tuple[str, int], Fault] = {}
        self._kind_faults: dict[tuple[str, str], Fault] = {}

    def arm(self, scenario: Scenario, plans: dict[str, Scenario]) -> None:
        """Take ``scenario``'s script and the rates of ``plans`` (the scenario per provider);
        the pending script is replaced and every RNG starts again from the seed."""
        self._plans = plans
        self._rates = {
            (p, endpoint): _rates_for(sc, endpoint)
            for p, sc in plans.items()
            for endpoint in ENDPOINTS
        }
        self.script = [Pending(f) for f in scenario.faults]
        self._rngs.clear()

    def inject(self, fault: Fault) -> None:
        """Append a scripted fault after those already pending."""
        self.script.append(Pending(fault))

    def pending(self) -> int:
        """How many more requests the script will spoil."""
        return sum(e.remaining for e in self.script)

    def take(
        self, endpoint: str, provider: str, kinds: frozenset[str] | None = None
    ) -> Fault | None:
        """The fault this request gets, if any: scripted first, then the scenario's rates
        (``kinds``, when given, limits the scripted faults that may apply). Webhook events
        ("webhook") have no rates here: :mod:`._hooks` draws theirs."""
        if self.script:
            for entry in self.script:
                fault = entry.fault
                if (
                    fault.endpoint == endpoint
                    and fault.provider in (None, provider)
                    and (kinds is None or fault.kind in kinds)
                ):
                    entry.remaining -= 1
                    if entry.remaining <= 0:
                        self.script.remove(entry)
                    self.sent[fault.kind] = self.sent.get(fault.kind, 0) + 1
                    return fault
        rates = self._rates.get((provider, endpoint))
        if rates is None:
            return None
        sc = self._plans[provider]
        key = (provider, endpoint)
        rng = self._rngs.get(key)
        if rng is None:
            rng = self._rngs[key] = random.Random(f"{sc.seed}:{provider}:{endpoint}")
        drawn = self._draw(endpoint, rates, rng.random(), rng, sc)
        if drawn is not None:
            self.sent[drawn.kind] = self.sent.get(drawn.kind, 0) + 1
        return drawn

    def _draw(
        self, endpoint: str, rates: FaultRates, u: float, rng: random.Random, sc: Scenario
    ) -> Fault | None:
        download = endpoint == "download"
        for name, rate in (
            ("server_error", rates.server_error),
            ("drop", rates.drop),
            ("drop_after_create", rates.drop_after_create),
            ("malformed", rates.malformed),
            ("slow", rates.slow),
            ("oversized", rates.oversized),
            ("wrong_magic", rates.wrong_magic),
            ("redirect_scheme", rates.bad_redirect),
        ):
            if u < rate:
                if name == "server_error":
                    statuses = sc.server_error_statuses
                    return self._status_fault(endpoint, statuses[rng.randrange(len(statuses))])
                if name == "drop_after_create" and endpoint != "submit":
                    name = "drop"
                elif name == "malformed":
                    name = sc.malformed_kinds[rng.randrange(len(sc.malformed_kinds))]
                    if download and name == "malformed_json":
                        name = "wrong_magic"
                elif name in ("oversized", "wrong_magic", "redirect_scheme") and not download:
                    return None
                return self._kind_fault(endpoint, name)
            u -= rate
        return None

    def _status_fault(self, endpoint: str, status: int) -> Fault:
        fault = self._status_faults.get((endpoint, status))
        if fault is None:
            fault = Fault(endpoint=endpoint, kind="status", status=status)  # type: ignore[arg-type]
            self._status_faults[(endpoint, status)] = fault
        return fault

    def _kind_fault(self, endpoint: str, kind: str) -> Fault:
        fault = self._kind_faults.get((endpoint, kind))
        if fault is None:
            fault = Fault(endpoint=endpoint, kind=kind)  # type: ignore[arg-type]
            self._kind_faults[(endpoint, kind)] = fault
        return fault


def _rates_for(sc: Scenario, endpoint: str) -> FaultRates | None:
    if endpoint == "submit":
        rates = sc.submit_faults
    elif endpoint in ("poll", "lookup"):
        rates = sc.poll_faults
    elif endpoint == "upload":
        rates = sc.upload_faults
    else:
        rates = sc.download_faults
    return rates if rates.total() > 0 else None
