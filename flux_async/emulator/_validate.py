"""Submit-body validation the way each provider documents it (the providers' documentation), independent of
the client's catalog: the emulator must not share a bug with the code it tests.

``parse_toapis`` / ``parse_apimart`` raise :class:`WireError` (rendered as the aggregator's
error envelope); ``parse_bfl`` raises :class:`BflValidationError` carrying FastAPI-style
``detail`` items (rendered as a 422). On success each returns a :class:`Spec`.

Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from typing import TypeGuard

__all__ = [
    "APIMART_MODELS",
    "BFL_MODELS",
    "GROK_SIZES",
    "KONTEXT_SIZES",
    "TOAPIS_MODELS",
    "BflValidationError",
    "Spec",
    "WireError",
    "parse_apimart",
    "parse_bfl",
    "parse_toapis",
]

KONTEXT = ("flux-kontext-pro", "flux-kontext-max")
GROK = ("grok-4-1-image", "grok-4-2-image")
TOAPIS_MODELS = frozenset(KONTEXT + GROK)
APIMART_MODELS = frozenset(KONTEXT)
BFL_MODELS = frozenset(KONTEXT)

KONTEXT_SIZES = frozenset(
    {"match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9", "9:21"}
)
APIMART_SIZES = KONTEXT_SIZES | {"auto"}
GROK_SIZES = frozenset({"1:1", "2:3", "3:2", "16:9", "9:16"})
GROK_PROMPT_MAX = 1000
GROK_N = (1, 2, 4)
_RATIO = re.compile(r"^([1-9][0-9]{0,3}):([1-9][0-9]{0,3})$")


class Spec:
    """What the emulator keeps of a valid submit."""

    __slots__ = ("cbid", "fmt", "model", "n", "prompt", "ratio", "seed", "webhook",
                 "webhook_secret")

    def __init__(
        self,
        *,
        model: str,
        prompt: str,
        ratio: str,
        fmt: str,
        n: int = 1,
        cbid: str | None = None,
        seed: int | None = None,
        webhook: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        #: Where the task's webhook goes (the final URL: apimart's ``/callback`` added), and
        #: BFL's ``webhook_secret``.
        self.webhook = webhook
        self.webhook_secret = webhook_secret
        self.model = model
        self.prompt = prompt
        self.ratio = ratio
        self.fmt = fmt
        self.n = n
        self.cbid = cbid
        self.seed = seed


class WireError(Exception):
    """An aggregator request error: HTTP status, error code, message and offending field."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


class BflValidationError(Exception):
    """A BFL 422: the FastAPI/pydantic ``detail`` list."""

    def __init__(self, detail: list[dict[str, object]]) -> None:
        super().__init__(str(detail))
        self.detail = detail


def _bad(message: str, param: str | None, code: str = "invalid_request") -> WireError:
    return WireError(400, code, message, param)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(body: object) -> dict[str, object]:
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", None)
    return body


def _prompt(obj: dict[str, object]) -> str:
    prompt = obj.get("prompt")
    if prompt is None:
        raise _bad("prompt is required", "prompt")
    if not isinstance(prompt, str):
        raise _bad("prompt must be a string", "prompt")
    if not prompt.strip():
        raise _bad("prompt must not be empty", "prompt")
    return prompt


def _image_urls(obj: dict[str, object], limit: int, model: str) -> list[str]:
    urls = obj.get("image_urls")
    if urls is None:
        return []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _bad("image_urls must be an array of URL strings", "image_urls")
    if len(urls) > limit:
        raise _bad(f"{model} accepts at most {limit} image(s) in image_urls", "image_urls")
    for url in urls:
        assert isinstance(url, str)
        lowered = url[:8].lower()
        if lowered.startswith("data:"):
            raise _bad(
                "base64 data URIs are not accepted in image_urls: upload the file first",
                "image_urls",
            )
        if not (lowered.startswith("http://") or lowered.startswith("https://")):
            raise _bad("image_urls must be http(s) URLs", "image_urls")
    return [u for u in urls if isinstance(u, str)]


def _kontext_size(
    obj: dict[str, object], has_image: bool, allowed: frozenset[str]
) -> str:
    size = obj.get("size")
    if size is None:
        return "match_input_image" if has_image else "16:9"
    if not isinstance(size, str) or size not in allowed:
        raise _bad(f"size must be one of {sorted(allowed)}", "size")
    if size in ("match_input_image", "auto") and not has_image:
        raise _bad(f"size {size!r} needs an input image", "size")
    return size


def _options(opts: dict[str, object], where: str) -> str | None:
    """Validate response_format / safety_tolerance / prompt_upsampling; return the format."""
    fmt = opts.get("response_format")
    if fmt is not None and fmt not in ("png", "jpg"):
        raise _bad("response_format must be 'png' or 'jpg'", f"{where}response_format")
    tol = opts.get("safety_tolerance")
    if tol is not None and not (_is_int(tol) and 0 <= tol <= 6):
        raise _bad("safety_tolerance must be an integer from 0 to 6", f"{where}safety_tolerance")
    up = opts.get("prompt_upsampling")
    if up is not None and not isinstance(up, bool):
        raise _bad("prompt_upsampling must be a boolean", f"{where}prompt_upsampling")
    return fmt if isinstance(fmt, str) else None


def _cbid(obj: dict[str, object]) -> str | None:
    cbid = obj.get("client_business_id")
    if cbid is None:
        return None
    if not isinstance(cbid, str) or not cbid or len(cbid) > 128:
        raise _bad("client_business_id must be a non-empty string of at most 128 characters",
                   "client_business_id")
    return cbid


def _is_http_url(value: str) -> bool:
    parts = urllib.parse.urlsplit(value)
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _callback_url(obj: dict[str, object]) -> str | None:
    url = obj.get("callback_url")
    if url is None:
        return None
    if not isinstance(url, str) or not _is_http_url(url):
        raise _bad("callback_url must be an http(s) URL", "callback_url")
    return url


def _apimart_webhook(obj: dict[str, object]) -> str | None:
    """Where apimart posts: ``<webhook>/callback``. A string that is not an http(s) URL is
    dropped silently, as apimart does (its public-host, port 80/443 rule is not applied: the
    emulator's receivers live on 127.0.0.1)."""
    url = obj.get("webhook")
    if url is None:
        return None
    if not isinstance(url, str):
        raise _bad("webhook must be a string", "webhook")
    if not _is_http_url(url):
        return None
    return url.rstrip("/") + "/callback"


def _model(obj: dict[str, object], known: frozenset[str]) -> str:
    model = obj.get("model")
    if model is None:
        raise _bad("model is required", "model")
    if not isinstance(model, str) or model not in known:
        raise WireError(400, "model_not_found", f"model {model!r} is not supported", "model")
    return model


def _ratio_of(size: str) -> str:
    return "1:1" if size in ("match_input_image", "auto") else size


def parse_toapis(body: object) -> Spec:
    """Validate a toapis ``POST /v1/images/generations`` body."""
    obj = _object(body)
    model = _model(obj, TOAPIS_MODELS)
    prompt = _prompt(obj)
    cbid = _cbid(obj)
    meta = obj.get("metadata", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise _bad("metadata must be an object", "metadata")
    if model in KONTEXT:
        if "n" in obj:
            raise _bad(f"n is not supported for {model}", "n")
        images = _image_urls(obj, 1, model)
        size = _kontext_size(obj, bool(images), KONTEXT_SIZES)
        fmt = _options(meta, "metadata.") or "jpg"
        return Spec(model=model, prompt=prompt, ratio=_ratio_of(size), fmt=fmt, cbid=cbid,
                    webhook=_callback_url(obj))
    if len(prompt) > GROK_PROMPT_MAX:
        raise _bad(f"prompt must be at most {GROK_PROMPT_MAX} characters for {model}", "prompt")
    _image_urls(obj, 5, model)
    grok_size = obj.get("size", "1:1")
    if not isinstance(grok_size, str) or grok_size not in GROK_SIZES:
        raise _bad(f"size must be one of {sorted(GROK_SIZES)}", "size")
    n = obj.get("n", 1)
    if not _is_int(n):
        raise _bad("n must be an integer (a JSON number)", "n")
    if n not in GROK_N:
        raise _bad("n must be 1, 2 or 4", "n")
    fmt = _options(meta, "metadata.") or "jpg"
    return Spec(model=model, prompt=prompt, ratio=grok_size, fmt=fmt, n=n, cbid=cbid,
                webhook=_callback_url(obj))


def parse_apimart(body: object) -> Spec:
    """Validate an apimart ``POST /v1/images/generations`` body (options at the top level)."""
    obj = _object(body)
    model = _model(obj, APIMART_MODELS)
    prompt = _prompt(obj)
    if "n" in obj:
        raise _bad(f"n is not supported for {model}", "n")
    images = _image_urls(obj, 1, model)
    size = _kontext_size(obj, bool(images), APIMART_SIZES)
    fmt = _options(obj, "") or "png"
    return Spec(model=model, prompt=prompt, ratio=_ratio_of(size), fmt=fmt,
                webhook=_apimart_webhook(obj))


# -- BFL: FastAPI / pydantic v2 shaped errors ----------------------------------------------------


def _detail(kind: str, field: str, msg: str, value: object, **ctx: object) -> dict[str, object]:
    item: dict[str, object] = {"type": kind, "loc": ["body", field], "msg": msg, "input": value}
    if ctx:
        item["ctx"] = ctx
    return item


def bfl_json_error(position: int, error: str) -> BflValidationError:
    """The 422 FastAPI sends for a body that is not JSON."""
    return BflValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ["body", position],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": error},
            }
        ]
    )


_ECHOED = 64
_DATA_URI = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def _image_input(value: str) -> bool:
    """An http(s) URL, or base64 (a ``data:`` URI's included) that decodes to some bytes."""
    if value[:8].lower().startswith(("http://", "https://")):
        return True
    data = _DATA_URI.sub("", value, count=1).replace("\n", "").replace("\r", "")
    try:
        return len(base64.b64decode(data, validate=True)) > 0
    except (binascii.Error, ValueError):
        return False


def parse_bfl(model: str, body: object) -> Spec:
    """Validate a BFL ``POST /v1/{model}`` body; collects every error like pydantic does."""
    if not isinstance(body, dict):
        raise BflValidationError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ["body"],
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": body,
                }
            ]
        )
    errors: list[dict[str, object]] = []
    prompt = body.get("prompt")
    if prompt is None:
        if "prompt" not in body:
            errors.append({"type": "missing", "loc": ["body", "prompt"], "msg": "Field required",
                           "input": body})
        else:
            errors.append(_detail("string_type", "prompt", "Input should be a valid string", None))
    elif not isinstance(prompt, str):
        errors.append(_detail("string_type", "prompt", "Input should be a valid string", prompt))
    for name in ("input_image", "input_image_2", "input_image_3", "input_image_4",
                 "webhook_url", "webhook_secret"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            errors.append(_detail("string_type", name, "Input should be a valid string", value))
        elif isinstance(value, str) and name.startswith("input_image") and not _image_input(value):
            errors.append(
                _detail("value_error", name,
                        "Value error, the image must be a base64-encoded image or an http(s) URL",
                        value[:_ECHOED] + ("..." if len(value) > _ECHOED else ""),
                        error="the image must be a base64-encoded image or an http(s) URL")
            )
    hook = body.get("webhook_url")
    if isinstance(hook, str) and not _is_http_url(hook):
        errors.append(_detail("url_parsing", "webhook_url", "Input should be a valid URL", hook,
                              error="relative URL without a base"))
    ratio = body.get("aspect_ratio")
    if ratio is None:
        ratio = "1:1"
    elif not isinstance(ratio, str):
        errors.append(_detail("string_type", "aspect_ratio", "Input should be a valid string", ratio))
    else:
        m = _RATIO.match(ratio)
        if m is None or not (9 / 21 - 1e-9 <= int(m.group(1)) / int(m.group(2)) <= 21 / 9 + 1e-9):
            errors.append(
                _detail("value_error", "aspect_ratio",
                        "Value error, aspect ratio must be between 21:9 and 9:21", ratio,
                        error="aspect ratio must be between 21:9 and 9:21")
            )
    fmt = body.get("output_format")
    if fmt is None:
        fmt = "jpeg"
    elif fmt not in ("png", "jpeg"):
        errors.append(_detail("enum", "output_format", "Input should be 'jpeg' or 'png'", fmt,
                              expected="'jpeg' or 'png'"))
    tol = body.get("safety_tolerance")
    if tol is not None:
        if not _is_int(tol):
            errors.append(_detail("int_type", "safety_tolerance",
                                  "Input should be a valid integer", tol))
        elif tol < 0:
            errors.append(_detail("greater_than_equal", "safety_tolerance",
                                  "Input should be greater than or equal to 0", tol, ge=0))
        elif tol > 6:
            errors.append(_detail("less_than_equal", "safety_tolerance",
                                  "Input should be less than or equal to 6", tol, le=6))
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        errors.append(_detail("int_type", "seed", "Input should be a valid integer", seed))
    up = body.get("prompt_upsampling")
    if up is not None and not isinstance(up, bool):
        errors.append(_detail("bool_type", "prompt_upsampling",
                              "Input should be a valid boolean", up))
    if errors:
        raise BflValidationError(errors)
    assert isinstance(prompt, str)
    assert isinstance(ratio, str)
    assert isinstance(fmt, str)
    secret = body.get("webhook_secret")
    return Spec(model=model, prompt=prompt, ratio=ratio, fmt=fmt,
                seed=seed if _is_int(seed) else None,
                webhook=hook if isinstance(hook, str) else None,
                webhook_secret=secret if isinstance(secret, str) and secret else None)
