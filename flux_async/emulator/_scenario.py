"""The emulator's script: :class:`Scenario` and the fault values it holds, plain frozen values.

Owns the provider, endpoint and fault-kind vocabularies, :class:`FaultRates`, :class:`Fault`,
:class:`Scenario` and its JSON form. Imports attrs, the standard library and
:mod:`._sampling` (durations, validators) only: nothing from the rest of flux_async, and not
the core, the app or the wire formats, which all read a scenario rather than shape it.

A scenario says how the fake providers behave (job durations, outcome rates, limits, faults,
spelling variants) and is the only input besides the seed that decides what the emulator does,
so two emulators with equal scenarios answer the same request sequence the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import attrs

from ._sampling import Duration, non_negative

__all__ = [
    "DEFAULT_API_KEY",
    "ENDPOINTS",
    "FAULT_KINDS",
    "PROVIDERS",
    "WEBHOOK_FAULT_KINDS",
    "Fault",
    "FaultRates",
    "Scenario",
    "WebhookFaultRates",
]

#: The key every emulator accepts unless ``Scenario.api_keys`` says otherwise.
DEFAULT_API_KEY = "emulator-test-key"

#: The provider surfaces, each under its own path prefix (``/toapis``, ``/apimart``, ``/bfl``).
PROVIDERS = ("toapis", "apimart", "bfl")

#: Request kinds as counted in the stats and matched by scripted faults.
ENDPOINTS = ("submit", "poll", "lookup", "upload", "download")

#: Fault kinds of a webhook delivery (``Fault(endpoint="webhook", kind=...)``): never sent,
#: sent late, sent twice, sent again much later with its first timestamp, signed wrongly.
WEBHOOK_FAULT_KINDS = ("lost", "delayed", "duplicated", "replayed", "bad_signature")

#: Scripted fault kinds (see :class:`Fault`) and the endpoints each applies to.
FAULT_KINDS: Mapping[str, frozenset[str]] = {
    **{kind: frozenset({"webhook"}) for kind in WEBHOOK_FAULT_KINDS},
    "status": frozenset(ENDPOINTS),
    "drop": frozenset(ENDPOINTS),
    "drop_after_create": frozenset({"submit"}),
    "malformed_json": frozenset({"submit", "poll", "lookup", "upload"}),
    "truncated": frozenset(ENDPOINTS),
    "html": frozenset(ENDPOINTS),
    "slow": frozenset(ENDPOINTS),
    "expired": frozenset({"download"}),
    "oversized": frozenset({"download"}),
    "oversized_chunked": frozenset({"download"}),
    "wrong_magic": frozenset({"download"}),
    "truncated_image": frozenset({"download"}),
    "redirect_scheme": frozenset({"download"}),
}


def _probability(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value!r}")


def _to_duration(value: Duration | float | Mapping[str, object]) -> Duration:
    if isinstance(value, Duration):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Duration.fixed(float(value))
    if isinstance(value, Mapping):
        return Duration(**{str(k): v for k, v in value.items()})  # type: ignore[arg-type]
    raise TypeError(f"not a duration: {value!r}")


def _to_durations(value: Mapping[str, Duration | float | Mapping[str, object]]) -> dict[str, Duration]:
    return {str(k): _to_duration(v) for k, v in value.items()}


@attrs.frozen(kw_only=True)
class FaultRates:
    """Probabilities of faults on one kind of request, drawn per request from the seeded RNG.

    The rates of one ``FaultRates`` are exclusive outcomes of a single draw, so their sum must
    not exceed 1. Which fields apply: ``drop_after_create`` to submits only (elsewhere it acts as
    ``drop``); ``oversized``, ``wrong_magic`` and ``bad_redirect`` to downloads only.
    """

    #: A 5xx answer (status drawn from ``Scenario.server_error_statuses``) with the provider's
    #: error body. On a submit no task is created.
    server_error: float = attrs.field(default=0.0, validator=_probability)
    #: The connection is closed without a byte of response. On a submit: before the task exists.
    drop: float = attrs.field(default=0.0, validator=_probability)
    #: Submit only: the task is created (and counted as charged), then the connection is closed
    #: without a response: the ambiguous case.
    drop_after_create: float = attrs.field(default=0.0, validator=_probability)
    #: A 200 whose body is broken (kind drawn from ``Scenario.malformed_kinds``). On a submit
    #: the task has been created.
    malformed: float = attrs.field(default=0.0, validator=_probability)
    #: The normal answer, but only after ``Scenario.slow_delay`` seconds. On a submit the task
    #: is created before the wait.
    slow: float = attrs.field(default=0.0, validator=_probability)
    #: Downloads: a body far larger than any image (``Scenario.oversized_bytes``).
    oversized: float = attrs.field(default=0.0, validator=_probability)
    #: Downloads: an image content type over bytes that are not an image.
    wrong_magic: float = attrs.field(default=0.0, validator=_probability)
    #: Downloads: a redirect to a non-http scheme (``file:///etc/passwd``).
    bad_redirect: float = attrs.field(default=0.0, validator=_probability)

    def __attrs_post_init__(self) -> None:
        if self.total() > 1.0 + 1e-9:
            raise ValueError("fault rates of one endpoint must add up to at most 1")

    def total(self) -> float:
        """The probability that a request gets any fault at all."""
        return float(sum(attrs.astuple(self)))


def _to_fault_rates(value: FaultRates | Mapping[str, float]) -> FaultRates:
    if isinstance(value, FaultRates):
        return value
    return FaultRates(**{str(k): float(v) for k, v in value.items()})


@attrs.frozen(kw_only=True)
class Fault:
    """A scripted fault: the next ``count`` requests matching ``endpoint`` (and ``provider``,
    when given) get ``kind`` instead of their normal answer, in the order the faults were
    scripted. Scripted faults are checked before the random ``FaultRates``, and only once the
    request has passed authentication, validation and the limits (rate, active-task cap), so a
    401, 400 or 429 never consumes one.

    Kinds (``FAULT_KINDS`` lists where each applies):
    ``status`` (answer ``status`` with the provider's error body; a 429 or a set
    ``retry_after`` adds ``Retry-After``), ``drop`` (close, nothing written; a submit creates
    nothing), ``drop_after_create`` (submit: create the task, then close), ``malformed_json``,
    ``truncated`` (Content-Length promises more than is sent, then close), ``html`` (a 200
    HTML page), ``slow`` (answer after ``delay``), and for downloads ``expired``, ``oversized``,
    ``oversized_chunked`` (no Content-Length), ``wrong_magic``, ``truncated_image`` (a whole
    200 answer carrying the first half of the image), ``redirect_scheme``.
    """

    endpoint: Literal["submit", "poll", "lookup", "upload", "download", "webhook"]
    kind: str
    count: int = 1
    provider: str | None = None
    status: int = 503
    retry_after: float | None = None
    delay: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS and self.endpoint != "webhook":
            raise ValueError(f"unknown endpoint {self.endpoint!r}; one of {ENDPOINTS} or 'webhook'")
        allowed = FAULT_KINDS.get(self.kind)
        if allowed is None:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        if self.endpoint not in allowed:
            raise ValueError(f"fault {self.kind!r} does not apply to {self.endpoint!r}")
        if self.provider is not None and self.provider not in PROVIDERS:
            raise ValueError(f"unknown provider {self.provider!r}")
        if self.count < 1:
            raise ValueError("count must be >= 1")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")


@attrs.frozen(kw_only=True)
class WebhookFaultRates:
    """Probabilities of faults on a webhook event, drawn once per event from the seeded RNG
    (exclusive outcomes of one draw: their sum must not exceed 1). The kinds are those of a
    scripted ``Fault(endpoint="webhook", ...)``; ``bad_signature`` is not drawn for apimart."""

    lost: float = attrs.field(default=0.0, validator=_probability)
    delayed: float = attrs.field(default=0.0, validator=_probability)
    duplicated: float = attrs.field(default=0.0, validator=_probability)
    replayed: float = attrs.field(default=0.0, validator=_probability)
    bad_signature: float = attrs.field(default=0.0, validator=_probability)

    def __attrs_post_init__(self) -> None:
        if self.total() > 1.0 + 1e-9:
            raise ValueError("webhook fault rates must add up to at most 1")

    def total(self) -> float:
        """The probability that an event gets any fault at all."""
        return float(sum(attrs.astuple(self)))


def _to_webhook_fault_rates(value: WebhookFaultRates | Mapping[str, float]) -> WebhookFaultRates:
    if isinstance(value, WebhookFaultRates):
        return value
    return WebhookFaultRates(**{str(k): float(v) for k, v in value.items()})


def _default_webhook_retries() -> dict[str, tuple[float, ...]]:
    # apimart documents about 10 s, 30 s, 60 s and BFL about 1 s, 5 s, 30 s; toapis publishes no
    # schedule, so the emulator uses apimart's.
    return {"toapis": (10.0, 30.0, 60.0), "apimart": (10.0, 30.0, 60.0), "bfl": (1.0, 5.0, 30.0)}


def _to_webhook_retries(value: Mapping[str, Iterable[float]]) -> dict[str, tuple[float, ...]]:
    out = _default_webhook_retries()
    for provider, delays in value.items():
        if provider not in PROVIDERS:
            raise ValueError(f"webhook_retry_delays: unknown provider {provider!r}")
        out[str(provider)] = tuple(float(d) for d in delays)
        if any(not d >= 0 for d in out[str(provider)]):
            raise ValueError("webhook_retry_delays must be seconds >= 0")
    return out


def _http_url_or_none(_inst: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not value.lower().startswith(("http://", "https://")):
        raise ValueError(f"{attribute.name} must be an http(s) URL")


def _to_fault(value: Fault | Mapping[str, object]) -> Fault:
    if isinstance(value, Fault):
        return value
    return Fault(**{str(k): v for k, v in value.items()})  # type: ignore[arg-type]


def _to_faults(value: Iterable[Fault | Mapping[str, object]]) -> tuple[Fault, ...]:
    return tuple(_to_fault(v) for v in value)


def _to_str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _to_int_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _to_float_map(value: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in value.items()}


def _to_int_map(value: Mapping[str, int]) -> dict[str, int]:
    return {str(k): int(v) for k, v in value.items()}


def _to_overrides(value: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for provider, fields in value.items():
        if provider not in PROVIDERS:
            raise ValueError(f"per_provider: unknown provider {provider!r}")
        out[str(provider)] = dict(fields)
    return out


def _default_url_ttl() -> dict[str, float]:
    return {"toapis": 86400.0, "apimart": 86400.0, "bfl": 600.0}


def _default_caps() -> dict[str, int]:
    return {"bfl": 24, "bfl/flux-kontext-max": 6}


def _default_prices() -> dict[str, float]:
    # PROVIDERS.md: BFL publishes $0.04 / $0.08 per image; apimart lists about $0.032 / $0.064
    # at 1K (second-hand); toapis publishes no price and reports no cost.
    return {
        "bfl/flux-kontext-pro": 0.04,
        "bfl/flux-kontext-max": 0.08,
        "apimart/flux-kontext-pro": 0.032,
        "apimart/flux-kontext-max": 0.064,
    }


def _prices(_inst: object, attribute: attrs.Attribute[dict[str, float]], value: dict[str, float]) -> None:
    for key, price in value.items():
        if not 0 <= price < float("inf"):
            raise ValueError(f"{attribute.name}[{key!r}] must be a finite price >= 0, got {price!r}")


@attrs.frozen(kw_only=True)
class Scenario:
    """How the emulated providers behave. Every default describes a healthy, fast provider.

    Keyword-only and frozen; change a running emulator with ``emu.scenario = new`` (tasks and
    counters are kept). ``Scenario.from_dict`` / ``to_dict`` give the JSON form used by the CLI's
    ``--scenario`` and ``PUT /_emulator/scenario``. The package docstring documents every field.
    """

    # -- determinism -------------------------------------------------------------------------
    seed: int = 0
    outcome_key: Literal["counter", "prompt"] = "counter"

    # -- keys ------------------------------------------------------------------------------------
    api_keys: tuple[str, ...] = attrs.field(default=(DEFAULT_API_KEY,), converter=_to_str_tuple)
    accept_any_key: bool = False
    forbidden_keys: tuple[str, ...] = attrs.field(default=(), converter=_to_str_tuple)
    no_credit_keys: tuple[str, ...] = attrs.field(default=(), converter=_to_str_tuple)
    toapis_require_user_agent: bool = False

    # -- job timeline and outcomes ---------------------------------------------------------------
    duration: Duration = attrs.field(factory=lambda: Duration.fixed(0.0), converter=_to_duration)
    model_durations: dict[str, Duration] = attrs.field(factory=dict, converter=_to_durations)
    time_scale: float = attrs.field(default=1.0, validator=non_negative)
    queue_fraction: float = attrs.field(default=0.2, validator=_probability)
    failure_rate: float = attrs.field(default=0.0, validator=_probability)
    moderation_rate: float = attrs.field(default=0.0, validator=_probability)
    request_moderation_share: float = attrs.field(default=0.5, validator=_probability)
    cancellation_rate: float = attrs.field(default=0.0, validator=_probability)
    blocked_terms: tuple[str, ...] = attrs.field(default=(), converter=_to_str_tuple)

    # -- latency ---------------------------------------------------------------------------------
    latency: float = attrs.field(default=0.0, validator=non_negative)
    latency_jitter: float = attrs.field(default=0.0, validator=non_negative)
    slow_delay: float = attrs.field(default=30.0, validator=non_negative)

    # -- result URLs -----------------------------------------------------------------------------
    url_ttl: dict[str, float] = attrs.field(factory=_default_url_ttl, converter=_to_float_map)
    url_expired_status: int = 410
    result_origin: str | None = None

    # -- money -----------------------------------------------------------------------------------
    prices: dict[str, float] = attrs.field(
        factory=_default_prices, converter=_to_float_map, validator=_prices
    )

    # -- limits ----------------------------------------------------------------------------------
    active_task_cap: dict[str, int] = attrs.field(factory=_default_caps, converter=_to_int_map)
    rate_limit: float | None = None
    rate_limit_burst: int | None = None
    rate_limit_scope: Literal["all", "submit"] = "all"
    retry_after: float | None = None
    retry_after_format: Literal["seconds", "http_date", "absent"] = "seconds"

    # -- faults ----------------------------------------------------------------------------------
    server_error_statuses: tuple[int, ...] = attrs.field(
        default=(500, 502, 503), converter=_to_int_tuple
    )
    malformed_kinds: tuple[str, ...] = attrs.field(
        default=("malformed_json", "truncated", "html"), converter=_to_str_tuple
    )
    submit_faults: FaultRates = attrs.field(factory=FaultRates, converter=_to_fault_rates)
    poll_faults: FaultRates = attrs.field(factory=FaultRates, converter=_to_fault_rates)
    upload_faults: FaultRates = attrs.field(factory=FaultRates, converter=_to_fault_rates)
    download_faults: FaultRates = attrs.field(factory=FaultRates, converter=_to_fault_rates)
    faults: tuple[Fault, ...] = attrs.field(default=(), converter=_to_faults)
    oversized_bytes: int = 64 * 1024 * 1024

    # -- webhooks --------------------------------------------------------------------------------
    toapis_callback_url: str | None = attrs.field(default=None, validator=_http_url_or_none)
    toapis_webhook_secrets: tuple[str, ...] = attrs.field(
        default=("emulator-webhook-secret",), converter=_to_str_tuple
    )
    bfl_webhook_scheme: Literal["signature", "secret_header", "both"] = "both"
    webhook_retry_delays: dict[str, tuple[float, ...]] = attrs.field(
        factory=_default_webhook_retries, converter=_to_webhook_retries
    )
    webhook_timeout: float = attrs.field(default=10.0, validator=non_negative)
    webhook_delay: float = attrs.field(default=30.0, validator=non_negative)
    webhook_replay_after: float = attrs.field(default=600.0, validator=non_negative)
    webhook_faults: WebhookFaultRates = attrs.field(
        factory=WebhookFaultRates, converter=_to_webhook_fault_rates
    )

    # -- wire variants (documented alternative spellings) ----------------------------------------
    report_progress: bool = True
    unknown_status: str | None = None
    toapis_submitted_status: bool = False
    toapis_legacy_object: bool = False
    toapis_result_layout: Literal["result.data", "images", "url"] = "result.data"
    apimart_data_object: bool = False
    apimart_url_string: bool = False
    apimart_extra_fields: bool = False
    bfl_extra_fields: bool = False

    # -- per-provider overrides ------------------------------------------------------------------
    per_provider: dict[str, dict[str, object]] = attrs.field(
        factory=dict, converter=_to_overrides
    )

    def __attrs_post_init__(self) -> None:
        origin = self.result_origin
        if origin is not None and (not origin.startswith(("http://", "https://")) or origin.endswith("/")):
            raise ValueError("result_origin must be scheme://host[:port] (http or https, no trailing /)")
        if self.url_expired_status not in (403, 404, 410):
            raise ValueError("url_expired_status must be 403, 404 or 410")
        if self.retry_after_format not in ("seconds", "http_date", "absent"):
            raise ValueError("retry_after_format must be 'seconds', 'http_date' or 'absent'")
        if self.toapis_result_layout not in ("result.data", "images", "url"):
            raise ValueError("toapis_result_layout must be 'result.data', 'images' or 'url'")
        if self.bfl_webhook_scheme not in ("signature", "secret_header", "both"):
            raise ValueError("bfl_webhook_scheme must be 'signature', 'secret_header' or 'both'")
        if not self.toapis_webhook_secrets or not all(self.toapis_webhook_secrets):
            raise ValueError("toapis_webhook_secrets needs at least one non-empty secret")
        if self.webhook_timeout <= 0:
            raise ValueError("webhook_timeout must be > 0 seconds")
        if self.outcome_key not in ("counter", "prompt"):
            raise ValueError("outcome_key must be 'counter' or 'prompt'")
        if self.rate_limit_scope not in ("all", "submit"):
            raise ValueError("rate_limit_scope must be 'all' or 'submit'")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be > 0 requests/s (or None)")
        if self.failure_rate + self.moderation_rate + self.cancellation_rate > 1.0 + 1e-9:
            raise ValueError("failure_rate + moderation_rate + cancellation_rate must be <= 1")
        bad = [k for k in self.malformed_kinds if k not in ("malformed_json", "truncated", "html")]
        if bad or not self.malformed_kinds:
            raise ValueError("malformed_kinds: choose among 'malformed_json', 'truncated', 'html'")
        if not self.server_error_statuses or any(
            not 500 <= s <= 599 for s in self.server_error_statuses
        ):
            raise ValueError("server_error_statuses must be 5xx codes")
        names = {a.name for a in attrs.fields(Scenario)}
        for provider, fields in self.per_provider.items():
            unknown = set(fields) - names
            if unknown or "per_provider" in fields or "seed" in fields:
                raise ValueError(
                    f"per_provider[{provider!r}]: cannot override {sorted(unknown or fields)}"
                )

    # -- derived values ----------------------------------------------------------------------------

    def for_provider(self, provider: str) -> Scenario:
        """This scenario with ``per_provider[provider]`` applied (and no overrides left)."""
        overrides = self.per_provider.get(provider, {})
        return attrs.evolve(self, per_provider={}, **overrides)  # type: ignore[arg-type]

    def price_for(self, provider: str, model: str) -> float | None:
        """USD per image of ``model`` on ``provider`` (``prices`` keyed ``provider/model`` or
        ``model``); None when the scenario has no price for it."""
        found = self.prices.get(f"{provider}/{model}")
        return self.prices.get(model) if found is None else found

    def duration_for(self, provider: str, model: str) -> Duration:
        """The duration distribution of ``model`` on ``provider``, before ``time_scale``."""
        found = self.model_durations.get(f"{provider}/{model}")
        if found is None:
            found = self.model_durations.get(model, self.duration)
        return found

    # -- JSON form ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Scenario:
        """Build a scenario from its JSON form; unknown keys are an error."""
        names = {a.name for a in attrs.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown scenario fields: {sorted(unknown)}")
        return cls(**{str(k): v for k, v in data.items()})  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        """The JSON form of this scenario (lists for tuples)."""
        return attrs.asdict(self)
