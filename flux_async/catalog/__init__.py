"""What each model accepts on each provider, as data, and the rules that check a request against it.

Pure: no network, no clock, no aiohttp/anyio, and nothing from session, transport or scheduler;
imports only ``flux_async.models`` and ``flux_async.errors``. The only I/O is looking at local
image files named in a request (``os.stat`` and the first few bytes, to sniff the format).

Four parts: ``_specs`` holds the tables (:class:`ModelSpec` per provider and model, upload
limits) and their lookups; ``_images`` tells a URL from a path or bytes and sniffs an image's
format; ``_validate`` holds :func:`validate`, which checks a :class:`GenerationRequest` against
the tables before anything is sent and returns a copy with the documented defaults filled in;
``_prices`` holds the price per image of each model (:data:`PRICES`, None where unknown) and
the pure cost rules: a job's reserved and settled cost, and :func:`estimate_cost`.

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

from ._images import ImageKind, classify_image, sniff_image_type
from ._prices import (
    PRICES,
    CostEstimate,
    ModelEstimate,
    estimate_cost,
    from_micros,
    images_charged,
    price_table,
    reserved_cost,
    settled_cost,
    to_micros,
    unit_price,
)
from ._specs import PROVIDERS, ModelSpec, max_upload_bytes, model_spec, models_for
from ._validate import check_upload, validate

__all__ = [
    "PRICES",
    "PROVIDERS",
    "CostEstimate",
    "ImageKind",
    "ModelEstimate",
    "ModelSpec",
    "check_upload",
    "classify_image",
    "estimate_cost",
    "from_micros",
    "images_charged",
    "max_upload_bytes",
    "model_spec",
    "models_for",
    "price_table",
    "reserved_cost",
    "settled_cost",
    "sniff_image_type",
    "to_micros",
    "unit_price",
    "validate",
]
