"""Which hosts results are fetched from: the pure address classifier, the IPv4 spellings that
resolvers accept, the policy a session derives from its own base URL, and the ``Limits`` switch.

(The transport's use of it, over real sockets, is in ``test_hostile_results.py``.)
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import pytest
import yarl

from flux_async import ConfigurationError
from flux_async._hosts import (
    ADDRESS_CLASSES,
    HostPolicy,
    address_class,
    host_class,
    parse_ip,
    refuse_url,
)
from flux_async.session import Limits

#: 127.0.0.1 in full-width digits.
FULL_WIDTH = "\uff11\uff12\uff17.\uff10.\uff10.\uff11"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        # IPv4
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("100.127.255.254", "shared (carrier-grade NAT)"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved"),  # documentation
        ("198.18.0.1", "reserved"),  # benchmarking
        ("8.8.8.8", None),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("1.1.1.1", None),
        # IPv6
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fd00::1", "private"),
        ("fc12:3456::1", "private"),
        ("fec0::1", "private"),  # site-local (deprecated)
        ("ff02::1", "multicast"),
        ("2001:db8::1", "reserved"),
        ("100::1", "reserved"),
        ("2001:4860:4860::8888", None),
        # IPv4 carried in IPv6: judged by the IPv4 address
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:100.64.0.1", "shared (carrier-grade NAT)"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("::ffff:224.0.0.1", "multicast"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
    ],
)
def test_address_classes(address: str, expected: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected
    assert expected is None or expected in ADDRESS_CLASSES


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),  # one decimal number
        ("017700000001", "127.0.0.1"),  # one octal number
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("127.0.0.1.", "127.0.0.1"),  # a trailing dot
        (FULL_WIDTH, "127.0.0.1"),  # as yarl normalises them
        ("127。0。0。1", "127.0.0.1"),  # ideographic full stops
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("fe80::1%25eth0", "fe80::1"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_every_spelling_of_an_address_is_read_as_that_address(host: str, address: str) -> None:
    assert parse_ip(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "results.cdn.example", "1e100.net", "0x", "1..2",
                                  "256.1.1.1.1", "1.2.3.256", "1_0.0.0.1", "-1", "cafe", ""])
def test_names_and_invalid_numbers_are_not_addresses(host: str) -> None:
    assert parse_ip(host) is None


def test_the_url_parsers_leave_old_ipv4_spellings_for_the_resolver() -> None:
    # Neither parser turns these into addresses: whoever fetches the URL hands the host to a
    # resolver, whose inet_aton would. So they are read here as the address they spell.
    assert urlsplit("http://2130706433/").hostname == "2130706433"
    assert yarl.URL("http://2130706433/").host == "2130706433"
    assert yarl.URL("http://0x7f.1/").host == "0x7f.1"
    # yarl (what aiohttp connects with) turns full-width digits into an address; urlsplit does not.
    assert yarl.URL(f"http://{FULL_WIDTH}/").host == "127.0.0.1"
    assert host_class(urlsplit(f"http://{FULL_WIDTH}/").hostname or "") == "loopback"
    for url in ("http://2130706433/", "http://0x7f.1/x", "http://[::ffff:127.0.0.1]:8080/",
                "http://user@127.1/", "https://LOCALHOST./a", "http://api.localhost/"):
        assert refuse_url(url, HostPolicy()) is not None, url


@pytest.mark.parametrize(
    ("base", "allowed", "trusted", "allow_all"),
    [
        ("http://127.0.0.1:8080/toapis", {"loopback"}, None, False),
        ("http://[::1]:8080/toapis", {"loopback"}, None, False),
        ("http://localhost:8080/toapis", {"loopback"}, None, False),
        ("http://10.0.0.5/toapis", {"private"}, None, False),
        ("http://169.254.10.10/toapis", {"link-local"}, None, False),
        ("https://toapis.com", set(), "toapis.com", False),
        ("https://API.Example.COM./v1", set(), "api.example.com", False),
        ("https://8.8.8.8/v1", set(), None, False),
    ],
)
def test_the_base_url_allows_its_own_class_or_its_own_name(
    base: str, allowed: set[str], trusted: str | None, allow_all: bool
) -> None:
    policy = HostPolicy.for_base_url(base)
    assert policy == HostPolicy(allowed=frozenset(allowed), trusted_host=trusted, allow_all=allow_all)
    assert HostPolicy.for_base_url(base, allow_private=True) == HostPolicy(allow_all=True)


def test_a_loopback_session_still_refuses_the_metadata_address_and_private_networks() -> None:
    policy = HostPolicy.for_base_url("http://127.0.0.1:8000/toapis")
    assert refuse_url("http://127.0.0.1:8000/files/x.png", policy) is None
    assert refuse_url("http://localhost:8000/files/x.png", policy) is None
    assert refuse_url("http://[::ffff:127.0.0.1]/x.png", policy) is None
    assert refuse_url("http://169.254.169.254/latest/meta-data/", policy) == (
        "169.254.169.254 (link-local address)"
    )
    assert refuse_url("http://192.168.0.1/x.png", policy) == "192.168.0.1 (private address)"
    assert refuse_url("http://[fd00::1]/x.png", policy) == "fd00::1 (private address)"
    assert refuse_url("https://cdn.example/x.png", policy) is None  # a name: checked once resolved
    assert refuse_url("https://8.8.8.8/x.png", policy) is None


def test_resolved_addresses_are_judged_by_class_except_for_the_trusted_name() -> None:
    policy = HostPolicy.for_base_url("https://api.example.com/v1")
    assert policy.refuse_address("cdn.example", "93.184.216.34") is None
    assert policy.refuse_address("cdn.example", "127.0.0.1") == (
        "cdn.example (resolves to 127.0.0.1, a loopback address)"
    )
    assert policy.refuse_address("cdn.example", "::ffff:a9fe:a9fe") == (
        "cdn.example (resolves to ::ffff:a9fe:a9fe, a link-local address)"
    )
    assert policy.refuse_address("cdn.example", "not-an-address") is not None
    # The API's own host is trusted with the key already: results there are fetched.
    assert policy.refuse_address("API.example.com", "10.0.0.7") is None
    assert HostPolicy(allow_all=True).refuse_address("cdn.example", "169.254.169.254") is None


def test_the_limits_switch_is_a_boolean() -> None:
    assert Limits().allow_private_result_hosts is False
    assert Limits(allow_private_result_hosts=True).allow_private_result_hosts is True
    with pytest.raises(ConfigurationError, match="allow_private_result_hosts must be True or False"):
        Limits(allow_private_result_hosts="yes")  # type: ignore[arg-type]
