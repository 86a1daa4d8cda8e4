"""Ways to run the emulator (in-process, CLI, child process, pytest fixtures), the Scenario
value and its JSON form, the import boundary, and memory per live task.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import urllib.request
from pathlib import Path

import pytest

import flux_async.emulator as emulator_pkg
from flux_async.emulator import (
    DEFAULT_API_KEY,
    Duration,
    Emulator,
    EmulatorProcess,
    Fault,
    FaultRates,
    ManualClock,
    Scenario,
)
from flux_async.emulator._core import Core
from flux_async.emulator._validate import Spec

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flux_async" / "emulator"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# -- Scenario --------------------------------------------------------------------------------------


def test_scenario_defaults_are_a_healthy_fast_provider() -> None:
    sc = Scenario()
    assert sc.duration.sample(0.5) == 0.0
    assert sc.failure_rate == sc.moderation_rate == sc.cancellation_rate == 0.0
    assert sc.api_keys == (DEFAULT_API_KEY,)
    assert DEFAULT_API_KEY == "emulator-test-key"
    assert sc.active_task_cap == {"bfl": 24, "bfl/flux-kontext-max": 6}
    assert sc.url_ttl == {"toapis": 86400.0, "apimart": 86400.0, "bfl": 600.0}
    assert sc.submit_faults.total() == sc.poll_faults.total() == 0.0
    assert sc.faults == ()


def test_scenario_json_round_trip() -> None:
    sc = Scenario(
        seed=9,
        duration=Duration.lognormal(10, 0.35, maximum=60),
        model_durations={"bfl/flux-kontext-max": Duration.uniform(1, 2)},
        submit_faults=FaultRates(server_error=0.1, drop_after_create=0.05),
        faults=(Fault(endpoint="download", kind="oversized", count=2),),
        per_provider={"bfl": {"failure_rate": 0.5}},
        retry_after_format="http_date",
    )
    data = json.loads(json.dumps(sc.to_dict()))
    assert Scenario.from_dict(data) == sc
    assert Scenario.from_dict({"duration": 5, "faults": [{"endpoint": "poll", "kind": "drop"}]}) \
        == Scenario(duration=Duration.fixed(5), faults=(Fault(endpoint="poll", kind="drop"),))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate": 1.5},
        {"failure_rate": 0.6, "moderation_rate": 0.6},
        {"time_scale": -1},
        {"url_expired_status": 500},
        {"retry_after_format": "minutes"},
        {"toapis_result_layout": "nested"},
        {"rate_limit": 0},
        {"server_error_statuses": (404,)},
        {"malformed_kinds": ("nonsense",)},
        {"submit_faults": {"drop": 0.7, "server_error": 0.7}},
        {"per_provider": {"nowhere": {}}},
        {"per_provider": {"bfl": {"seed": 3}}},
        {"per_provider": {"bfl": {"not_a_field": 3}}},
        {"faults": [{"endpoint": "poll", "kind": "drop_after_create"}]},
        {"faults": [{"endpoint": "submit", "kind": "oversized"}]},
        {"faults": [{"endpoint": "submit", "kind": "explode"}]},
        {"faults": [{"endpoint": "submit", "kind": "drop", "count": 0}]},
        {"duration": {"kind": "uniform", "low": 5, "high": 1}},
    ],
)
def test_scenario_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        Scenario.from_dict(kwargs)


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown scenario fields"):
        Scenario.from_dict({"failure_rat": 0.1})


def test_durations() -> None:
    assert Duration.fixed(3).sample(0.99) == 3
    assert Duration.uniform(2, 4).sample(0.25) == 2.5
    lognormal = Duration.lognormal(10, 0.35)
    assert abs(lognormal.sample(0.5) - 10) < 1e-9
    assert lognormal.sample(0.9) > 10 > lognormal.sample(0.1)
    assert Duration.lognormal(10, 2, maximum=30).sample(0.999999) == 30
    assert lognormal.typical() == 10


def test_for_provider_and_duration_lookup() -> None:
    sc = Scenario(duration=Duration.fixed(1),
                  model_durations={"flux-kontext-max": 2, "bfl/flux-kontext-max": 3},
                  per_provider={"apimart": {"failure_rate": 1.0}})
    assert sc.for_provider("apimart").failure_rate == 1.0
    assert sc.for_provider("toapis").failure_rate == 0.0
    assert sc.duration_for("toapis", "flux-kontext-pro").seconds == 1
    assert sc.duration_for("toapis", "flux-kontext-max").seconds == 2
    assert sc.duration_for("bfl", "flux-kontext-max").seconds == 3


def test_manual_clock() -> None:
    clock = ManualClock(100.0)
    assert clock() == 100.0
    assert clock.advance(2.5) == 102.5
    with pytest.raises(ValueError, match="never goes back"):
        clock.advance(-1)


# -- in-process lifecycle --------------------------------------------------------------------------


def _running(emu: Emulator) -> bool:
    return emu.running


@pytest.mark.anyio
async def test_emulator_lifecycle() -> None:
    emu = Emulator()
    assert not _running(emu)
    assert "stopped" in repr(emu)
    await emu.start()
    try:
        assert _running(emu)
        assert "listening on" in repr(emu)
        assert emu.port > 0
        assert emu.url == f"http://127.0.0.1:{emu.port}"
        assert emu.base_url("apimart") == emu.url + "/apimart"
        with pytest.raises(ValueError, match="unknown provider"):
            emu.base_url("openai")
        with pytest.raises(RuntimeError, match="already running"):
            await emu.start()
        assert emu.statistics()["tasks_created"] == 0
    finally:
        await emu.stop()
    await emu.stop()  # idempotent
    assert not _running(emu)


# -- other processes -------------------------------------------------------------------------------


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def test_cli_json_mode_and_options() -> None:
    scenario = json.dumps({"failure_rate": 0.25})
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_async.emulator", "--port", "0", "--json", "--seed", "3",
         "--key", "k-1", "--key", "k-2", "--scenario", scenario],
        stdout=subprocess.PIPE, env=_env(), text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["providers"]["bfl"] == info["url"] + "/bfl"
        assert info["api_keys"] == ["k-1", "k-2"]
        current = _get(info["url"] + "/_emulator/scenario")
        assert isinstance(current, dict)
        assert current["seed"] == 3
        assert current["failure_rate"] == 0.25
        assert current["api_keys"] == ["k-1", "k-2"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def test_cli_human_mode_prints_urls_and_key(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps({"duration": {"kind": "uniform", "low": 1, "high": 2}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_async.emulator", "--port", "0", "--scenario", str(path)],
        stdout=subprocess.PIPE, env=_env(), text=True,
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    text = "".join(lines)
    assert "listening on http://127.0.0.1:" in text
    for provider in ("toapis", "apimart", "bfl"):
        assert f"/{provider}" in text
    assert DEFAULT_API_KEY in text


def test_cli_rejects_a_bad_scenario() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flux_async.emulator", "--port", "0", "--scenario", '{"x": 1}'],
        capture_output=True, env=_env(), text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "unknown scenario fields" in result.stderr


def test_emulator_process() -> None:
    scenario = Scenario(duration=Duration.fixed(3600))
    with EmulatorProcess(scenario, cpus={0}) as emu:
        assert emu.base_url("toapis") == emu.url + "/toapis"
        request = urllib.request.Request(
            emu.base_url("bfl") + "/v1/flux-kontext-pro", method="POST",
            data=json.dumps({"prompt": "x"}).encode(),
            headers={"x-key": DEFAULT_API_KEY, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
        stats = emu.stats(tasks=False)
        assert stats["tasks_created"] == 1
        assert "tasks" not in stats
        emu.set_scenario(Scenario(failure_rate=1.0))
        current = _get(emu.url + "/_emulator/scenario")
        assert isinstance(current, dict)
        assert current["failure_rate"] == 1.0
        emu.inject(Fault(endpoint="submit", kind="status", status=503))
        assert emu.stats()["pending_scripted_faults"] == 1
        emu.reset()
        assert emu.stats()["tasks_created"] == 0
        pid = emu.pid
    assert not Path(f"/proc/{pid}").exists() or _is_zombie_or_gone(pid)


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


# -- the pytest plugin -----------------------------------------------------------------------------


def test_plugin_import_is_cheap_and_side_effect_free() -> None:
    # Importing the plugin (done in every pytest session once flux_async is installed) must
    # load nothing beyond the emulator package's lazy __init__ and the plugin module itself:
    # no emulator server, no image encoders, nothing started.
    code = (
        "import sys\n"
        "import pytest, flux_async\n"
        "before = set(sys.modules)\n"
        "import flux_async.emulator.pytest_plugin as p\n"
        "added = sorted(set(sys.modules) - before)\n"
        "assert added == ['flux_async.emulator', 'flux_async.emulator.pytest_plugin'], added\n"
        "print(sorted(p.__all__))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_env(), timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "flux_emulator" in result.stdout


def test_plugin_is_registered_in_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'flux_async_emulator = "flux_async.emulator.pytest_plugin"' in text


def test_plugin_fixtures_in_a_user_suite(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(
        """
        import aiohttp
        import pytest

        from flux_async.emulator import DEFAULT_API_KEY, Duration, ManualClock, Scenario

        CLOCK = ManualClock()


        @pytest.fixture
        def anyio_backend():
            return "asyncio"


        @pytest.fixture
        def flux_emulator_scenario():
            return Scenario(duration=Duration.fixed(30))


        @pytest.fixture
        def flux_emulator_clock():
            return CLOCK


        @pytest.mark.anyio
        async def test_uses_the_fixture(flux_emulator):
            url = flux_emulator.base_url("toapis") + "/v1/images/generations"
            headers = {"Authorization": "Bearer " + DEFAULT_API_KEY}
            async with aiohttp.ClientSession() as http:
                async with http.post(url, headers=headers,
                                     json={"model": "flux-kontext-pro", "prompt": "x"}) as r:
                    task = (await r.json())["id"]
                CLOCK.advance(30)
                async with http.get(url + "/" + task, headers=headers) as r:
                    assert (await r.json())["status"] == "completed"
            assert flux_emulator.stats()["requests"]["poll"] == 1


        @pytest.mark.anyio
        async def test_default_scenario(flux_emulator_scenario, flux_emulator):
            assert flux_emulator.running
        """
    ))
    env = _env()
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # load exactly these plugins, installed or not
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "anyio.pytest_plugin",
         "-p", "flux_async.emulator.pytest_plugin", "-p", "no:cacheprovider", "-W", "error",
         "--rootdir", str(tmp_path), str(tmp_path / "test_user.py")],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


# -- boundaries and budgets ------------------------------------------------------------------------

ALLOWED_TOP_LEVEL = {"aiohttp", "attrs", "pytest", "flux_async"}


def test_emulator_imports_only_aiohttp_attrs_and_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or top in ALLOWED_TOP_LEVEL, (path.name, name)
                if top == "flux_async":
                    # only the emulator itself: never the client it is meant to test
                    assert name.startswith("flux_async.emulator"), (path.name, name)
                if top == "pytest":
                    assert path.name == "pytest_plugin.py", (path.name, name)


def test_public_surface() -> None:
    for name in emulator_pkg.__all__:
        assert getattr(emulator_pkg, name) is not None
    assert len(set(emulator_pkg.__all__)) == len(emulator_pkg.__all__)
    assert set(emulator_pkg.__all__) <= set(dir(emulator_pkg))
    with pytest.raises(AttributeError):
        emulator_pkg.NoSuchThing  # noqa: B018


def test_memory_per_live_task_is_small() -> None:
    core = Core(Scenario(duration=Duration.fixed(3600), active_task_cap={}), ManualClock())
    count = 20_000
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(count):  # the strings are counted too: the task keeps them alive
            spec = Spec(model="flux-kontext-pro", prompt=f"a watercolour fox number {i}",
                        ratio="16:9", fmt="jpg", cbid=f"job-{i:08d}")
            core.create("toapis", spec, i, False)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_task = (after - before) / count
    assert len(core.tasks) == count
    assert per_task < 1024, per_task  # 100,000 live tasks well under 100 MiB
