"""What each model accepts on each provider, as data, and the rules that check a request against it.

The tables below transcribe the providers' documentation; :func:`validate` checks a :class:`GenerationRequest`
against them before anything is sent and returns a copy with the documented defaults filled in.
Pure: no network, no clock, no aiohttp/anyio. The only I/O is looking at local image files named
in a request (``os.stat`` and the first few bytes, to sniff the format). Imports only
``flux_async.models`` and ``flux_async.errors``.

Normalisation (what the returned copy holds):
- ``size``: the documented default when not given (Kontext: ``16:9``, or ``match_input_image``
  with an input image; Grok: ``1:1``); apimart's ``auto`` becomes ``match_input_image``, which it
  documents as the same thing, so a validated request means the same on every provider.
  On BFL the Kontext defaults are filled too (BFL documents none) so that switching provider does
  not change the output's shape; BFL's codec omits ``aspect_ratio`` for ``match_input_image``.
- ``n``: ``1`` on Grok when not given; never set on Kontext.
- ``response_format``: ``"png"`` or ``"jpeg"`` (``"jpg"`` is accepted); codecs map it to the
  provider's spelling. Left None when not given, like ``safety_tolerance`` and
  ``prompt_upsampling``: the provider's own default then applies.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from fractions import Fraction
from types import MappingProxyType
from typing import Literal, TypeAlias
from urllib.parse import urlsplit

import attrs

from .errors import ConfigurationError, ValidationError
from .models import GenerationRequest

__all__ = [
    "PROVIDERS",
    "ImageKind",
    "ModelSpec",
    "classify_image",
    "max_upload_bytes",
    "model_spec",
    "models_for",
    "sniff_image_type",
    "validate",
]

#: The providers this library speaks to.
PROVIDERS: tuple[str, ...] = ("toapis", "apimart", "bfl")

#: How an input image reaches the provider: sent as a URL, or read from a path / bytes and uploaded.
ImageKind: TypeAlias = Literal["url", "path", "bytes"]

_MIB = 1024 * 1024

#: Largest image each provider takes. The aggregators document their upload cap ("10MB", "20MB",
#: read as MiB as upload servers usually do). BFL takes the image inline as base64 and documents no
#: cap; 20 MiB is what BFL-compatible gateways document per ``input_image``, and with base64's 4/3
#: growth it already makes a ~27 MB JSON body, so we do not go higher.
_UPLOAD_LIMITS: Mapping[str, int] = MappingProxyType(
    {"toapis": 10 * _MIB, "apimart": 20 * _MIB, "bfl": 20 * _MIB}
)

_JPEG, _PNG, _WEBP, _GIF = "image/jpeg", "image/png", "image/webp", "image/gif"

#: Magic bytes: (mime type, ((offset, bytes), ...)); every part must match.
_MAGIC: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    (_PNG, ((0, b"\x89PNG\r\n\x1a\n"),)),
    (_JPEG, ((0, b"\xff\xd8\xff"),)),
    (_WEBP, ((0, b"RIFF"), (8, b"WEBP"))),
    (_GIF, ((0, b"GIF87a"),)),
    (_GIF, ((0, b"GIF89a"),)),
)
_SNIFF_BYTES = 12

#: Caller spellings of a response format -> the provider-neutral one.
_FORMAT_ALIASES: Mapping[str, str] = MappingProxyType({"jpg": "jpeg"})

#: Request fields every model takes; the optional ones are answered by ``ModelSpec.takes``.
_ALWAYS_TAKEN = frozenset({"model", "prompt", "size", "images"})
_OPTIONAL_FIELDS = ("n", "response_format", "safety_tolerance", "prompt_upsampling", "seed")

#: A free aspect ratio "W:H" (ASCII digits only: ``\d`` would also match other scripts' digits).
_RATIO = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")


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
    response_formats: tuple[str, ...] = ()
    safety_tolerance: tuple[int, int] | None = None
    prompt_upsampling: bool = False
    seed: tuple[int, int] | None = None
    image_types: frozenset[str]
    max_image_bytes: int

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
_UPLOAD_TYPES = frozenset({_JPEG, _PNG, _WEBP, _GIF})

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
    image_types=_UPLOAD_TYPES,
    max_image_bytes=_UPLOAD_LIMITS["toapis"],
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
    image_types=frozenset({_JPEG, _PNG, _WEBP}),
    max_image_bytes=10 * _MIB,
)


def _named(base: ModelSpec, models: tuple[str, ...]) -> dict[str, ModelSpec]:
    return {name: attrs.evolve(base, model=name) for name in models}


_APIMART_KONTEXT = attrs.evolve(
    _KONTEXT,
    provider="apimart",
    size_aliases={"auto": "match_input_image"},
    max_image_bytes=_UPLOAD_LIMITS["apimart"],
)

_BFL_KONTEXT = attrs.evolve(
    _KONTEXT,
    provider="bfl",
    ratio_range=((9, 21), (21, 9)),  # "aspect_ratio between 21:9 and 9:21"
    max_images=4,  # input_image + input_image_2..4 (the last three "experimental")
    # BFL gives no bound; JSON servers decode integers as 64-bit, so stay inside that.
    seed=(0, 2**63 - 1),
    # The formats BFL's examples use; GIF is not promised for inline images.
    image_types=frozenset({_JPEG, _PNG, _WEBP}),
    max_image_bytes=_UPLOAD_LIMITS["bfl"],
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


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type of an image from its first bytes (PNG, JPEG, WebP, GIF), or None."""
    for mime, parts in _MAGIC:
        if all(data.startswith(magic, offset) for offset, magic in parts):
            return mime
    return None


def _shown(value: object) -> object:
    """What an error keeps of an image: bytes are summarised, never held or repr'd whole."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return value


_IMAGE_ALLOWED = "an http(s) URL, a local file path (str or os.PathLike) or bytes"


def classify_image(value: object, *, index: int = 0) -> ImageKind:
    """Whether an input image is a URL (sent as is), a local path or bytes (both uploaded).

    A str containing ``://`` or starting with ``data:`` is a URL and must be http(s) with a
    host; any other str, or an ``os.PathLike``, is a path. Raises ValidationError on
    ``images[index]`` for anything else (data URIs, ftp://, file://, other types).
    """
    field = f"images[{index}]"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, os.PathLike):
        return "path"
    if not isinstance(value, str):
        reason = f"unsupported image type {type(value).__name__}"
        if isinstance(value, bytearray | memoryview):
            reason += "; pass bytes(...)"
        raise ValidationError(field, _shown(value), _IMAGE_ALLOWED, reason=reason)
    if not value:
        raise ValidationError(field, value, _IMAGE_ALLOWED, reason="empty string")
    if value[:5].lower() == "data:":
        raise ValidationError(
            field,
            value,
            _IMAGE_ALLOWED,
            reason="base64/data URIs are not accepted; pass bytes or a path",
        )
    if "://" not in value:
        return "path"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValidationError(
            field, value, _IMAGE_ALLOWED, reason=f"malformed URL: {exc}"
        ) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError(
            field,
            value,
            _IMAGE_ALLOWED,
            reason=f"only http(s) URLs are accepted (scheme {parts.scheme!r}); pass a local file "
            "as a path or bytes (a file whose name contains '://' as a pathlib.Path)",
        )
    if not parts.hostname:
        raise ValidationError(field, value, _IMAGE_ALLOWED, reason="the URL has no host")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValidationError(
            field,
            value,
            _IMAGE_ALLOWED,
            reason="the URL contains whitespace or control characters (percent-encode them)",
        )
    return "url"


def _sizes_text(spec: ModelSpec, *, has_image: bool) -> str:
    """The sizes a request may use, as an error shows them."""
    spellings = (*spec.sizes, *spec.size_aliases)
    need_image = [s for s in spellings if spec.size_aliases.get(s, s) in spec.image_sizes]
    text = ", ".join(s for s in spellings if has_image or s not in need_image)
    if spec.ratio_range is not None:
        (lo_w, lo_h), (hi_w, hi_h) = spec.ratio_range
        text += f", or any W:H from {lo_w}:{lo_h} to {hi_w}:{hi_h}"
    if need_image and not has_image:
        text += f" ({' and '.join(need_image)} only with an input image)"
    return text


def _in_ratio_range(spec: ModelSpec, size: str) -> bool:
    match = _RATIO.fullmatch(size)
    if spec.ratio_range is None or match is None:
        return False
    lo, hi = (Fraction(*bound) for bound in spec.ratio_range)
    return lo <= Fraction(int(match[1]), int(match[2])) <= hi


def _check_size(spec: ModelSpec, size: object, *, has_image: bool) -> str:
    if size is None:
        return spec.default_size_with_image if has_image else spec.default_size
    if not isinstance(size, str):
        reason = "the size must be a str"
    else:
        normal = spec.size_aliases.get(size, size)
        if normal in spec.image_sizes and not has_image:
            reason = f"{size} needs an input image"
        elif normal not in spec.sizes and not _in_ratio_range(spec, normal):
            reason = f"{spec.model} on {spec.provider} does not take this size"
        else:
            return normal
    # The list of allowed sizes is spelled out only for an error.
    raise ValidationError("size", size, _sizes_text(spec, has_image=has_image), reason=reason)


def _check_prompt(spec: ModelSpec, prompt: object) -> None:
    limit = spec.max_prompt_chars
    if (
        isinstance(prompt, str)
        and prompt
        and (limit is None or len(prompt) <= limit)
        and prompt.isascii()
        and not prompt.isspace()
    ):
        return  # the common case: plain text of a sane length (ASCII always encodes)
    allowed = "a non-empty str" + (f" of at most {limit} characters" if limit else "")
    if not isinstance(prompt, str):
        raise ValidationError("prompt", prompt, allowed, reason="the prompt must be a str")
    if not prompt.strip():
        raise ValidationError("prompt", prompt, allowed, reason="the prompt is empty")
    if limit is not None and len(prompt) > limit:
        reason = f"{len(prompt)} characters is over {spec.model}'s limit"
        raise ValidationError("prompt", prompt, allowed, reason=reason)
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        reason = "the prompt holds characters that cannot be sent as UTF-8 (lone surrogates)"
        raise ValidationError("prompt", prompt, allowed, reason=reason) from None


def _check_int(field: str, value: object, allowed_values: str, ok: bool) -> None:
    """``ok`` says whether an integer ``value`` is allowed; bools and non-ints never are."""
    if isinstance(value, bool) or not isinstance(value, int):
        kind = type(value).__name__
        raise ValidationError(
            field, value, allowed_values, reason=f"must be an integer, not {kind}"
        )
    if not ok:
        raise ValidationError(field, value, allowed_values, reason="out of range")


def _check_range(field: str, value: object, bounds: tuple[int, int] | None) -> None:
    if value is None or bounds is None:
        return
    lo, hi = bounds
    in_range = isinstance(value, int) and lo <= value <= hi
    _check_int(field, value, f"an integer from {lo} to {hi}", in_range)


def _check_format(spec: ModelSpec, value: object) -> str | None:
    if value is None:
        return None
    normal = _FORMAT_ALIASES.get(value, value) if isinstance(value, str) else None
    if normal not in spec.response_formats:
        spellings = [s for s, f in _FORMAT_ALIASES.items() if f in spec.response_formats]
        allowed = ", ".join((*spec.response_formats, *spellings))
        raise ValidationError("response_format", value, allowed, reason="unknown response format")
    return normal


def _check_extra(spec: ModelSpec, extra: object) -> None:
    allowed = "a mapping with str keys, for options this library does not know"
    if not isinstance(extra, Mapping):
        raise ValidationError("extra", extra, allowed, reason="extra must be a mapping")
    for key in extra:
        if not isinstance(key, str):
            raise ValidationError("extra", key, allowed, reason="extra's keys must be str")
        if spec.takes(key):
            # The field is validated; letting extra override it would undo that silently.
            reason = f"{key!r} is a request field for {spec.model}: set it there, not in extra"
            raise ValidationError("extra", key, allowed, reason=reason)


def _check_local_image(spec: ModelSpec, image: str | os.PathLike[str] | bytes, field: str) -> None:
    """Size and format of a path or bytes image (the one place this module touches files)."""
    limit = spec.max_image_bytes
    types = ", ".join(sorted(spec.image_types))
    allowed = f"an image ({types}) of at most {limit // _MIB} MiB ({limit} bytes)"
    shown = _shown(image)

    def refuse(reason: str) -> ValidationError:
        return ValidationError(field, shown, allowed, reason=reason)

    if isinstance(image, bytes):
        size = len(image)
    else:
        try:
            info = os.stat(image)
        except FileNotFoundError:
            url_hint = "" if isinstance(image, os.PathLike) else " (for a URL, include https://)"
            raise refuse(f"no such file{url_hint}") from None
        except OSError as exc:
            raise refuse(f"cannot stat: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            # Never open it: a FIFO or device would block or stream forever.
            raise refuse("not a regular file")
        size = info.st_size
    if size == 0:
        raise refuse("the image is empty")
    if size > limit:
        raise refuse(f"{size} bytes is over {spec.provider}'s limit for {spec.model}")
    if isinstance(image, bytes):
        head = image[:_SNIFF_BYTES]
    else:
        try:
            with open(image, "rb") as file:
                head = file.read(_SNIFF_BYTES)
        except OSError as exc:
            raise refuse(f"cannot read: {exc.strerror}") from None
    mime = sniff_image_type(head)
    if mime not in spec.image_types:
        found = f"the content is {mime}" if mime else "the content is not a recognised image"
        raise refuse(f"{found}, which {spec.model} on {spec.provider} does not take")


def validate(request: GenerationRequest, provider: str) -> GenerationRequest:
    """Check ``request`` against what its model accepts on ``provider``; return it normalised.

    Raises ConfigurationError for an unknown provider and ValidationError naming the first bad
    field otherwise. Cheap checks run first; local image files are looked at last (stat and the
    first bytes only). No network. See the module docstring for what is normalised.
    """
    if not isinstance(request, GenerationRequest):
        raise ValidationError(
            "request", request, "a flux_async.GenerationRequest", reason="not a GenerationRequest"
        )
    spec = model_spec(provider, request.model)
    _check_prompt(spec, request.prompt)
    for field in _OPTIONAL_FIELDS:
        value = getattr(request, field)
        if value is not None and not spec.takes(field):
            where = f"{spec.model} on {spec.provider}"
            raise ValidationError(
                field, value, f"None (not sent to {where})", reason=f"{where} does not take {field}"
            )
    images = request.images
    if len(images) > spec.max_images:
        raise ValidationError(
            "images",
            tuple(_shown(image) for image in images),
            f"at most {spec.max_images} image(s)",
            reason=f"{len(images)} images is too many for {spec.model} on {spec.provider}",
        )
    size = _check_size(spec, request.size, has_image=bool(images))
    n = request.n
    if spec.n_values is not None:
        if n is None:
            n = spec.default_n
        _check_int("n", n, f"one of {', '.join(map(str, spec.n_values))}", n in spec.n_values)
    # (Each check below is skipped, call and all, for a field left unset: the common case.)
    response_format = request.response_format
    if response_format is not None:
        response_format = _check_format(spec, response_format)
    if request.safety_tolerance is not None:
        _check_range("safety_tolerance", request.safety_tolerance, spec.safety_tolerance)
    if request.prompt_upsampling is not None and not isinstance(request.prompt_upsampling, bool):
        raise ValidationError(
            "prompt_upsampling", request.prompt_upsampling, "True or False", reason="must be a bool"
        )
    if request.seed is not None:
        _check_range("seed", request.seed, spec.seed)
    if request.extra:
        _check_extra(spec, request.extra)
    if images:
        # Every image is classified before any file is looked at, so a bad URL costs no I/O.
        kinds = [classify_image(image, index=i) for i, image in enumerate(images)]
        for i, (image, kind) in enumerate(zip(images, kinds, strict=True)):
            if kind != "url":
                _check_local_image(spec, image, f"images[{i}]")
    if size == request.size and n == request.n and response_format == request.response_format:
        return request  # already normal: no copy
    return attrs.evolve(request, size=size, n=n, response_format=response_format)
