"""Which hosts a result image may be fetched from: the classes of non-public addresses, the
parsing of the address a URL's host spells, and :class:`HostPolicy`, the rule a session applies
to every result URL, every redirect hop and every address a result host's name resolves to.

A result URL comes from the provider's answer, so whoever can shape that answer chooses where
the client connects: without this rule, a result pointing at ``http://169.254.169.254/`` (a
cloud's metadata service) or at a service on the client's own machine or network would be
fetched. Refused: loopback, link-local, private (RFC 1918, IPv6 unique-local and site-local),
shared (carrier-grade NAT, 100.64.0.0/10), unspecified, multicast, and every other reserved or
special-purpose range; an IPv6 address that carries an IPv4 address (mapped ``::ffff:a.b.c.d``,
compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged by that IPv4
address. The old spellings of an IPv4 address that name resolvers still accept (``2130706433``,
``0x7f.1``, ``0177.0.0.1``, ``127.1``) and full-width digits are read as the address they
spell. The names ``localhost`` and ``*.localhost`` are loopback.

A session whose own API base URL is on one of these classes (the emulator on 127.0.0.1, say)
allows that class, and only that one; a base URL with a host name allows that one name,
whatever it resolves to (the API key is already sent there). ``Limits.allow_private_result_hosts``
allows every class.

Pure: the standard library and attrs only; no I/O (no name is resolved here: the transport
asks :meth:`HostPolicy.refuse_address` about the addresses its resolver found).
"""

from __future__ import annotations

import ipaddress
import unicodedata
from urllib.parse import urlsplit

import attrs

__all__ = [
    "ADDRESS_CLASSES",
    "HostPolicy",
    "address_class",
    "host_class",
    "parse_ip",
    "refuse_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = "loopback"
LINK_LOCAL = "link-local"
PRIVATE = "private"
SHARED = "shared (carrier-grade NAT)"
UNSPECIFIED = "unspecified"
MULTICAST = "multicast"
RESERVED = "reserved"
#: Every class of address a result is not fetched from by default.
ADDRESS_CLASSES = frozenset({LOOPBACK, LINK_LOCAL, PRIVATE, SHARED, UNSPECIFIED, MULTICAST, RESERVED})

_V4_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_V4_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_V4_PRIVATE = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_V6_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V6_COMPATIBLE = ipaddress.IPv6Network("::/96")


def parse_ip(host: str) -> IPAddress | None:
    """The IP address ``host`` spells (a URL's host, brackets and zone allowed), or None for a
    name. Reads the IPv4 spellings that resolvers accept besides dotted decimal."""
    text = unicodedata.normalize("NFKC", host).strip().lower().replace("\u3002", ".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]  # an IPv6 zone, or its URL form %25
    if text.endswith(".") and ":" not in text:
        text = text[:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return _legacy_ipv4(text)


def _legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """``inet_aton``'s forms: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x), the last
    filling the bytes left."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        try:
            if part[:2] == "0x":
                values.append(int(part[2:], 16))
            elif len(part) > 1 and part[0] == "0":
                values.append(int(part[1:], 8))
            else:
                values.append(int(part, 10))
        except ValueError:
            return None
        if not part.isascii() or not part.isalnum():
            return None  # int() accepts "_", signs and spaces; a resolver does not
    *front, last = values
    if any(v > 255 for v in front) or last >= 256 ** (5 - len(values)):
        return None
    value = last
    for index, byte in enumerate(front):
        value += byte << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _V6_NAT64 or (address in _V6_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_class(address: IPAddress) -> str | None:
    """The class of a non-public address (one of :data:`ADDRESS_CLASSES`), or None for a
    public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            return address_class(embedded)
        if address.is_unspecified:
            return UNSPECIFIED
        if address.is_loopback:
            return LOOPBACK
        if address.is_link_local:
            return LINK_LOCAL
        if address.is_multicast:
            return MULTICAST
        if address in _V6_UNIQUE_LOCAL or address.is_site_local:
            return PRIVATE
        return RESERVED if address.is_reserved or not address.is_global else None
    if address in _V4_THIS_NETWORK:
        return UNSPECIFIED
    if address.is_loopback:
        return LOOPBACK
    if address.is_link_local:
        return LINK_LOCAL
    if address.is_multicast:
        return MULTICAST
    if address in _V4_SHARED:
        return SHARED
    if any(address in network for network in _V4_PRIVATE):
        return PRIVATE
    return RESERVED if address.is_reserved or not address.is_global else None


def host_class(host: str) -> str | None:
    """The class of a URL's host when it is an address literal (or ``localhost``) that is not
    public; None for a public address or any other name (check what it resolves to)."""
    address = parse_ip(host)
    if address is not None:
        return address_class(address)
    name = _name(host)
    if name == "localhost" or name.endswith(".localhost"):
        return LOOPBACK
    return None


def _name(host: str) -> str:
    return unicodedata.normalize("NFKC", host).strip().lower().rstrip(".")


@attrs.frozen(kw_only=True)
class HostPolicy:
    """Where results may be fetched from: every public address, plus the address classes in
    ``allowed``, plus ``trusted_host`` (a host name) whatever it resolves to; or anywhere with
    ``allow_all``."""

    allowed: frozenset[str] = frozenset()
    trusted_host: str | None = None
    allow_all: bool = False

    @classmethod
    def for_base_url(cls, base_url: str, *, allow_private: bool = False) -> HostPolicy:
        """The policy of a session whose API is at ``base_url``: the class of its address (if it
        is not public), or its host name; every class with ``allow_private``."""
        if allow_private:
            return cls(allow_all=True)
        host = urlsplit(base_url).hostname or ""
        if not host:
            return cls()
        found = host_class(host)
        if found is not None:
            return cls(allowed=frozenset({found}))
        if parse_ip(host) is not None:
            return cls()  # a public address: nothing more is allowed
        return cls(trusted_host=_name(host))

    def refuse_host(self, host: str) -> str | None:
        """Why a URL's ``host`` is refused (``"<host> (<class> address)"``), or None. A name
        not refused here is still checked once resolved (:meth:`refuse_address`)."""
        if self.allow_all or self._trusted(host):
            return None
        found = host_class(host)
        if found is None or found in self.allowed:
            return None
        return f"{host} ({found} address)"

    def refuse_address(self, host: str, address: str) -> str | None:
        """Why connecting to ``address``, which ``host`` resolved to, is refused, or None."""
        if self.allow_all or self._trusted(host):
            return None
        parsed = parse_ip(address)
        if parsed is None:
            return f"{host} (resolved to {address!r}, not an IP address)"
        found = address_class(parsed)
        if found is None or found in self.allowed:
            return None
        return f"{host} (resolves to {parsed}, a {found} address)"

    def _trusted(self, host: str) -> bool:
        return self.trusted_host is not None and _name(host) == self.trusted_host


def refuse_url(url: str, policy: HostPolicy) -> str | None:
    """Why the host of ``url`` is refused under ``policy`` (see :meth:`HostPolicy.refuse_host`),
    or None."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None  # not a URL the transport can fetch either: it fails there, with its reason
    return policy.refuse_host(host) if host else None
