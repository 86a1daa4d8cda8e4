"""Smoke test of the ``webhooks`` benchmark scenario (``python -m benchmarks webhooks``): a few
short jobs per provider through the real set-up (emulator process, client process, receivers),
so that the scenario keeps running as the library changes. Its figures are counts, never times.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import _harness as h
from benchmarks import webhooks

JOBS = 4
SECRET = "bench-secret-0f3a"


def test_the_webhooks_scenario_runs_every_way_on_every_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhooks.secrets, "token_hex", lambda _: SECRET)
    result = webhooks.run(
        quick=True,
        reps=1,
        placement=h.Placement(pin=False),
        jobs=JOBS,
        median=0.2,
        # A lost webhook is found by the safety net; keep it near so the test stays short.
        policy={"push_fallback_delay": 1.0, "push_max_interval": 0.5},
    )
    figures = result["figures"]
    expected = {f"{pr}/{mode}" for pr in webhooks.PROVIDERS for mode, _, _ in webhooks.MODES}
    assert set(figures) == expected
    for name, row in figures.items():
        assert row["completed"] == row["jobs"] == JOBS, name
    for pr in webhooks.PROVIDERS:
        polled = figures[f"{pr}/polled"]["status_polls_per_job"]["median"]
        pushed = figures[f"{pr}/webhooks"]
        assert pushed["webhooks_delivered"] == JOBS
        assert pushed["webhooks_lost"] == 0
        assert pushed["status_polls_per_job"]["median"] <= polled
        lossy = figures[f"{pr}/webhooks, 20% lost"]
        assert lossy["webhooks_delivered"] + lossy["webhooks_lost"] == JOBS
        assert set(lossy["subsets"]) == {"webhook delivered", "webhook lost"}
    # The per-run webhook secret is never recorded.
    assert result["setup"]["emulator_scenario"]["toapis_webhook_secrets"] == [
        "(per-run secret, not recorded)"
    ]
    text = webhooks.render(result)
    assert "toapis" in text
    assert SECRET not in text
    assert SECRET not in json.dumps(result)
