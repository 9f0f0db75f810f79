"""Where a run's `callbackUrl` may point: only at public addresses, unless an operator says so.

A callback is a request this server makes on a client's behalf; pointed at 127.0.0.1:6379,
169.254.169.254 or a 10.x host it would reach what only the server can reach (SSRF). So the
host must be, and resolve only to, public unicast addresses — whatever form the client wrote
it in (decimal `2130706433`, octal `0177.0.0.1`, hex, IPv4-mapped IPv6: the resolver reads
them all as the address they are). Hosts named in CALLBACK_ALLOWED_HOSTS are exempt.

Run the check when the URL is submitted and again, on the addresses actually connected to,
when it is called: DNS can change in between.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x20\x7f\\]")


class UnsafeDestination(ValueError):
    """The URL may not be called; the message says why, in words for the client."""


class Unresolvable(UnsafeDestination):
    """The host does not resolve now: refused at submit time, tried again at delivery (DNS
    may be back by then)."""


def is_public(address: IPAddress) -> bool:
    """A global unicast address, also when an IPv4 address hides inside an IPv6 one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = (
            address.ipv4_mapped
            or address.sixtofour
            or (address.teredo[1] if address.teredo else None)
        )
        if embedded is not None and not is_public(embedded):
            return False
        if address in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` stands for. Numeric forms are read by the system's resolver, the
    same reader an HTTP client will use."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise Unresolvable(f"The host {host!r} does not resolve.") from None
    # The scope of a link-local IPv6 address (fe80::1%eth0) is cut off; the address decides.
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def check_callback_url(url: str) -> list[IPAddress]:
    """The addresses `url` may be called at; raises UnsafeDestination when it may not be.

    An allow-listed host returns an empty list: it is trusted by name, not by address.
    """
    if _UNSAFE_CHARACTERS.search(url):
        raise UnsafeDestination("The URL contains spaces, control characters or backslashes.")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeDestination("The URL's host or port cannot be read.") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UnsafeDestination("Use an http(s) URL with a host name.")
    host = parts.hostname.rstrip(".").lower()
    allowed = {name.lower() for name in settings.CALLBACK_ALLOWED_HOSTS}
    if host in allowed:
        return []
    addresses = resolve(host, port)
    private = [str(address) for address in addresses if not is_public(address)]
    if private or not addresses:
        raise UnsafeDestination(
            f"The host {host!r} is or resolves to a private, loopback, link-local or reserved "
            "address; callbacks go only to public addresses."
        )
    return addresses
