"""The outbound address policy (SPEC B6): http(s) only, no private destinations."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class AddressRefused(Exception):
    """An outbound URL or the address it resolves to is not allowed."""


def check_address(address: str) -> None:
    """Refuse loopback, private, link-local and other non-public IP addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        raise AddressRefused(f"the outbound address {ip} is not public (loopback, private or link-local)")


def check_outbound_url(url: str, *, allow_private: bool, resolve: bool = True) -> None:
    """Check an outbound URL's scheme, and unless allowed, where its host resolves to.

    A host that does not resolve now passes: it is checked again at delivery time,
    against the address actually connected to.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"the outbound URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise AddressRefused("the outbound URL must start with http:// or https://")
    if not parts.hostname:
        raise AddressRefused("the outbound URL has no host")
    if parts.username or parts.password:
        raise AddressRefused("the outbound URL must not carry credentials")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        # An empty or overlong label: no HTTP client could connect to it.
        raise AddressRefused("the outbound host name is not valid") from None
    if allow_private:
        return
    try:
        check_address(parts.hostname)
        return
    except ValueError:
        pass  # a host name, not an IP literal
    if parts.hostname.rstrip(".").lower() == "localhost" or parts.hostname.endswith(".localhost"):
        raise AddressRefused("the outbound host localhost is not public")
    if resolve:
        check_resolved(parts.hostname, port or 443)


def check_resolved(host: str, port: int) -> None:
    """Refuse a host if any address it resolves to is not public; a host that does not resolve passes."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return
    for info in infos:
        check_address(str(info[4][0]))
