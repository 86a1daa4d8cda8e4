"""A local emulator of the toapis, apimart and Black Forest Labs (BFL) image APIs.

A real aiohttp.web server that speaks the three providers as their public documentation
describes them (paths, envelopes, status vocabularies, errors, uploads, expiring result URLs),
with scripted, seeded timelines and faults. The demo, the test suites and the benchmarks use it
instead of the internet. It is built independently of the client: nothing here imports
``flux_async.providers``, ``catalog``, ``session`` or ``transport`` (only aiohttp, attrs and the
standard library), so a misreading of the wire format cannot hide in a shared module.

Starting it
===========

In-process (127.0.0.1, a free port)::

    from flux_async.emulator import DEFAULT_API_KEY, Duration, Emulator, ManualClock, Scenario

    clock = ManualClock()
    async with Emulator(Scenario(seed=7, duration=Duration.fixed(10)), clock=clock) as emu:
        emu.base_url("toapis")   # http://127.0.0.1:PORT/toapis  (also "apimart", "bfl")
        ...                      # drive it with any HTTP client
        clock.advance(10)        # tasks complete without anyone sleeping
        emu.stats()

From a shell: ``python -m flux_async.emulator --port 8080 [--host H] [--scenario JSON|PATH]
[--seed N] [--key K ...] [--any-key] [--public-url URL] [--json]`` (prints the base URLs and
the test key; ``flux-async emulator`` takes the same options and needs no ``cli`` extra).
In another process from Python: ``EmulatorProcess(scenario, cpus={0})`` (a context manager
with ``base_url()``, ``stats()``, ``reset()``, ``set_scenario()``, ``inject()``), or
``run_forever(port, scenario)`` to block in the current one. In pytest: the ``flux_emulator``
fixture (see :mod:`flux_async.emulator.pytest_plugin`).

The accepted key is ``DEFAULT_API_KEY = "emulator-test-key"`` unless the scenario says
otherwise; toapis and apimart take it as ``Authorization: Bearer <key>``, BFL as ``x-key``.

Surfaces
========

``/toapis``, ``/apimart`` and ``/bfl`` are base URLs: the providers' own paths sit under them
(``/toapis/v1/images/generations``, ``/apimart/v1/tasks/{id}``, ``/bfl/v1/flux-kontext-pro``,
the uploads at ``/v1/uploads/images``). BFL's paths are also served at the root
(``/v1/flux-kontext-pro``, ``/v1/get_result``), since clients written for BFL take a host root
as their base URL (BFL's paths collide with neither aggregator's). BFL's ``polling_url`` points
to a "regional" path, ``http://HOST/bfl-us1/v1/get_result?id=...``, which a client must use
verbatim; the global ``/v1/get_result?id=`` (at the root or under ``/bfl``) answers too, as
BFL's does (200 with the task's status, or ``Task not found``), and is counted apart in
``bfl_global_polls``. Result images are served at
``/files/{provider}/{task_id}/{index}.{png|jpg|jpeg}`` (real PNG / baseline JPEG bytes, 64 px
on the short side at the requested aspect ratio, deterministic from the prompt) until they
expire; BFL's carry a signature (``?se=...&sig=...``), and a URL whose signature does not
match is refused with 403. Uploads are served at ``/files/uploads/{name}``.

Every URL the emulator hands out starts with its own address (``emu.url``), whatever ``Host``
header a request carries; ``Emulator(public_url=...)`` (``--public-url``) names another one for
clients that reach it through a proxy or a published container port. BFL's ``input_image``
(and ``input_image_2..4``) must be an http(s) URL or base64 (a ``data:`` URI included): anything
else is a 422 and creates no task.

toapis tasks can also be fetched by their ``client_business_id``:
``GET /toapis/v1/images/generations/{client_business_id}`` answers exactly as for the task id
(counted as a *lookup*; if several tasks share the id, the first one answers). Task timelines: ``queued`` for the first ``queue_fraction`` of the
duration (apimart ``pending``; BFL ``Pending`` with ``progress: null``), then running with
rising progress (toapis ``in_progress`` and apimart ``processing`` with integer percent 1..99,
apimart adds ``estimated_time``; BFL ``Pending`` with a float progress in [0, 1]), then the
terminal status drawn at creation.

Scenario fields
===============

All keyword-only, all defaults describe a healthy, instant provider. Change a running
emulator with ``emu.scenario = Scenario(...)`` (tasks keep the outcome and duration drawn at
creation). JSON form: ``Scenario.from_dict`` / ``to_dict`` (``Duration`` as ``{"kind":
"lognormal", "median": 10, "sigma": 0.35}`` or a plain number; ``FaultRates`` and ``Fault`` as
objects).

Determinism
    ``seed`` (0). ``outcome_key``: ``"counter"`` (default: the k-th task created *on a provider*
    gets the same duration and outcome for the same seed, whatever else happens) or
    ``"prompt"`` (drawn from seed + model + prompt: the same prompt always gets the same fate).
Keys
    ``api_keys`` ((DEFAULT_API_KEY,)); ``accept_any_key`` (False); ``forbidden_keys`` (valid
    keys without access: 403 everywhere); ``no_credit_keys`` (valid keys without credit: 402
    on submit and upload); ``toapis_require_user_agent`` (False: if True, 403 without one).
Timeline and outcomes
    ``duration`` (``Duration.fixed(0)``: done at the first poll; also ``Duration.uniform(low,
    high)``, ``Duration.lognormal(median, sigma, maximum=None)``; in JSON ``{"kind": "uniform",
    "low": 2, "high": 8}``); ``model_durations`` (``{"model" or "provider/model": Duration}``); ``time_scale`` (1.0, multiplies every duration);
    ``queue_fraction`` (0.2 of the duration reported as queued); ``failure_rate``,
    ``moderation_rate`` and ``cancellation_rate`` (0; exclusive, drawn once per task).
    Moderated tasks end as BFL ``Request Moderated`` (share ``request_moderation_share``,
    0.5) or ``Content Moderated``; on the aggregators as ``failed`` with error code
    ``content_policy_violation``. Cancelled: apimart ``cancelled``; toapis ``failed``
    (``task_cancelled``); BFL ``Error``. ``blocked_terms`` (()): prompts containing one
    (case-insensitive) are refused at submit with 422 ``content_policy_violation`` on the
    aggregators, and become ``Request Moderated`` tasks on BFL.
Latency
    ``latency`` (0 s) + ``latency_jitter`` (0 s, uniform extra) before every provider request;
    ``slow_delay`` (30 s) for ``slow`` faults. These are real waits.
Money
    ``prices`` (``{"bfl/flux-kontext-pro": 0.04, "bfl/flux-kontext-max": 0.08,
    "apimart/flux-kontext-pro": 0.032, "apimart/flux-kontext-max": 0.064}``: the published
    prices, US dollars per image; keys are ``provider/model`` or a model for every provider).
    A task's cost (price x ``n``) is fixed when it is created and reported as the providers
    do: BFL's submit answer carries ``cost`` in credits ($0.01 each); every apimart task status
    carries ``cost`` (USD) and ``credits_cost`` (cost x 10); toapis reports none (a toapis
    price only shows in the stats). A model without a price reports no cost. BFL does not
    charge a moderated task; every other task is charged its cost.
Result URLs
    ``url_ttl`` (``{"toapis": 86400, "apimart": 86400, "bfl": 600}`` seconds after completion);
    ``url_expired_status`` (410; or 403 with a signed-URL XML error, or 404).
    ``result_origin`` (None; else ``scheme://host[:port]`` that result URLs start with instead
    of the emulator's own address: a hostile answer pointing a client at, say,
    ``http://169.254.169.254``).
Limits
    ``active_task_cap`` (``{"bfl": 24, "bfl/flux-kontext-max": 6}``; keys are a provider or
    ``provider/model``, any provider may get one): a submit over the cap gets 429 and no task.
    ``rate_limit`` (None, else requests/s per provider, token bucket of ``rate_limit_burst``,
    default ceil(rate)) over every provider request (``rate_limit_scope="all"``) or submits
    only (``"submit"``): 429. ``retry_after`` (None: computed, i.e. until the earliest active
    task ends for a cap, until a token for a rate, at least 1 s; or a fixed number of seconds,
    e.g. 1e9 for a huge one) and ``retry_after_format`` (``"seconds"``, ``"http_date"``
    (computed from real time), ``"absent"``).
Faults drawn at random (seeded, per provider and endpoint)
    ``submit_faults``, ``poll_faults`` (also used for lookups), ``upload_faults``,
    ``download_faults``: each a ``FaultRates(server_error, drop, drop_after_create, malformed,
    slow, oversized, wrong_magic, bad_redirect)`` of probabilities. ``server_error_statuses``
    ((500, 502, 503)); ``malformed_kinds`` (("malformed_json", "truncated", "html"));
    ``oversized_bytes`` (64 MiB).
Scripted faults
    ``faults``: a tuple of ``Fault(endpoint, kind, count=1, provider=None, status=503,
    retry_after=None, delay=None)`` applied, in order, to the next matching requests (after
    authentication, validation and limits, so a 401/400/429 never uses one up; before the
    random rates). At run time: ``emu.inject(Fault(
    ...))`` or ``emu.fail_next("submit", "drop_after_create", count=2, provider="toapis")``.
    Kinds: ``status`` (that status with the provider's error body; 429 or ``retry_after`` adds
    ``Retry-After``), ``drop`` (connection closed with nothing written; a submit creates no
    task), ``drop_after_create`` (submit: the task is created and charged, then the
    connection is closed: the ambiguous case), ``malformed_json`` (200, half a JSON body),
    ``truncated`` (200, Content-Length larger than what is sent, then closed), ``html`` (200
    with an HTML error page), ``slow`` (normal answer after ``delay``; a submit creates the task
    first); downloads only: ``expired``, ``oversized`` (Content-Length declared),
    ``oversized_chunked`` (no Content-Length), ``wrong_magic`` (image content type, XML bytes),
    ``truncated_image`` (a complete 200 whose image is cut to its first half: right magic
    bytes, no end), ``redirect_scheme`` (302 to ``file:///etc/passwd``). A 200 with a broken body on a submit
    means the task was created.
Spelling variants (the "tolerate" items of the providers' documentation)
    ``report_progress`` (True; False omits aggregator progress and nulls BFL's);
    ``unknown_status`` (None; a string replaces the queued-phase status on every provider);
    ``toapis_submitted_status`` (``"submitted"`` instead of ``"queued"``);
    ``toapis_legacy_object`` (``"image.generation"``); ``toapis_result_layout``
    (``"result.data"``, ``"images"`` (top-level ``images[].url``) or ``"url"`` (top-level
    ``url``)); ``apimart_data_object`` (submit ``data`` as an object, not a list);
    ``apimart_url_string`` (``url`` a string, not a list); ``apimart_extra_fields``
    (``usage``); ``bfl_extra_fields`` (``input_mp``, ``output_mp`` on submit).
Webhooks
    A task whose submit names a webhook gets one POST when it reaches its terminal status
    (toapis: ``callback_url``, which must share the origin of ``toapis_callback_url``, the
    key's default, used when the request names none; with no default nothing is sent. apimart:
    ``webhook``, posted to ``<webhook>/callback``. BFL: ``webhook_url`` and
    ``webhook_secret``). ``toapis_callback_url`` (None); ``toapis_webhook_secrets``
    (``("emulator-webhook-secret",)``: every one signs, so two give the two signatures of a
    rotation); ``bfl_webhook_scheme`` (``"both"``, ``"signature"`` (``X-BFL-Signature``) or
    ``"secret_header"`` (``X-Webhook-Secret``)); ``webhook_retry_delays`` (``{"toapis": (10,
    30, 60), "apimart": (10, 30, 60), "bfl": (1, 5, 30)}`` seconds, times ``time_scale``;
    after a connection error, a timeout or a non-2xx other than a 4xx; 408 and 429 are
    retried); ``webhook_timeout`` (10 real seconds for the receiver to answer);
    ``webhook_faults`` (``WebhookFaultRates(lost, delayed, duplicated, replayed,
    bad_signature)``, drawn once per event); ``webhook_delay`` (30) and
    ``webhook_replay_after`` (600): emulator-clock seconds for ``delayed`` and ``replayed``.
    Scripted: ``Fault(endpoint="webhook", kind=...)`` with a kind of ``WEBHOOK_FAULT_KINDS``
    (``delay`` overrides the two defaults), e.g. ``emu.fail_next("webhook", "lost")``.
    Deliveries are posted by tasks the server owns (cancelled when it stops); a ManualClock
    wakes them when it moves, and ``await emu.wait_webhooks_idle()`` returns once nothing is
    in flight or due. The exact payloads are in :mod:`._hooks`.
Per provider
    ``per_provider``: ``{"bfl": {"failure_rate": 0.5}, "toapis": {"submit_faults": {...}}}``
    overrides any field but ``seed`` and ``per_provider`` for one provider.

Stats
=====

``GET /_emulator/stats`` (``?tasks=0`` leaves out the task list) and ``emu.stats(tasks=...)``
return this document (typed as the ``EmulatorStats`` / ``TaskStats`` TypedDicts)::

    {
      "now": 1767225600.0,                        # the emulator clock
      "requests": {"submit": 3, "poll": 12, "lookup": 1, "upload": 0, "download": 2,
                   "other": 0},                   # every request, answered or dropped
      "by_provider": {"toapis": {"submit": 2, "poll": 9}, "apimart": {}, "bfl": {...}},
      "status_codes": {"200": 15, "429": 2},      # answers actually sent, by status
      "tasks_created": 3,
      "duplicate_submits": 0,                     # submits repeating an earlier task's
                                                  # client_business_id or byte-identical body
      "bfl_global_polls": 0,                      # BFL polls on the global /v1/get_result
                                                  # (a client that rebuilt the polling URL)
      "rate_limited": {"cap": 2, "rate": 0, "scripted": 0},   # 429s by cause
      "dropped_connections": {"submit_before_create": 0, "submit_after_create": 1,
                              "other": 0, "total": 1},
      "faults": {"drop_after_create": 1},         # faults delivered, by kind
      "active_now": {"bfl": 2, "bfl/flux-kontext-pro": 2},
      "active_high_water": {"bfl": 24, "bfl/flux-kontext-max": 6, "toapis": 3, ...},
      "pending_scripted_faults": 0,
      "charged_usd": 0.08,                        # what every task was charged (see prices)
      "webhooks": {"events": 3,                   # tasks whose terminal webhook fell due
                   "attempted": 4, "delivered": 3, "failed": 1,   # POSTs, by answer (2xx or not)
                   "retried": 1, "gave_up": 0,    # retries scheduled; events abandoned
                   "lost": 0, "delayed": 0, "duplicated": 0, "replayed": 0,
                   "badly_signed": 0,             # webhook faults applied, by kind
                   "pending": 0},                 # waiting or in flight now
      "tasks": [{
        "id": "task_img_…", "provider": "toapis", "model": "flux-kontext-pro",
        "status": "succeeded",        # queued | running | succeeded | failed |
                                      # request_moderated | content_moderated | cancelled
        "provider_status": "completed",           # what a poll would say now
        "outcome": "succeeded",                   # drawn at creation (known in advance)
        "submits": 1,                 # submits with this task's identity (the first task of
                                      # a duplicate group counts them all)
        "polls": 4, "lookups": 0, "downloads": 1,
        "created_at": 1767225600.0, "duration": 10.0,
        "completed_at": 1767225610.0, # emulator clock (wall time by default); null until done
        "first_terminal_poll_at": 1767225610.5,   # first poll that saw the terminal status
        "client_business_id": "…", "duplicate_of": null,
        "n": 1,                       # images asked for (and charged)
        "cost_usd": 0.04,             # the cost the provider reports (null: no price)
        "charged_usd": 0.04           # what it is charged (BFL: 0 once moderated)
      }, ...]
    }

``POST /_emulator/reset`` (``emu.reset()``) forgets tasks and counters. ``GET`` / ``PUT
/_emulator/scenario`` reads or replaces the scenario (JSON form); ``POST /_emulator/faults``
scripts faults (a ``Fault`` object or a list). None of these is counted.

Performance: task state is computed when polled (no timer per task); a task is one slotted
record. ``python -m flux_async.emulator._selfbench`` measures requests/s and bytes per task.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._core import EmulatorStats, TaskStats
    from ._emulator import Emulator
    from ._process import EmulatorProcess, run_forever
    from ._sampling import Duration, ManualClock
    from ._scenario import (
        DEFAULT_API_KEY,
        ENDPOINTS,
        FAULT_KINDS,
        PROVIDERS,
        WEBHOOK_FAULT_KINDS,
        Fault,
        FaultRates,
        Scenario,
        WebhookFaultRates,
    )

__all__ = [
    "DEFAULT_API_KEY",
    "ENDPOINTS",
    "FAULT_KINDS",
    "PROVIDERS",
    "WEBHOOK_FAULT_KINDS",
    "Duration",
    "Emulator",
    "EmulatorProcess",
    "EmulatorStats",
    "Fault",
    "FaultRates",
    "ManualClock",
    "Scenario",
    "TaskStats",
    "WebhookFaultRates",
    "run_forever",
]

# Exports load on first use, so that importing the pytest plugin (which imports this package)
# stays cheap and never pulls in aiohttp.
_WHERE = {
    "DEFAULT_API_KEY": "._scenario",
    "ENDPOINTS": "._scenario",
    "FAULT_KINDS": "._scenario",
    "PROVIDERS": "._scenario",
    "WEBHOOK_FAULT_KINDS": "._scenario",
    "WebhookFaultRates": "._scenario",
    "Duration": "._sampling",
    "Fault": "._scenario",
    "FaultRates": "._scenario",
    "ManualClock": "._sampling",
    "Scenario": "._scenario",
    "Emulator": "._emulator",
    "EmulatorStats": "._core",
    "TaskStats": "._core",
    "EmulatorProcess": "._process",
    "run_forever": "._process",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
