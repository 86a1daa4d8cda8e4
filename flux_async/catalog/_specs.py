"""The model tables: what each model accepts on each provider (:class:`ModelSpec`), each
provider's upload limit, and the lookups over them. Data and dictionary lookups only: no I/O,
no clock, no aiohttp/anyio, nothing from session, transport or scheduler; imports only
``flux_async.errors`` and the image types of ``_images``.

The tables transcribe the providers' documentation; ``_validate`` checks a request against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

from ..errors import ConfigurationError, ValidationError
from ._images import GIF, JPEG, PNG, WEBP

__all__ = [
    "MAX_PROMPT_BYTES",
    "MIB",
    "PROVIDERS",
    "UPLOAD_TYPES",
    "ModelSpec",
    "max_upload_bytes",
    "model_spec",
    "models_for",
]

#: The providers this library speaks to.
PROVIDERS: tuple[str, ...] = ("toapis", "apimart", "bfl")

MIB = 1024 * 1024

#: Largest image each provider takes. The aggregators document their upload cap ("10MB", "20MB",
#: read as MiB as upload servers usually do). BFL takes the image inline as base64 and documents no
#: cap; 20 MiB is what BFL-compatible gateways document per ``input_image``, and with base64's 4/3
#: growth it already makes a ~27 MB JSON body, so we do not go higher.
_UPLOAD_LIMITS: Mapping[str, int] = MappingProxyType(
    {"toapis": 10 * MIB, "apimart": 20 * MIB, "bfl": 20 * MIB}
)

#: The largest prompt sent to any model, in bytes of UTF-8, where the provider documents no
#: lower limit (only Grok's is documented: 1000 characters). 32 KiB is some 5,000 words: far
#: beyond what an image model reads, small enough that a prompt pasted by mistake (a file, a
#: log) is refused before it is put into a request body.
MAX_PROMPT_BYTES = 32 * 1024

#: Request fields every model takes; the optional ones are answered by ``ModelSpec.takes``.
_ALWAYS_TAKEN = frozenset({"model", "prompt", "size", "images"})


def _frozen_map(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class ModelSpec:
    """What one model accepts on one provider.

    ``sizes`` are the documented sizes, ``image_sizes`` those valid only with an input image,
    ``size_aliases`` the provider's extra spellings (normalised away), ``ratio_range`` the
    bounds of any other ``"W:H"`` the provider takes (None: named sizes only). ``n_values`` is
    None when ``n`` must not be sent. ``response_formats`` are provider-neutral (``()`` = the
    option is not taken); ``safety_tolerance`` and ``seed`` are inclusive ranges (None = not
    taken). ``image_types`` and ``max_image_bytes`` bound local files and bytes (URLs are
    passed on unchecked).

    ``max_prompt_chars`` is the provider's documented prompt limit, in characters (None: none
    documented); ``max_prompt_bytes`` is this library's cap on the prompt's UTF-8 size, which
    applies to every model (:data:`MAX_PROMPT_BYTES` unless a table says otherwise).
    ``wire_fields`` names the body fields the library itself writes from the request, in the
    provider's spelling (toapis' options inside ``metadata`` as ``metadata.<name>``): ``extra``
    may not set them.
    """

    provider: str
    model: str
    sizes: tuple[str, ...]
    image_sizes: frozenset[str] = frozenset()
    size_aliases: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map, hash=False)
    ratio_range: tuple[tuple[int, int], tuple[int, int]] | None = None
    default_size: str
    default_size_with_image: str
    n_values: tuple[int, ...] | None = None
    default_n: int | None = None
    max_images: int
    max_prompt_chars: int | None = None
    max_prompt_bytes: int = MAX_PROMPT_BYTES
    response_formats: tuple[str, ...] = ()
    safety_tolerance: tuple[int, int] | None = None
    prompt_upsampling: bool = False
    seed: tuple[int, int] | None = None
    image_types: frozenset[str]
    max_image_bytes: int
    wire_fields: frozenset[str] = frozenset()

    def takes(self, field: str) -> bool:
        """True when this model takes the request field ``field``."""
        optional = {
            "n": self.n_values is not None,
            "response_format": bool(self.response_formats),
            "safety_tolerance": self.safety_tolerance is not None,
            "prompt_upsampling": self.prompt_upsampling,
            "seed": self.seed is not None,
        }
        return optional.get(field, field in _ALWAYS_TAKEN)


_KONTEXT_MODELS = ("flux-kontext-pro", "flux-kontext-max")
_GROK_MODELS = ("grok-4-1-image", "grok-4-2-image")
#: The image types the aggregators' upload APIs take.
UPLOAD_TYPES = frozenset({JPEG, PNG, WEBP, GIF})

_KONTEXT = ModelSpec(
    provider="toapis",
    model="flux-kontext-pro",
    sizes=("match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9", "9:21"),
    image_sizes=frozenset({"match_input_image"}),
    default_size="16:9",
    default_size_with_image="match_input_image",
    max_images=1,
    response_formats=("png", "jpeg"),
    safety_tolerance=(0, 6),
    prompt_upsampling=True,
    image_types=UPLOAD_TYPES,
    max_image_bytes=_UPLOAD_LIMITS["toapis"],
    wire_fields=frozenset(
        {"model", "prompt", "size", "image_urls", "client_business_id"}
        | {f"metadata.{name}" for name in ("response_format", "safety_tolerance", "prompt_upsampling")}
    ),
)

_GROK = ModelSpec(
    provider="toapis",
    model="grok-4-1-image",
    sizes=("1:1", "2:3", "3:2", "16:9", "9:16"),
    default_size="1:1",
    default_size_with_image="1:1",
    n_values=(1, 2, 4),
    default_n=1,
    max_images=5,
    max_prompt_chars=1000,
    image_types=frozenset({JPEG, PNG, WEBP}),
    max_image_bytes=10 * MIB,
    wire_fields=_KONTEXT.wire_fields | {"n"},
)


def _named(base: ModelSpec, models: tuple[str, ...]) -> dict[str, ModelSpec]:
    return {name: attrs.evolve(base, model=name) for name in models}


_APIMART_KONTEXT = attrs.evolve(
    _KONTEXT,
    provider="apimart",
    size_aliases={"auto": "match_input_image"},
    max_image_bytes=_UPLOAD_LIMITS["apimart"],
    # The options sit at the top level on apimart.
    wire_fields=frozenset(
        {"model", "prompt", "size", "image_urls", "response_format", "safety_tolerance", "prompt_upsampling"}
    ),
)

_BFL_KONTEXT = attrs.evolve(
    _KONTEXT,
    provider="bfl",
    ratio_range=((9, 21), (21, 9)),  # "aspect_ratio between 21:9 and 9:21"
    max_images=4,  # input_image + input_image_2..4 (the last three "experimental")
    # BFL gives no bound; JSON servers decode integers as 64-bit, so stay inside that.
    seed=(0, 2**63 - 1),
    # The formats BFL's examples use; GIF is not promised for inline images.
    image_types=frozenset({JPEG, PNG, WEBP}),
    max_image_bytes=_UPLOAD_LIMITS["bfl"],
    wire_fields=frozenset(
        {"prompt", "input_image", "input_image_2", "input_image_3", "input_image_4", "aspect_ratio"}
        | {"output_format", "seed", "safety_tolerance", "prompt_upsampling"}
    ),
)

_CATALOG: Mapping[str, Mapping[str, ModelSpec]] = MappingProxyType(
    {
        "toapis": {**_named(_KONTEXT, _KONTEXT_MODELS), **_named(_GROK, _GROK_MODELS)},
        "apimart": _named(_APIMART_KONTEXT, _KONTEXT_MODELS),
        "bfl": _named(_BFL_KONTEXT, _KONTEXT_MODELS),
    }
)


def _check_provider(provider: object) -> str:
    if not isinstance(provider, str) or provider not in _CATALOG:
        raise ConfigurationError(
            f"unknown provider {provider!r}; known providers: {', '.join(PROVIDERS)}"
        )
    return provider


def models_for(provider: str) -> tuple[str, ...]:
    """The models ``provider`` serves. Raises ConfigurationError for an unknown provider."""
    return tuple(_CATALOG[_check_provider(provider)])


def model_spec(provider: str, model: str) -> ModelSpec:
    """What ``model`` accepts on ``provider``.

    Raises ConfigurationError for an unknown provider and ValidationError (field ``"model"``)
    for a model the provider does not serve.
    """
    models = _CATALOG[_check_provider(provider)]
    spec = models.get(model) if isinstance(model, str) else None
    if spec is None:
        allowed = ", ".join(models)  # spelled out only for an error
        if not isinstance(model, str):
            raise ValidationError("model", model, allowed, reason="the model must be a str")
        raise ValidationError(
            "model", model, allowed, reason=f"{provider} does not serve this model"
        )
    return spec


def max_upload_bytes(provider: str) -> int:
    """The largest input image ``provider`` takes, in bytes (upload endpoint or inline base64)."""
    return _UPLOAD_LIMITS[_check_provider(provider)]
