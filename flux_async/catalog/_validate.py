"""``validate(request, provider)`` and its checks: a request against its model's :class:`ModelSpec`,
returned with the documented defaults filled in. No network, no clock, no aiohttp/anyio, nothing
from session, transport or scheduler; imports only ``flux_async.models``, ``flux_async.errors``
and the catalog's own modules. The catalog's one I/O is here: :func:`_check_local_image` looks
at local image files named in a request (``os.stat`` and the first few bytes, to sniff the format).

:func:`validate` runs once per job, so a check of a field left unset is skipped outright and
local files are looked at last. What it normalises is described in the package docstring.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from fractions import Fraction
from types import MappingProxyType

import attrs

from ..errors import ValidationError
from ..models import GenerationRequest
from ._images import SNIFF_BYTES, classify_image, error_value, sniff_image_type
from ._specs import MIB, ModelSpec, model_spec

__all__ = ["validate"]

#: Caller spellings of a response format -> the provider-neutral one.
_FORMAT_ALIASES: Mapping[str, str] = MappingProxyType({"jpg": "jpeg"})

#: The request fields a model may or may not take (``ModelSpec.takes``), in the order checked.
_OPTIONAL_FIELDS = ("n", "response_format", "safety_tolerance", "prompt_upsampling", "seed")

#: A free aspect ratio "W:H" (ASCII digits only: ``\d`` would also match other scripts' digits).
_RATIO = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")
# Fields of a provider's body that only the library may set (``extra`` may not).
_OWNED_BY_THE_LIBRARY = frozenset({"client_business_id"})
# An idempotency key travels as toapis' client_business_id and in a URL path: keep it plain.
_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


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
        if key in _OWNED_BY_THE_LIBRARY:
            # The library sends its own id there and looks a lost submit up by it: an id from
            # extra would replace it, the lookup would find nothing, and the job be paid twice.
            raise ValidationError(
                f"extra.{key}",
                extra[key],
                "no value: the library sets it from the request's idempotency_key",
                reason=f"{key} is owned by the library: pass GenerationRequest(idempotency_key=...) instead",
            )
        if spec.takes(key):
            # The field is validated; letting extra override it would undo that silently.
            reason = f"{key!r} is a request field for {spec.model}: set it there, not in extra"
            raise ValidationError("extra", key, allowed, reason=reason)


def _check_idempotency_key(key: object) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValidationError(
            "idempotency_key",
            key,
            "1 to 128 characters from A-Z a-z 0-9 and . _ : -",
            reason="not a usable idempotency key",
        )


def _check_local_image(spec: ModelSpec, image: str | os.PathLike[str] | bytes, field: str) -> None:
    """Size and format of a path or bytes image (the one place this module touches files)."""
    limit = spec.max_image_bytes
    types = ", ".join(sorted(spec.image_types))
    allowed = f"an image ({types}) of at most {limit // MIB} MiB ({limit} bytes)"
    shown = error_value(image)

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
        head = image[:SNIFF_BYTES]
    else:
        try:
            with open(image, "rb") as file:
                head = file.read(SNIFF_BYTES)
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
    first bytes only). No network. See :mod:`flux_async.catalog` for what is normalised.
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
            tuple(error_value(image) for image in images),
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
    if request.idempotency_key is not None:
        _check_idempotency_key(request.idempotency_key)
    if images:
        # Every image is classified before any file is looked at, so a bad URL costs no I/O.
        kinds = [classify_image(image, index=i) for i, image in enumerate(images)]
        for i, (image, kind) in enumerate(zip(images, kinds, strict=True)):
            if kind != "url":
                _check_local_image(spec, image, f"images[{i}]")
    if size == request.size and n == request.n and response_format == request.response_format:
        return request  # already normal: no copy
    return attrs.evolve(request, size=size, n=n, response_format=response_format)
