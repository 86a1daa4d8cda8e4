"""The webhook target each codec adds to its submit (toapis ``callback_url``, apimart
``webhook``, BFL ``webhook_url`` + ``webhook_secret``), as plain functions; and the BFL
secret kept out of reprs and of the transport's log."""

from __future__ import annotations

import logging

import pytest

from flux_async.emulator import DEFAULT_API_KEY, Emulator, Scenario
from flux_async.errors import ValidationError
from flux_async.models import GenerationRequest
from flux_async.providers import ApimartCodec, BflCodec, ToapisCodec, get_codec
from flux_async.transport import AiohttpTransport

REQUEST = GenerationRequest(model="flux-kontext-pro", prompt="a red fox")
HOOK = "https://hooks.example.com/flux"
SECRET = "whsec-never-shown-0123456789"


def test_defaults_send_no_webhook_fields() -> None:
    for codec in (ToapisCodec(api_key="k"), ApimartCodec(api_key="k"), BflCodec(api_key="k")):
        body = codec.build_submit(REQUEST).json
        assert not {"callback_url", "webhook", "webhook_url", "webhook_secret"} & set(body)


def test_toapis_callback_url() -> None:
    http = ToapisCodec(api_key="k").build_submit(
        REQUEST, client_business_id="c1", webhook_url=HOOK, webhook_secret=SECRET
    )
    assert http.json == {"model": "flux-kontext-pro", "prompt": "a red fox",
                         "client_business_id": "c1", "callback_url": HOOK}


def test_apimart_webhook_base_url() -> None:
    http = ApimartCodec(api_key="k").build_submit(REQUEST, webhook_url=HOOK, webhook_secret=SECRET)
    assert http.json == {"model": "flux-kontext-pro", "prompt": "a red fox", "webhook": HOOK}


def test_bfl_webhook_url_and_secret() -> None:
    codec = BflCodec(api_key="k")
    http = codec.build_submit(REQUEST, webhook_url=HOOK, webhook_secret=SECRET)
    assert http.json == {"prompt": "a red fox", "webhook_url": HOOK, "webhook_secret": SECRET}
    assert codec.build_submit(REQUEST, webhook_url=HOOK).json == {
        "prompt": "a red fox", "webhook_url": HOOK}
    assert SECRET not in repr(http)
    assert SECRET not in str(http)


def test_extra_still_wins() -> None:
    request = GenerationRequest(model="flux-kontext-pro", prompt="p",
                                extra={"callback_url": "https://other.example.com/x"})
    http = ToapisCodec(api_key="k").build_submit(request, webhook_url=HOOK)
    assert http.json["callback_url"] == "https://other.example.com/x"


@pytest.mark.parametrize("provider", ["toapis", "apimart", "bfl"])
@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "/relative/path", "https://", "https://ex ample.com",
            "https://example.com/\n"]
)
def test_bad_webhook_url_refused_without_echo(provider: str, url: str) -> None:
    codec = get_codec(provider, api_key="k")
    with pytest.raises(ValidationError) as info:
        codec.build_submit(REQUEST, webhook_url=url)
    assert info.value.field == "webhook_url"
    assert url.strip() not in str(info.value) or not url.strip()


@pytest.mark.parametrize("secret", ["", "bad\nsecret"])
def test_bfl_bad_secret_refused_without_echo(secret: str) -> None:
    with pytest.raises(ValidationError) as info:
        BflCodec(api_key="k").build_submit(REQUEST, webhook_url=HOOK, webhook_secret=secret)
    assert info.value.field == "webhook_secret"
    assert "bad" not in str(info.value)


@pytest.mark.anyio
async def test_transport_log_never_shows_the_webhook_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_async")
    async with Emulator(Scenario()) as emu:
        transport = AiohttpTransport(base_url=emu.base_url("bfl"))
        try:
            http = BflCodec(api_key=DEFAULT_API_KEY).build_submit(
                REQUEST, webhook_url=f"{emu.url}/nowhere", webhook_secret=SECRET
            )
            response = await transport.send(http)
        finally:
            await transport.aclose()
        assert response.status == 200
    assert any("POST" in r.getMessage() for r in caplog.records)  # the request was logged...
    assert all(SECRET not in r.getMessage() for r in caplog.records)  # ...its secret was not
