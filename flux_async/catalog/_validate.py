"""``validate(request, provider)`` and its checks: a request against its model's :class:`ModelSpec`,
returned with the documented defaults filled in. No network, no clock, no aiohttp/anyio, nothing
from session, transport or scheduler; imports only ``flux_async.models``, ``flux_async.errors``
and the catalog's own modules. The catalog's one I/O is here: :func:`_check_local_image` looks
at local image files named in a request (``os.stat`` and the first few bytes, to sniff the format).

:func:`validate` runs once per job, so a check of a field left unset is skipped outright and
local files are looked at last. What it normalises is described in the package docstring.
"""

from __future__ import annotations

import math
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
from ._specs import MIB, UPLOAD_TYPES, ModelSpec, max_upload_bytes, model_spec

__all__ = ["check_upload", "validate"]

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


#: What the full check found for a plain request (one that sets a model, a prompt and a size or
#: none, and nothing else), by (provider, model, size): the model's spec, the normal size and the
#: ``n`` to send. Catalog data, so it never goes stale; bounded, because a size is free text.
_PLAIN: dict[tuple[str, str, str | None], tuple[ModelSpec, str, int | None]] = {}
_PLAIN_MOST = 512


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
    cap = spec.max_prompt_bytes
    if (
        isinstance(prompt, str)
        and len(prompt) <= cap  # first: nothing below scans a huge prompt
        and prompt
        and (limit is None or len(prompt) <= limit)
        and prompt.isascii()
        and not prompt.isspace()
    ):
        return  # the common case: plain text of a sane length (ASCII always encodes, 1 byte each)
    chars = f" of at most {limit} characters and" if limit else " of at most"
    allowed = f"a non-empty str{chars} {cap} bytes of UTF-8"
    if not isinstance(prompt, str):
        raise ValidationError("prompt", prompt, allowed, reason="the prompt must be a str")
    if limit is not None and len(prompt) > limit:
        reason = f"{len(prompt)} characters is over {spec.model}'s limit of {limit}"
        raise ValidationError("prompt", prompt, allowed, reason=reason)
    over = f"is over the limit of {cap} bytes of UTF-8 for a prompt to {spec.model} on {spec.provider}"
    if len(prompt) > cap:  # UTF-8 takes at least a byte a character: refused without encoding it
        raise ValidationError("prompt", prompt, allowed, reason=f"{len(prompt)} characters {over}")
    if not prompt.strip():
        raise ValidationError("prompt", prompt, allowed, reason="the prompt is empty")
    try:
        size = len(prompt.encode("utf-8"))
    except UnicodeEncodeError:
        reason = "the prompt holds characters that cannot be sent as UTF-8 (lone surrogates)"
        raise ValidationError("prompt", prompt, allowed, reason=reason) from None
    if size > cap:
        raise ValidationError("prompt", prompt, allowed, reason=f"{size} bytes {over}")


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
    allowed = "a mapping with str keys and JSON values, for options this library does not know"
    if not isinstance(extra, Mapping):
        raise ValidationError("extra", extra, allowed, reason="extra must be a mapping")
    for key, value in extra.items():
        if not isinstance(key, str):
            raise ValidationError(f"extra.{key!r}", key, allowed, reason="extra's keys must be str")
        field = f"extra.{key}"
        if key in _OWNED_BY_THE_LIBRARY:
            # The library sends its own id there and looks a lost submit up by it: an id from
            # extra would replace it, the lookup would find nothing, and the job be paid twice.
            raise ValidationError(
                field,
                value,
                "no value: the library sets it from the request's idempotency_key",
                reason=f"{key} is owned by the library: pass GenerationRequest(idempotency_key=...) instead",
            )
        if spec.takes(key):
            # The field is validated; letting extra override it would undo that silently.
            reason = f"{key!r} is a request field for {spec.model}: set it there, not in extra"
            raise ValidationError(field, value, allowed, reason=reason)
        _check_wire_field(spec, field, key, value, allowed)
        _check_json(field, value, allowed, 0)


def _check_wire_field(spec: ModelSpec, field: str, key: str, value: object, allowed: str) -> None:
    """Refuse a key of ``extra`` that names a body field the library writes from the request
    (in the provider's spelling: ``image_urls``, BFL's ``aspect_ratio``...): it would replace
    a value that was checked, or one the caller did not mean to change."""
    where = f"{spec.provider}'s {key!r}"
    if key in spec.wire_fields:
        reason = f"{where} is written by the library from the request's fields: set those instead"
        raise ValidationError(field, value, allowed, reason=reason)
    nested = [name for name in spec.wire_fields if name.startswith(f"{key}.")]
    if not nested:
        return
    if not isinstance(value, Mapping):
        # An object the library fills (toapis' metadata) would be replaced whole.
        reason = f"{where} is an object the library fills: give extra options in it as a mapping"
        raise ValidationError(field, value, allowed, reason=reason)
    for name in nested:
        if name.partition(".")[2] in value:
            reason = f"{spec.provider}'s {name!r} is written by the library from the request's fields"
            raise ValidationError(f"extra.{name}", value, allowed, reason=reason)


#: How deep ``extra``'s values may nest (a value that holds itself would never end).
_MAX_JSON_DEPTH = 32
#: Integers this wide always convert to text (Python limits the digits it writes out).
_MAX_INT_BITS = 1024


def _check_json(field: str, value: object, allowed: str, depth: int) -> None:
    """``value`` must be JSON: None, bool, str, a 64-bit integer, a finite float, a list or
    tuple of JSON values, or a mapping from str to JSON values."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            try:
                str(value)
            except ValueError:  # more digits than Python will write out
                raise ValidationError(field, value, allowed, reason="the integer is too long to write as JSON") from None
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(field, value, allowed, reason=f"{value!r} is not a JSON number")
        return
    if depth >= _MAX_JSON_DEPTH:
        raise ValidationError(field, value, allowed, reason=f"nested more than {_MAX_JSON_DEPTH} levels deep")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{field}.{key!r}", key, allowed, reason="JSON object keys must be str")
            _check_json(f"{field}.{key}", item, allowed, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(f"{field}[{index}]", item, allowed, depth + 1)
        return
    kind = type(value).__name__
    raise ValidationError(field, error_value(value), allowed, reason=f"not a JSON value (a {kind})")


def _check_idempotency_key(key: object) -> None:
    # Not only dots: on toapis the key goes into a URL path to look a lost submit up.
    if not isinstance(key, str) or not _KEY.fullmatch(key) or not key.strip("."):
        raise ValidationError(
            "idempotency_key",
            key,
            "1 to 128 characters from A-Z a-z 0-9 and . _ : -, not only dots",
            reason="not a usable idempotency key",
        )


def _check_local_image(spec: ModelSpec, image: str | os.PathLike[str] | bytes, field: str) -> None:
    """Size and format of a path or bytes image of a request."""
    where = f"{spec.model} on {spec.provider}"
    limit_of = f"{spec.provider}'s limit for {spec.model}"
    _check_image_file(image, field, limit=spec.max_image_bytes, types=spec.image_types, where=where, limit_of=limit_of)


def check_upload(provider: str, source: object) -> None:
    """What ``Session.upload`` is given: a local image (path or bytes) ``provider``'s upload
    API takes, else ValidationError naming ``source``. Looks at the file like :func:`validate`
    (``os.stat`` and the first bytes), never further."""
    allowed = "a local image: a path (str or os.PathLike) or bytes"
    if isinstance(source, str) and ("://" in source or source[:5].lower() == "data:"):
        raise ValidationError("source", source, allowed, reason="a URL needs no upload: pass it in images as it is")
    try:
        classify_image(source)  # the type, an empty string, a NUL byte in a path
    except ValidationError as exc:
        raise ValidationError("source", exc.value, allowed, reason=exc.reason) from None
    if isinstance(source, (str, bytes, os.PathLike)):  # always, once classify_image passed it
        limit = max_upload_bytes(provider)
        where = f"{provider}'s upload"
        _check_image_file(source, "source", limit=limit, types=UPLOAD_TYPES, where=where, limit_of=f"{where} limit")


def _check_image_file(
    image: str | os.PathLike[str] | bytes, field: str, *, limit: int, types: frozenset[str], where: str, limit_of: str
) -> None:
    """Size and format of a path or bytes image (the one place this module touches files)."""
    allowed = f"an image ({', '.join(sorted(types))}) of at most {limit // MIB} MiB ({limit} bytes)"
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
        except (OSError, ValueError) as exc:  # ValueError: a name no file can have
            raise refuse(f"cannot stat: {getattr(exc, 'strerror', None) or exc}") from None
        if not stat.S_ISREG(info.st_mode):
            # Never open it: a FIFO or device would block or stream forever.
            raise refuse("not a regular file")
        size = info.st_size
    if size == 0:
        raise refuse("the image is empty")
    if size > limit:
        raise refuse(f"{size} bytes is over {limit_of}")
    if isinstance(image, bytes):
        head = image[:SNIFF_BYTES]
    else:
        try:
            with open(image, "rb") as file:
                head = file.read(SNIFF_BYTES)
        except OSError as exc:
            raise refuse(f"cannot read: {exc.strerror}") from None
    mime = sniff_image_type(head)
    if mime not in types:
        found = f"the content is {mime}" if mime else "the content is not a recognised image"
        raise refuse(f"{found}, which {where} does not take")


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
    # Read one by one only when one is set (a request usually sets none of them).
    unset = (
        request.n is None
        and request.response_format is None
        and request.safety_tolerance is None
        and request.prompt_upsampling is None
        and request.seed is None
    )
    model, size = request.model, request.size
    # A plain request (a model, a prompt, a size or none, nothing else) like one checked before
    # needs only its prompt checked: the rest of the answer is known (see _PLAIN).
    plain = (
        unset
        and not request.images
        and not request.extra
        and request.idempotency_key is None
        and type(provider) is str
        and type(model) is str
        and (size is None or type(size) is str)
    )
    if plain:
        known = _PLAIN.get((provider, model, size))
        if known is not None:
            spec, normal_size, n = known
            _check_prompt(spec, request.prompt)
            if normal_size == size and n is None:
                return request
            return attrs.evolve(request, size=normal_size, n=n)
    spec = model_spec(provider, model)
    _check_prompt(spec, request.prompt)
    for field in () if unset else _OPTIONAL_FIELDS:
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
    normal_size = _check_size(spec, size, has_image=bool(images))
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
    if plain and len(_PLAIN) < _PLAIN_MOST:
        _PLAIN[(provider, model, size)] = (spec, normal_size, n)
    if normal_size == size and n == request.n and response_format == request.response_format:
        return request  # already normal: no copy
    return attrs.evolve(request, size=normal_size, n=n, response_format=response_format)
