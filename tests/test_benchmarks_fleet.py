"""Smoke test of the ``fleet`` benchmark scenario (``python -m benchmarks fleet``): a few jobs per
provider and variant through the real set-up (its own redis-server, the emulator process, a
client process per run), so that the scenario keeps running as the library changes. Its figures
are counts, never times.
"""

from __future__ import annotations

import pytest
from _redis import redis_server_or_skip

from benchmarks import _harness as h
from benchmarks import fleet


def test_the_fleet_scenario_measures_both_variants_on_both_providers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_server_or_skip()
    monkeypatch.setattr(fleet, "QUICK_JOBS", 20)
    result = fleet.run(quick=True, reps=1, placement=h.Placement(pin=False))
    figures = result["figures"]
    assert set(figures) == set(fleet.PROVIDERS)
    for provider in fleet.PROVIDERS:
        for variant in fleet.VARIANTS:
            (run,) = result["runs"][provider][variant]
            assert run["ok"] == run["jobs"] == 20
            assert run["requests_per_job"] == 2.0
        plain, redis = figures[provider]["plain"], figures[provider]["redis"]
        # Only the Redis variant talks to Redis, and it is counted by the server.
        assert plain["redis_round_trips_per_job"]["median"] == 0
        assert plain["redis_scripts_per_job"]["median"] == 0
        assert redis["redis_round_trips_per_job"]["median"] > 1
        assert redis["redis_scripts_per_job"]["median"] >= 6  # ledger 3, coordinator 3 at least
    # BFL's caps add the account-wide slot (and its price a reservation) to every job.
    scripts = {p: figures[p]["redis"]["redis_scripts_per_job"]["median"] for p in fleet.PROVIDERS}
    assert scripts["bfl"] > scripts["toapis"]
    text = fleet.render(result)
    assert "Redis round trips per job" in text
