"""The provider codecs and their registry.

A codec is the pure, sans-I/O wire format of one provider (see :class:`~.base.Codec`). This
package must not import transport, scheduler, session, aiohttp or anyio. Adding a provider is
one new module plus one line in :data:`CODECS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from ..errors import ConfigurationError
from .apimart import ApimartCodec
from .base import Codec
from .bfl import BflCodec
from .toapis import ToapisCodec

__all__ = [
    "CODECS",
    "ApimartCodec",
    "BflCodec",
    "Codec",
    "CodecFactory",
    "ToapisCodec",
    "get_codec",
]


class CodecFactory(Protocol):
    """What :data:`CODECS` maps a name to: a codec class, built with keywords."""

    def __call__(self, *, api_key: str, user_agent: str = ...) -> Codec: ...


#: Provider name -> codec class.
CODECS: Mapping[str, CodecFactory] = MappingProxyType(
    {
        "toapis": ToapisCodec,
        "apimart": ApimartCodec,
        "bfl": BflCodec,
    }
)


def get_codec(provider: str, *, api_key: str, user_agent: str | None = None) -> Codec:
    """The codec for ``provider`` (case-insensitive), holding ``api_key``.

    Raises ConfigurationError for an unknown provider (naming the known ones) or an unusable key.
    """
    factory = CODECS.get(provider.strip().lower()) if isinstance(provider, str) else None
    if factory is None:
        raise ConfigurationError(
            f"unknown provider {provider!r}; expected one of: {', '.join(sorted(CODECS))}"
        )
    if user_agent is None:
        return factory(api_key=api_key)
    return factory(api_key=api_key, user_agent=user_agent)
