"""Tests of flux_async.catalog: the tables, validate's rules and defaults, and the image checks.

Pure tests (no network; files only under tmp_path). Every refusal is checked for the field it
names, the value it shows and what it says is allowed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux_async import catalog
from flux_async.catalog import (
    PROVIDERS,
    ModelSpec,
    classify_image,
    max_upload_bytes,
    model_spec,
    models_for,
    sniff_image_type,
    validate,
)
from flux_async.catalog import _validate as validate_module
from flux_async.errors import ConfigurationError, ValidationError
from flux_async.models import GenerationRequest

MIB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + bytes(22)
JPEG = b"\xff\xd8\xff\xe0" + bytes(26)
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(14)
GIF = b"GIF89a" + bytes(24)
URL = "https://example.com/in.png"
URL2 = "http://example.org/other.jpg"
K, KM = "flux-kontext-pro", "flux-kontext-max"
G, G2 = "grok-4-1-image", "grok-4-2-image"
PAIRS = [(provider, model) for provider in PROVIDERS for model in models_for(provider)]
OPTIONAL = ("n", "response_format", "safety_tolerance", "prompt_upsampling", "seed")


def req(**kwargs: Any) -> GenerationRequest:
    kwargs.setdefault("model", K)
    kwargs.setdefault("prompt", "a red fox")
    return GenerationRequest(**kwargs)


@contextlib.contextmanager
def no_io(*, files: bool = False) -> Iterator[None]:
    """Fail the test if the code under it opens a connection (or, unless ``files``, a file)."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"I/O during validation: {args!r}")

    targets = [(socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "getaddrinfo")]
    if not files:
        targets += [(os, "stat"), (os, "open"), (validate_module, "open")]
    with contextlib.ExitStack() as stack:
        for owner, name in targets:
            stack.enter_context(mock.patch.object(owner, name, forbidden, create=True))
        yield


def test_the_no_io_guard_works(tmp_path: Path) -> None:
    with no_io(), pytest.raises(AssertionError, match="I/O during validation"):
        socket.create_connection(("127.0.0.1", 9))
    with no_io(), pytest.raises(AssertionError, match="I/O during validation"):
        validate(req(images=[tmp_path / "in.png"]), "bfl")


# --- the tables ----------------------------------------------------------------------------


def test_providers_and_models() -> None:
    assert PROVIDERS == ("toapis", "apimart", "bfl")
    assert models_for("toapis") == (K, KM, G, G2)
    assert models_for("apimart") == (K, KM)
    assert models_for("bfl") == (K, KM)


def test_public_names_exist() -> None:
    assert len(set(catalog.__all__)) == len(catalog.__all__)
    for name in catalog.__all__:
        assert hasattr(catalog, name)


@pytest.mark.parametrize(
    ("provider", "limit"), [("toapis", 10 * MIB), ("apimart", 20 * MIB), ("bfl", 20 * MIB)]
)
def test_max_upload_bytes(provider: str, limit: int) -> None:
    assert max_upload_bytes(provider) == limit


@pytest.mark.parametrize("call", [models_for, max_upload_bytes, lambda p: model_spec(p, K)])
@pytest.mark.parametrize("provider", ["replicate", "TOAPIS", "", None])
def test_unknown_provider_is_a_configuration_error(call: Any, provider: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        call(provider)
    assert repr(provider) in str(info.value)
    assert "toapis, apimart, bfl" in str(info.value)


def test_validate_with_unknown_provider_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="toapis, apimart, bfl"):
        validate(req(), "fal")


@pytest.mark.parametrize(
    ("provider", "model", "listed"),
    [
        (
            "toapis",
            "flux-pro",
            "flux-kontext-pro, flux-kontext-max, grok-4-1-image, grok-4-2-image",
        ),
        ("bfl", G, "flux-kontext-pro, flux-kontext-max"),
        ("apimart", G2, "flux-kontext-pro, flux-kontext-max"),
        ("apimart", ["flux-kontext-pro"], "flux-kontext-pro, flux-kontext-max"),
    ],
)
def test_unknown_model_is_a_validation_error_listing_models(
    provider: str, model: Any, listed: str
) -> None:
    with pytest.raises(ValidationError) as info:
        model_spec(provider, model)
    assert info.value.field == "model"
    assert info.value.value == model
    assert info.value.allowed == listed
    assert repr(model) in str(info.value)


@pytest.mark.parametrize(("provider", "model"), PAIRS)
def test_every_spec_is_consistent(provider: str, model: str) -> None:
    spec = model_spec(provider, model)
    assert (spec.provider, spec.model) == (provider, model)
    assert spec.default_size in spec.sizes
    assert spec.default_size not in spec.image_sizes
    assert spec.default_size_with_image in spec.sizes
    assert spec.image_sizes <= set(spec.sizes)
    assert set(spec.size_aliases.values()) <= set(spec.sizes)
    assert (spec.n_values is None) == (spec.default_n is None)
    assert spec.n_values is None or spec.default_n in spec.n_values
    assert set(spec.response_formats) <= {"png", "jpeg"}
    assert spec.image_types <= {"image/png", "image/jpeg", "image/webp", "image/gif"}
    assert 0 < spec.max_image_bytes <= max_upload_bytes(provider)
    assert spec.max_images >= 1


@pytest.mark.parametrize(
    ("provider", "model", "max_images", "n_values", "max_prompt", "formats", "tolerance", "seed"),
    [
        *[("toapis", m, 1, None, None, ("png", "jpeg"), (0, 6), None) for m in (K, KM)],
        *[("apimart", m, 1, None, None, ("png", "jpeg"), (0, 6), None) for m in (K, KM)],
        *[("bfl", m, 4, None, None, ("png", "jpeg"), (0, 6), (0, 2**63 - 1)) for m in (K, KM)],
        *[("toapis", m, 5, (1, 2, 4), 1000, (), None, None) for m in (G, G2)],
    ],
)
def test_spec_values_follow_the_provider_docs(
    provider: str,
    model: str,
    max_images: int,
    n_values: tuple[int, ...] | None,
    max_prompt: int | None,
    formats: tuple[str, ...],
    tolerance: tuple[int, int] | None,
    seed: tuple[int, int] | None,
) -> None:
    spec = model_spec(provider, model)
    assert spec.max_images == max_images
    assert spec.n_values == n_values
    assert spec.max_prompt_chars == max_prompt
    assert spec.response_formats == formats
    assert spec.safety_tolerance == tolerance
    assert spec.prompt_upsampling is (tolerance is not None)
    assert spec.seed == seed


def test_specs_are_frozen() -> None:
    spec = model_spec("apimart", K)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.max_images = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.size_aliases["auto"] = "1:1"  # type: ignore[index]
    assert isinstance(spec, ModelSpec)
    assert hash(spec) == hash(model_spec("apimart", K))


# --- defaults and normalisation --------------------------------------------------------------

KONTEXT_PAIRS = [(p, m) for p in PROVIDERS for m in (K, KM)]


@pytest.mark.parametrize(
    ("provider", "model", "images", "size", "n"),
    [
        *[(p, m, (), "16:9", None) for p, m in KONTEXT_PAIRS],
        *[(p, m, (URL,), "match_input_image", None) for p, m in KONTEXT_PAIRS],
        *[(p, m, (PNG,), "match_input_image", None) for p, m in KONTEXT_PAIRS],
        *[("toapis", m, (), "1:1", 1) for m in (G, G2)],
        *[("toapis", m, (URL, URL2), "1:1", 1) for m in (G, G2)],
    ],
)
def test_defaults(
    provider: str, model: str, images: tuple[Any, ...], size: str, n: int | None
) -> None:
    request = req(model=model, images=images)
    with no_io():
        out = validate(request, provider)
    assert (out.size, out.n) == (size, n)
    # Options without a documented client-side default stay unset: the provider's default applies.
    unset = (out.response_format, out.safety_tolerance, out.prompt_upsampling, out.seed)
    assert unset == (None, None, None, None)
    assert attrs.evolve(out, size=None, n=None) == request


@pytest.mark.parametrize(
    ("provider", "given", "stored"),
    [(p, "png", "png") for p in PROVIDERS]
    + [(p, "jpeg", "jpeg") for p in PROVIDERS]
    + [(p, "jpg", "jpeg") for p in PROVIDERS],
)
def test_response_format_is_stored_provider_neutral(provider: str, given: str, stored: str) -> None:
    assert validate(req(response_format=given), provider).response_format == stored


def test_apimart_auto_becomes_match_input_image() -> None:
    out = validate(req(size="auto", images=[URL]), "apimart")
    assert out.size == "match_input_image"
    # ...so the validated request means the same on every Kontext provider.
    for provider in PROVIDERS:
        assert validate(out, provider) == out


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", ["1:1", "21:9", "9:21", "3:2"])
def test_explicit_size_is_kept(provider: str, size: str) -> None:
    assert validate(req(size=size, images=[URL]), provider).size == size


@pytest.mark.parametrize("size", ["21:9", "9:21", "7:3", "3:7", "5:4", "4:5", "1:2", "1920:1080"])
def test_bfl_takes_any_ratio_between_9_21_and_21_9(size: str) -> None:
    assert validate(req(size=size), "bfl").size == size


@pytest.mark.parametrize("n", [1, 2, 4])
def test_grok_n_is_kept(n: int) -> None:
    assert validate(req(model=G, n=n), "toapis").n == n


def test_limits_are_inclusive() -> None:
    assert validate(req(model=G, prompt="x" * 1000), "toapis").prompt == "x" * 1000
    for tolerance in (0, 6):
        assert validate(req(safety_tolerance=tolerance), "apimart").safety_tolerance == tolerance
    for seed in (0, 2**63 - 1):
        assert validate(req(seed=seed), "bfl").seed == seed
    assert validate(req(model=G, images=[URL] * 5), "toapis").images == (URL,) * 5
    assert validate(req(images=[URL, PNG, JPEG, WEBP]), "bfl").images == (URL, PNG, JPEG, WEBP)


def test_options_are_passed_when_valid() -> None:
    out = validate(req(safety_tolerance=3, prompt_upsampling=False, seed=42), "bfl")
    assert (out.safety_tolerance, out.prompt_upsampling, out.seed) == (3, False, 42)


@pytest.mark.parametrize(
    ("provider", "extra"),
    [
        ("toapis", {"callback_url": "https://x/cb"}),
        # seed is not documented on toapis: the library does not send it, extra may.
        ("toapis", {"seed": 7}),
        ("toapis", {"metadata": {"anything": [1, 2]}}),
        ("bfl", {"webhook_url": "https://x/hook", "webhook_secret": "s"}),
        ("apimart", {"webhook": "https://x"}),
    ],
)
def test_extra_passes_through_unvalidated(provider: str, extra: dict[str, Any]) -> None:
    assert dict(validate(req(extra=extra), provider).extra) == extra


# --- one table of refusals -------------------------------------------------------------------


class Bad(NamedTuple):
    id: str
    provider: str
    kwargs: dict[str, Any]
    field: str
    shows: str  # how the message shows the value given
    allows: str  # part of what the message says is allowed


NOT_A_PNG = b"hello, this is not an image"
CASES = [
    # model
    Bad("model-unknown", "toapis", {"model": "flux-pro"}, "model", "'flux-pro'", "flux-kontext-pro, flux-kontext-max, grok-4-1-image"),
    Bad("model-grok-on-bfl", "bfl", {"model": G}, "model", "'grok-4-1-image'", "flux-kontext-pro, flux-kontext-max"),
    Bad("model-grok-on-apimart", "apimart", {"model": G2}, "model", "'grok-4-2-image'", "flux-kontext-max"),
    Bad("model-wrong-case", "toapis", {"model": "FLUX-KONTEXT-PRO"}, "model", "'FLUX-KONTEXT-PRO'", "flux-kontext-pro"),
    Bad("model-not-str", "toapis", {"model": 5}, "model", "got 5", "flux-kontext-pro"),
    Bad("model-none", "apimart", {"model": None}, "model", "got None", "flux-kontext-pro"),
    # prompt
    Bad("prompt-empty", "toapis", {"prompt": ""}, "prompt", "got ''", "a non-empty str"),
    Bad("prompt-whitespace", "bfl", {"prompt": " \t\n"}, "prompt", repr(" \t\n"), "a non-empty str"),
    Bad("prompt-none", "apimart", {"prompt": None}, "prompt", "got None", "a non-empty str"),
    Bad("prompt-bytes", "toapis", {"prompt": b"a fox"}, "prompt", "b'a fox'", "a non-empty str"),
    Bad("prompt-grok-1001", "toapis", {"model": G, "prompt": "x" * 1001}, "prompt", "'xxxxxxxx", "at most 1000 characters"),
    Bad("prompt-grok2-blank", "toapis", {"model": G2, "prompt": "   "}, "prompt", "'   '", "at most 1000 characters"),
    Bad("prompt-lone-surrogate", "bfl", {"prompt": "fox \ud800"}, "prompt", "'fox \\ud800'", "a non-empty str"),
    # size
    Bad("size-match-input-no-image-toapis", "toapis", {"size": "match_input_image"}, "size", "'match_input_image'", "only with an input image"),
    Bad("size-match-input-no-image-apimart", "apimart", {"model": KM, "size": "match_input_image"}, "size", "'match_input_image'", "16:9"),
    Bad("size-match-input-no-image-bfl", "bfl", {"size": "match_input_image"}, "size", "'match_input_image'", "21:9"),
    Bad("size-auto-no-image-apimart", "apimart", {"size": "auto"}, "size", "'auto'", "match_input_image and auto only with an input image"),
    Bad("size-auto-on-toapis", "toapis", {"size": "auto", "images": [URL]}, "size", "'auto'", "match_input_image, 1:1"),
    Bad("size-auto-on-bfl", "bfl", {"size": "auto", "images": [URL]}, "size", "'auto'", "match_input_image, 1:1"),
    Bad("size-grok-4:3", "toapis", {"model": G, "size": "4:3"}, "size", "'4:3'", "1:1, 2:3, 3:2, 16:9, 9:16"),
    Bad("size-grok-21:9", "toapis", {"model": G2, "size": "21:9"}, "size", "'21:9'", "1:1, 2:3, 3:2, 16:9, 9:16"),
    Bad("size-grok-match-input", "toapis", {"model": G, "size": "match_input_image", "images": [URL]}, "size", "'match_input_image'", "1:1, 2:3"),
    Bad("size-x-separator", "toapis", {"size": "16x9"}, "size", "'16x9'", "16:9"),
    Bad("size-int", "apimart", {"size": 169}, "size", "got 169", "16:9"),
    Bad("size-trailing-space", "toapis", {"size": "1:1 "}, "size", "'1:1 '", "1:1"),
    Bad("size-upper-case", "apimart", {"size": "AUTO", "images": [URL]}, "size", "'AUTO'", "auto"),
    Bad("size-bfl-too-wide", "bfl", {"size": "22:9"}, "size", "'22:9'", "any W:H from 9:21 to 21:9"),
    Bad("size-bfl-too-tall", "bfl", {"size": "1:3"}, "size", "'1:3'", "any W:H from 9:21 to 21:9"),
    Bad("size-bfl-zero", "bfl", {"size": "0:1"}, "size", "'0:1'", "any W:H"),
    Bad("size-bfl-leading-zero", "bfl", {"size": "016:9"}, "size", "'016:9'", "any W:H"),
    Bad("size-bfl-unicode-digits", "bfl", {"size": "\u0661:\u0661"}, "size", "'\u0661:\u0661'", "any W:H"),
    Bad("size-free-ratio-on-toapis", "toapis", {"size": "5:4"}, "size", "'5:4'", "9:21"),
    Bad("size-free-ratio-on-apimart", "apimart", {"size": "5:4"}, "size", "'5:4'", "9:21"),
    # n
    Bad("n-grok-3", "toapis", {"model": G, "n": 3}, "n", "got 3", "one of 1, 2, 4"),
    Bad("n-grok-0", "toapis", {"model": G, "n": 0}, "n", "got 0", "one of 1, 2, 4"),
    Bad("n-grok-8", "toapis", {"model": G2, "n": 8}, "n", "got 8", "one of 1, 2, 4"),
    Bad("n-grok-quoted", "toapis", {"model": G, "n": "1"}, "n", "got '1'", "one of 1, 2, 4"),
    Bad("n-grok-bool", "toapis", {"model": G, "n": True}, "n", "got True", "one of 1, 2, 4"),
    Bad("n-grok-float", "toapis", {"model": G, "n": 2.0}, "n", "got 2.0", "one of 1, 2, 4"),
    Bad("n-kontext-toapis", "toapis", {"n": 1}, "n", "got 1", "None (not sent to flux-kontext-pro on toapis)"),
    Bad("n-kontext-apimart", "apimart", {"model": KM, "n": 4}, "n", "got 4", "None"),
    Bad("n-kontext-bfl", "bfl", {"n": 2}, "n", "got 2", "None"),
    # image count
    Bad("images-kontext-toapis-2", "toapis", {"images": [URL, URL2]}, "images", repr(URL), "at most 1 image"),
    Bad("images-kontext-apimart-2", "apimart", {"images": [PNG, URL]}, "images", "<30 bytes>", "at most 1 image"),
    Bad("images-grok-6", "toapis", {"model": G, "images": [URL] * 6}, "images", repr(URL), "at most 5 image"),
    Bad("images-bfl-5", "bfl", {"images": [URL] * 5}, "images", repr(URL), "at most 4 image"),
    # image values
    Bad("image-data-uri", "bfl", {"images": [URL, "data:image/png;base64,iVBORw0KGgo="]}, "images[1]", "'data:image/png;base64,", "an http(s) URL"),
    Bad("image-data-uri-upper", "toapis", {"images": ["DATA:image/png;base64,AAAA"]}, "images[0]", "'DATA:image/png", "an http(s) URL"),
    Bad("image-ftp", "toapis", {"images": ["ftp://example.com/x.png"]}, "images[0]", "'ftp://example.com/x.png'", "an http(s) URL"),
    Bad("image-file-url", "apimart", {"images": ["file:///tmp/x.png"]}, "images[0]", "'file:///tmp/x.png'", "an http(s) URL"),
    Bad("image-no-host", "bfl", {"images": ["https://"]}, "images[0]", "'https://'", "an http(s) URL"),
    Bad("image-space", "toapis", {"images": ["https://example.com/a b.png"]}, "images[0]", "'https://example.com/a b.png'", "an http(s) URL"),
    Bad("image-bad-port", "toapis", {"images": ["https://example.com:99999/x.png"]}, "images[0]", "99999", "an http(s) URL"),
    Bad("image-bad-ipv6", "bfl", {"images": ["http://[::1/x.png"]}, "images[0]", "'http://[::1/x.png'", "an http(s) URL"),
    Bad("image-int", "toapis", {"images": [42]}, "images[0]", "got 42", "an http(s) URL, a local file path"),
    Bad("image-none", "apimart", {"images": [None]}, "images[0]", "got None", "or bytes"),
    Bad("image-empty-str", "toapis", {"images": [""]}, "images[0]", "got ''", "an http(s) URL"),
    Bad("image-bytearray", "bfl", {"images": [bytearray(PNG)]}, "images[0]", "<30 bytes>", "or bytes"),
    Bad("image-empty-bytes", "toapis", {"images": [b""]}, "images[0]", "<0 bytes>", "image/png"),
    Bad("image-bytes-not-an-image", "apimart", {"images": [NOT_A_PNG]}, "images[0]", f"<{len(NOT_A_PNG)} bytes>", "image/gif, image/jpeg, image/png, image/webp"),
    Bad("image-gif-bytes-grok", "toapis", {"model": G, "images": [URL, GIF]}, "images[1]", "<30 bytes>", "image/jpeg, image/png, image/webp"),
    Bad("image-gif-bytes-bfl", "bfl", {"images": [GIF]}, "images[0]", "<30 bytes>", "image/jpeg, image/png, image/webp"),
    # response_format
    Bad("format-webp", "toapis", {"response_format": "webp"}, "response_format", "'webp'", "png, jpeg, jpg"),
    Bad("format-upper-case", "apimart", {"response_format": "PNG"}, "response_format", "'PNG'", "png, jpeg, jpg"),
    Bad("format-empty", "bfl", {"response_format": ""}, "response_format", "got ''", "png, jpeg, jpg"),
    Bad("format-int", "bfl", {"response_format": 1}, "response_format", "got 1", "png, jpeg, jpg"),
    Bad("format-on-grok", "toapis", {"model": G, "response_format": "png"}, "response_format", "'png'", "None (not sent to grok-4-1-image on toapis)"),
    # safety_tolerance
    Bad("tolerance-7", "toapis", {"safety_tolerance": 7}, "safety_tolerance", "got 7", "an integer from 0 to 6"),
    Bad("tolerance-negative", "apimart", {"safety_tolerance": -1}, "safety_tolerance", "got -1", "an integer from 0 to 6"),
    Bad("tolerance-bool", "bfl", {"safety_tolerance": True}, "safety_tolerance", "got True", "an integer from 0 to 6"),
    Bad("tolerance-quoted", "toapis", {"safety_tolerance": "2"}, "safety_tolerance", "got '2'", "an integer from 0 to 6"),
    Bad("tolerance-float", "apimart", {"safety_tolerance": 2.0}, "safety_tolerance", "got 2.0", "an integer from 0 to 6"),
    Bad("tolerance-on-grok", "toapis", {"model": G2, "safety_tolerance": 2}, "safety_tolerance", "got 2", "None"),
    # prompt_upsampling
    Bad("upsampling-int", "toapis", {"prompt_upsampling": 1}, "prompt_upsampling", "got 1", "True or False"),
    Bad("upsampling-str", "bfl", {"prompt_upsampling": "false"}, "prompt_upsampling", "got 'false'", "True or False"),
    Bad("upsampling-on-grok", "toapis", {"model": G, "prompt_upsampling": True}, "prompt_upsampling", "got True", "None"),
    # seed
    Bad("seed-negative", "bfl", {"seed": -1}, "seed", "got -1", "an integer from 0 to 9223372036854775807"),
    Bad("seed-bool", "bfl", {"seed": True}, "seed", "got True", "an integer from 0"),
    Bad("seed-quoted", "bfl", {"seed": "42"}, "seed", "got '42'", "an integer from 0"),
    Bad("seed-float", "bfl", {"model": KM, "seed": 1.5}, "seed", "got 1.5", "an integer from 0"),
    Bad("seed-over-int64", "bfl", {"seed": 2**63}, "seed", str(2**63), "an integer from 0"),
    Bad("seed-on-toapis", "toapis", {"seed": 5}, "seed", "got 5", "None (not sent to flux-kontext-pro on toapis)"),
    Bad("seed-on-apimart", "apimart", {"seed": 5}, "seed", "got 5", "None"),
    # extra
    Bad("extra-int-key", "toapis", {"extra": {1: "x"}}, "extra.1", "got 1", "a mapping with str keys"),
    Bad("extra-shadows-n", "toapis", {"model": G, "extra": {"n": 8}}, "extra.n", "got 8", "a mapping with str keys"),
    Bad("extra-shadows-prompt", "bfl", {"extra": {"prompt": "sneaky"}}, "extra.prompt", "got 'sneaky'", "for options this library does not know"),
    Bad("extra-shadows-tolerance", "apimart", {"extra": {"safety_tolerance": 9}}, "extra.safety_tolerance", "got 9", "str keys"),
    # The library's own id: an id from extra would defeat the lookup of a lost submit.
    Bad("extra-client-business-id", "toapis", {"extra": {"client_business_id": "job-1"}}, "extra.client_business_id", "'job-1'", "idempotency_key"),
    Bad("extra-client-business-id-bfl", "bfl", {"extra": {"client_business_id": 5}}, "extra.client_business_id", "got 5", "idempotency_key"),
    # idempotency_key
    Bad("key-empty", "toapis", {"idempotency_key": ""}, "idempotency_key", "got ''", "1 to 128 characters"),
    Bad("key-space", "apimart", {"idempotency_key": "a b"}, "idempotency_key", "'a b'", "1 to 128 characters"),
    Bad("key-not-str", "bfl", {"idempotency_key": 42}, "idempotency_key", "got 42", "1 to 128 characters"),
]  # fmt: skip


def test_the_refusal_table_is_large_and_distinct() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)
    assert len({(case.provider, repr(sorted(case.kwargs.items()))) for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_refusals_name_field_value_and_allowed(case: Bad) -> None:
    request = req(**case.kwargs)
    with no_io(), pytest.raises(ValidationError) as info:
        validate(request, case.provider)
    error = info.value
    assert error.field == case.field
    assert case.shows in str(error)
    assert case.allows in error.allowed
    assert error.allowed in str(error)
    assert error.reason
    assert error.reason in str(error)


def test_data_uri_reason_says_what_to_do() -> None:
    with pytest.raises(
        ValidationError, match=r"base64/data URIs are not accepted; pass bytes or a path"
    ):
        validate(req(images=["data:image/png;base64,AAAA"]), "bfl")


def test_a_huge_bytes_image_is_summarised_not_shown() -> None:
    data = PNG + bytes(10 * MIB)
    with pytest.raises(ValidationError) as info:
        validate(req(images=[data]), "toapis")
    assert info.value.field == "images[0]"
    assert info.value.value == f"<{len(data)} bytes>"
    assert len(str(info.value)) < 400
    # The same bytes are fine where the limit is 20 MiB.
    assert validate(req(images=[data]), "apimart").images == (data,)


def test_not_a_request() -> None:
    with pytest.raises(ValidationError) as info:
        validate({"model": K, "prompt": "x"}, "toapis")  # type: ignore[arg-type]
    assert info.value.field == "request"


def test_cheap_checks_come_before_file_io(tmp_path: Path) -> None:
    # A bad URL after a path is reported without looking at the file.
    with no_io(), pytest.raises(ValidationError) as info:
        validate(req(images=[tmp_path / "a.png", "ftp://x/y"]), "bfl")
    assert info.value.field == "images[1]"


# --- images: classify and sniff ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("https://example.com/a.png", "url"),
        ("http://example.com/a.png?sig=1&x=%20", "url"),
        ("HTTPS://EXAMPLE.COM/A.PNG", "url"),
        ("https://[::1]:8080/a.png", "url"),
        ("relative/in.png", "path"),
        ("/abs/in.png", "path"),
        ("C:\\images\\in.png", "path"),
        ("example.com/in.png", "path"),
        (Path("x://y.png"), "path"),
        (PNG, "bytes"),
        (b"", "bytes"),
    ],
)
def test_classify_image(value: Any, kind: str) -> None:
    with no_io():
        assert classify_image(value) == kind


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("data:image/png;base64,AAAA", "base64/data URIs are not accepted; pass bytes or a path"),
        ("data:,", "base64/data URIs"),
        ("ftp://example.com/a.png", "only http(s)"),
        ("file:///tmp/a.png", "pass a local file as a path or bytes"),
        ("weird/dir://name.png", "as a pathlib.Path"),
        ("https://", "no host"),
        ("https:///path-only.png", "no host"),
        ("https://example.com/a\tb.png", "whitespace or control"),
        ("https://example.com/a\x00.png", "whitespace or control"),
        ("https://example.com:70000/", "malformed URL"),
        ("", "empty string"),
        (3.5, "unsupported image type float"),
        (memoryview(PNG), "pass bytes(...)"),
    ],
)
def test_classify_image_refusals(value: Any, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        classify_image(value, index=3)
    assert info.value.field == "images[3]"
    assert reason in (info.value.reason or "")


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (GIF, "image/gif"),
        (b"GIF87a" + bytes(4), "image/gif"),
        (b"\x89PNG\r\n\x1a", None),  # truncated
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"RIFF", None),
        (b"\xff\xd8", None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"", None),
    ],
)
def test_sniff_image_type(data: bytes, mime: str | None) -> None:
    assert sniff_image_type(data) == mime


# --- images: local files ----------------------------------------------------------------------


def write(path: Path, data: bytes, size: int | None = None) -> Path:
    """Write ``data``; with ``size``, extend the file sparsely to that many bytes."""
    with open(path, "wb") as file:
        file.write(data)
        if size is not None:
            file.truncate(size)
    return path


def refusal(path: Any, provider: str = "toapis", model: str = K) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate(req(model=model, images=[path]), provider)
    assert info.value.field == "images[0]"
    assert info.value.value == path
    return info.value


@pytest.mark.parametrize("as_str", [True, False])
def test_good_png_file(tmp_path: Path, as_str: bool) -> None:
    path = write(tmp_path / "in.png", PNG)
    image = str(path) if as_str else path
    for provider in PROVIDERS:
        with no_io(files=True):
            out = validate(req(images=[image]), provider)
        assert out.images == (image,)
        assert out.size == "match_input_image"


@pytest.mark.parametrize(("data", "name"), [(JPEG, "a.jpg"), (WEBP, "a.webp"), (PNG, "no-suffix")])
def test_format_comes_from_content_not_name(tmp_path: Path, data: bytes, name: str) -> None:
    path = write(tmp_path / name, data)
    assert validate(req(model=G, images=[path]), "toapis").images == (path,)


def test_missing_file(tmp_path: Path) -> None:
    error = refusal(str(tmp_path / "nope.png"))
    assert "no such file (for a URL, include https://)" in str(error)
    assert "image/png" in error.allowed
    assert "no such file" in str(refusal(tmp_path / "nope.png"))


def test_directory(tmp_path: Path) -> None:
    assert "not a regular file" in str(refusal(tmp_path))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert "not a regular file" in str(refusal(fifo, "bfl"))  # opening it would block


def test_empty_file(tmp_path: Path) -> None:
    assert "empty" in str(refusal(write(tmp_path / "empty.png", b"")))


def test_wrong_magic_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "fake.png", b"this is a text file, honestly")
    error = refusal(path, "apimart")
    assert "not a recognised image" in str(error)
    assert "image/gif, image/jpeg, image/png, image/webp" in str(error)


@pytest.mark.parametrize(("provider", "model"), [("toapis", G), ("bfl", K), ("bfl", KM)])
def test_gif_file_refused_where_not_accepted(tmp_path: Path, provider: str, model: str) -> None:
    path = write(tmp_path / "anim.gif", GIF)
    assert "image/gif" in str(refusal(path, provider, model))


@pytest.mark.parametrize("provider", ["toapis", "apimart"])
def test_gif_file_accepted_for_kontext_uploads(tmp_path: Path, provider: str) -> None:
    path = write(tmp_path / "anim.gif", GIF)
    assert validate(req(images=[path]), provider).images == (path,)


@pytest.mark.parametrize(
    ("provider", "model"), [("toapis", K), ("toapis", G), ("apimart", K), ("bfl", KM)]
)
def test_oversize_file_is_refused_per_provider(tmp_path: Path, provider: str, model: str) -> None:
    limit = model_spec(provider, model).max_image_bytes
    at_limit = write(tmp_path / "at.png", PNG, size=limit)  # sparse: nothing like 20 MB is written
    over = write(tmp_path / "over.png", PNG, size=limit + 1)
    assert validate(req(model=model, images=[at_limit]), provider).images == (at_limit,)
    error = refusal(over, provider, model)
    assert f"{limit + 1} bytes is over {provider}'s limit" in str(error)
    assert f"{limit // MIB} MiB" in error.allowed


def test_toapis_limit_is_lower_than_apimart(tmp_path: Path) -> None:
    path = write(tmp_path / "big.png", PNG, size=15 * MIB)
    refusal(path, "toapis")
    assert validate(req(images=[path]), "apimart").images == (path,)


def test_oversize_with_a_patched_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = attrs.evolve(model_spec("bfl", K), max_image_bytes=len(PNG) - 1)
    monkeypatch.setattr(validate_module, "model_spec", lambda provider, model: small)
    error = refusal(write(tmp_path / "in.png", PNG), "bfl")
    assert f"{len(PNG)} bytes is over" in str(error)


def test_file_whose_name_contains_a_scheme_separator(tmp_path: Path) -> None:
    folder = tmp_path / "odd:"
    folder.mkdir()
    path = write(folder / "in.png", PNG)
    as_text = f"{tmp_path}/odd://in.png"
    assert validate(req(images=[Path(as_text)]), "bfl").images == (Path(as_text),)
    with pytest.raises(ValidationError, match=r"pathlib\.Path"):
        validate(req(images=[as_text]), "bfl")
    assert path.exists()


def test_image_index_is_named(tmp_path: Path) -> None:
    good = write(tmp_path / "a.png", PNG)
    with pytest.raises(ValidationError) as info:
        validate(req(images=[URL, good, tmp_path / "missing.png"]), "bfl")
    assert info.value.field == "images[2]"


# --- properties ---------------------------------------------------------------------------------

HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(com|org|ai)", fullmatch=True)
URLS = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["https", "http", "HTTPS"]),
    HOSTS,
    st.text(string.ascii_letters + string.digits + "-_./%?=&", max_size=30),
)


@st.composite
def free_ratios(draw: st.DrawFn, spec: ModelSpec) -> str:
    assert spec.ratio_range is not None
    (lo_w, lo_h), (hi_w, hi_h) = spec.ratio_range
    h = draw(st.integers(1, 4000))
    w = draw(st.integers(max(1, -(-h * lo_w // lo_h)), min(9999, h * hi_w // hi_h)))
    return f"{w}:{h}"


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[str, GenerationRequest]:
    """Any request the catalog says is valid, built from the catalog's own data."""
    provider, model = draw(st.sampled_from(PAIRS))
    spec = model_spec(provider, model)
    images = tuple(draw(st.lists(URLS, max_size=spec.max_images)))
    sizes = [
        s
        for s in (*spec.sizes, *spec.size_aliases)
        if images or spec.size_aliases.get(s, s) not in spec.image_sizes
    ]
    size_choices = [st.none(), st.sampled_from(sizes)]
    if spec.ratio_range is not None:
        size_choices.append(free_ratios(spec))
    prompt = draw(st.text(min_size=1, max_size=spec.max_prompt_chars or 2000).filter(str.strip))
    options: dict[str, Any] = {}
    if spec.n_values is not None:
        options["n"] = draw(st.none() | st.sampled_from(spec.n_values))
    if spec.response_formats:
        options["response_format"] = draw(
            st.none() | st.sampled_from([*spec.response_formats, "jpg"])
        )
    if spec.safety_tolerance is not None:
        options["safety_tolerance"] = draw(st.none() | st.integers(*spec.safety_tolerance))
    if spec.prompt_upsampling:
        options["prompt_upsampling"] = draw(st.none() | st.booleans())
    if spec.seed is not None:
        options["seed"] = draw(st.none() | st.integers(*spec.seed))
    untaken = [f for f in OPTIONAL if not spec.takes(f)]
    keys = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12).map("x_".__add__)
    extra = draw(
        st.dictionaries(
            keys | st.sampled_from(untaken or ["x"]), st.integers() | st.text(), max_size=3
        )
    )
    request = GenerationRequest(
        model=model,
        prompt=prompt,
        size=draw(st.one_of(size_choices)),
        images=images,
        extra=extra,
        **options,
    )
    return provider, request


@settings(deadline=None)
@given(valid_requests())
def test_valid_requests_validate_to_a_fixed_point(case: tuple[str, GenerationRequest]) -> None:
    provider, request = case
    spec = model_spec(provider, request.model)
    with no_io():
        once = validate(request, provider)
        twice = validate(once, provider)
    assert twice == once
    assert once.size in spec.sizes or spec.ratio_range is not None
    assert once.n == (spec.default_n if request.n is None else request.n)
    assert once.response_format in (None, "png", "jpeg")
    # Only size, n and response_format are ever normalised.
    restored = attrs.evolve(
        once, size=request.size, n=request.n, response_format=request.response_format
    )
    assert restored == request


BAD_VALUES: dict[str, list[Any]] = {
    "model": ["flux-pro", "", 5, None, "FLUX-KONTEXT-PRO", "flux-kontext-pro "],
    "prompt": ["", " \t\n", None, 7, b"a fox", "fox \udcff"],
    "size": ["16/9", "", " 1:1", "1:1 ", 169, "100:1", "0:1", "1:0", "MATCH_INPUT_IMAGE", "Auto"],
    "n": ["1", True, False, 3, 0, -1, 1.0, 8, [1]],
    "response_format": ["webp", "PNG", "", 1, "gif", "JPG"],
    "safety_tolerance": [-1, 7, True, "2", 2.5, 100],
    "prompt_upsampling": [1, 0, "true", "false"],
    "seed": [-1, True, "42", 1.5, 2**64],
    "extra": [{1: "x"}, {"prompt": "x"}, {"model": "y"}, {"images": []}, {"size": "1:1"}],
}
BAD_IMAGES: list[Any] = [
    "data:image/png;base64,AAAA",
    "ftp://example.com/x.png",
    "file:///tmp/x.png",
    "https://",
    "https://exa mple.com/x.png",
    42,
    None,
    "",
    b"",
    b"not an image at all",
    bytearray(PNG),
    b"\x00\x01\x02",
]


@st.composite
def one_bad_field(draw: st.DrawFn) -> tuple[str, GenerationRequest, str]:
    """A valid request with exactly one field made bad, and the field the error must name."""
    provider, request = draw(valid_requests())
    spec = model_spec(provider, request.model)
    target = draw(st.sampled_from([*BAD_VALUES, "images", "images[i]"]))
    if target in BAD_VALUES:
        bad = draw(st.sampled_from(BAD_VALUES[target]))
        return provider, attrs.evolve(request, **{target: bad}), target
    images = list(request.images)
    if target == "images":
        images += [URL] * (spec.max_images + 1 - len(images))
        return provider, attrs.evolve(request, images=images), "images"
    index = draw(st.integers(0, min(len(images), spec.max_images - 1)))
    bad = draw(st.sampled_from(BAD_IMAGES))
    images[index : index + 1] = [bad]
    return provider, attrs.evolve(request, images=images), f"images[{index}]"


@settings(deadline=None, max_examples=300)
@given(one_bad_field())
def test_one_bad_field_is_named(case: tuple[str, GenerationRequest, str]) -> None:
    provider, request, field = case
    with no_io(), pytest.raises(ValidationError) as info:
        validate(request, provider)
    if field == "extra":  # extra's errors name the key: extra.1, extra.prompt...
        assert info.value.field.startswith("extra.")
    else:
        assert info.value.field == field
    assert info.value.allowed in str(info.value)


def test_a_plain_request_checked_again_is_answered_alike_and_its_prompt_still_checked() -> None:
    # The second plain request of a (provider, model, size) takes the quick way: the same
    # normal form, and nothing but the prompt looked at again (which must still be looked at).
    validate_module._PLAIN.clear()
    first = catalog.validate(GenerationRequest(model="flux-kontext-pro", prompt="a"), "toapis")
    assert ("toapis", "flux-kontext-pro", None) in validate_module._PLAIN
    again = catalog.validate(GenerationRequest(model="flux-kontext-pro", prompt="b"), "toapis")
    assert (first.size, again.size, again.prompt) == ("16:9", "16:9", "b")
    same = GenerationRequest(model="flux-kontext-pro", prompt="c", size="1:1")
    catalog.validate(same, "toapis")
    assert catalog.validate(same, "toapis") is same  # already normal: no copy, either way
    # Grok takes 1,000 characters (a limit of the model's, not of every request), and n.
    grok = catalog.validate(GenerationRequest(model="grok-4-1-image", prompt="a" * 1000), "toapis")
    assert (grok.size, grok.n) == ("1:1", 1)
    assert catalog.validate(GenerationRequest(model="grok-4-1-image", prompt="b"), "toapis").n == 1
    with pytest.raises(ValidationError) as info:
        catalog.validate(GenerationRequest(model="grok-4-1-image", prompt="a" * 1001), "toapis")
    assert info.value.field == "prompt"
    # Known for one provider is not known for another: BFL takes a free ratio toapis refuses.
    catalog.validate(GenerationRequest(model="flux-kontext-pro", prompt="a", size="5:4"), "bfl")
    with pytest.raises(ValidationError):
        catalog.validate(GenerationRequest(model="flux-kontext-pro", prompt="a", size="5:4"), "toapis")


def test_the_plain_requests_remembered_are_bounded() -> None:
    validate_module._PLAIN.clear()
    for w in range(1, validate_module._PLAIN_MOST + 50):
        catalog.validate(GenerationRequest(model="flux-kontext-pro", prompt="a", size=f"{w}:{w}"), "bfl")
    assert len(validate_module._PLAIN) == validate_module._PLAIN_MOST
