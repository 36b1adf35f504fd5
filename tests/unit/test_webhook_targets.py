"""Where a webhook may go: the URL parsed strictly at create time, every address checked at delivery."""

from __future__ import annotations

import ipaddress
import re

import pytest

from imagegen.domain.webhooks import (
    ALLOW_PRIVATE_SETTING,
    WebhookRefused,
    address_problem,
    parse_url,
    url_problem,
)

# Every spelling of loopback, private and link-local addresses that resolvers or URL parsers accept.
NON_PUBLIC = {
    "decimal integer": "http://2130706433:9/hook",
    "hex integer": "http://0x7f000001:9/hook",
    "octal integer": "http://017700000001:9/hook",
    "octal dotted": "http://0177.0.0.1:9/hook",
    "hex dotted": "http://0x7f.0.0.1:9/hook",
    "shortened dotted": "http://127.1:9/hook",
    "three parts": "http://10.0.7:9/hook",
    "trailing dot": "http://127.0.0.1.:9/hook",
    "canonical loopback": "http://127.0.0.1:9/hook",
    "another loopback": "http://127.8.9.10:9/hook",
    "private 10/8": "http://10.0.0.7/hook",
    "private 192.168/16": "http://192.168.1.1/hook",
    "private 172.16/12": "http://172.16.0.1/hook",
    "shared address space": "http://100.64.0.1/hook",
    "link-local": "http://169.254.1.1/hook",
    "unspecified": "http://0.0.0.0:9/hook",
    "multicast": "http://224.0.0.1/hook",
    "reserved": "http://240.0.0.1/hook",
    "broadcast": "http://255.255.255.255/hook",
    "IPv6 loopback": "http://[::1]:9/hook",
    "IPv6 unspecified": "http://[::]:9/hook",
    "IPv6 loopback written long": "http://[0:0:0:0:0:0:0:1]:9/hook",
    "IPv4-mapped": "http://[::ffff:127.0.0.1]:9/hook",
    "IPv4-mapped in hex": "http://[::ffff:7f00:1]:9/hook",
    "IPv4-compatible": "http://[::127.0.0.1]:9/hook",
    "NAT64": "http://[64:ff9b::7f00:1]:9/hook",
    "NAT64 of a private address": "http://[64:ff9b::a00:7]/hook",
    "local-use NAT64": "http://[64:ff9b:1::a00:7]/hook",
    "6to4": "http://[2002:7f00:1::]:9/hook",
    "Teredo": "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
    "IPv6 link-local": "http://[fe80::1]/hook",
    "IPv6 unique local": "http://[fd12:3456::1]/hook",
    "IPv6 multicast": "http://[ff02::1]/hook",
    "localhost": "http://localhost:9/hook",
    "localhost with a trailing dot": "http://localhost.:9/hook",
    "localhost in capitals": "http://LOCALHOST:9/hook",
    "a localhost subdomain": "http://api.localhost:9/hook",
}
METADATA = {
    "AWS, GCP, Azure metadata": "http://169.254.169.254/latest/meta-data/",
    "AWS metadata over IPv6": "http://[fd00:ec2::254]/latest/",
    "AWS metadata, IPv4-mapped": "http://[::ffff:169.254.169.254]/",
    "Alibaba metadata": "http://100.100.100.200/latest/",
}
MALFORMED = {
    "an unclosed IPv6 bracket": ("http://[::1", "not a valid URL"),
    "not an IPv6 address": ("http://[example.com]/", "not a valid URL"),
    "an IPv6 zone": ("http://[fe80::1%25eth0]/", "zone"),
    "a port above 65535": ("http://example.com:99999/", "not a valid URL"),
    "port 0": ("http://example.com:0/", "1 to 65535"),
    "an empty port": ("http://example.com:/", "1 to 65535"),
    "a signed port": ("http://example.com:+80/", "not a valid URL"),
    "a space in the host": ("http://exa mple.com/", "without spaces"),
    "a tab": ("http://example.com/\thook", "without spaces"),
    "a NUL": ("http://example.com/\x00", "control characters"),
    "a backslash": ("http://example.com\\@127.0.0.1/", "backslashes"),
    "non-ASCII": ("http://exämple.com/", "ASCII"),
    "user info": ("http://user:secret@example.com/", "user name or password"),
    "no host": ("http:///hook", "absolute http(s) URL"),
    "another scheme": ("ftp://example.com/hook", "absolute http(s) URL"),
    "a relative URL": ("/hooks/1", "absolute http(s) URL"),
    "a bad host name": ("http://-example.com/", "not a valid host name"),
    "too long": ("https://example.com/" + "x" * 2100, "longer than 2048"),
}


@pytest.mark.parametrize("url", NON_PUBLIC.values(), ids=NON_PUBLIC.keys())
def test_every_spelling_of_a_non_public_address_is_refused_and_the_reason_names_the_setting(url: str) -> None:
    problem = url_problem(url, allow_private=False)
    assert problem is not None
    assert ALLOW_PRIVATE_SETTING in problem or "non-standard form" in problem


@pytest.mark.parametrize("url", NON_PUBLIC.values(), ids=NON_PUBLIC.keys())
def test_allowing_private_webhooks_opens_the_addresses_written_the_standard_way(url: str) -> None:
    problem = url_problem(url, allow_private=True)
    assert problem is None or "non-standard form" in problem


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("url", METADATA.values(), ids=METADATA.keys())
def test_a_cloud_metadata_address_is_refused_even_when_private_webhooks_are_allowed(
    url: str, allow_private: bool
) -> None:
    assert "metadata" in (url_problem(url, allow_private=allow_private) or "")


@pytest.mark.parametrize("url, phrase", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_url_is_refused_with_its_reason(url: str, phrase: str) -> None:
    with pytest.raises(WebhookRefused, match=re.escape(phrase)):
        parse_url(url, allow_private=True)


def test_a_public_url_parses_into_what_delivery_connects_to() -> None:
    target = parse_url("https://Hooks.Example.COM.:8443/in?token=abc", allow_private=False)
    assert (target.scheme, target.host, target.port, target.target) == (
        "https",
        "hooks.example.com",
        8443,
        "/in?token=abc",
    )
    assert target.address is None
    assert target.host_header == "hooks.example.com:8443"
    assert target.origin == "https://hooks.example.com:8443"  # what logs show: no path, no token
    address = ipaddress.ip_address("203.0.113.7")
    assert target.url_for(address) == "https://203.0.113.7:8443/in?token=abc"


def test_a_public_address_literal_is_its_own_target() -> None:
    v6 = parse_url("http://[2606:4700::1111]/h", allow_private=False)
    assert v6.address == ipaddress.ip_address("2606:4700::1111") and v6.host_header == "[2606:4700::1111]"
    assert parse_url("http://8.8.8.8:8080", allow_private=False).target == "/"


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "::1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "169.254.169.254"]
)
def test_a_resolved_address_is_checked_like_a_literal_one(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), allow_private=False) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "1.1.1.1"])
def test_a_public_resolved_address_is_accepted(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), allow_private=False) is None
