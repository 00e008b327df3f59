"""SPEC B6: outbound URLs must be http(s) and, unless allowed, reach public addresses only."""

from __future__ import annotations

import socket

import pytest

from app.connectors.addresses import AddressRefused, check_outbound_url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.216.34/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "93.184.216.34/hook",
        "http:///nohost",
        "http://user:pw@93.184.216.34/",
        "http://93.184.216.34:99999/",
    ],
)
def test_malformed_or_non_http_urls_are_refused_even_when_private_is_allowed(url):
    with pytest.raises(AddressRefused):
        check_outbound_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1.2.3:8080/",
        "https://10.0.0.5/",
        "https://172.16.9.9/",
        "https://192.168.1.10/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://localhost/",
        "http://LOCALHOST./",
        "http://api.localhost/",
        "http://100.64.0.1/",
    ],
)
def test_private_loopback_and_link_local_destinations_are_refused(url):
    with pytest.raises(AddressRefused, match="not public"):
        check_outbound_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost/", "https://10.0.0.5/"])
def test_private_destinations_pass_when_allowed(url):
    check_outbound_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["https://93.184.216.34/hook", "http://[2606:4700:4700::1111]/x"])
def test_public_addresses_pass(url):
    check_outbound_url(url, allow_private=False)


def test_host_names_are_checked_against_what_they_resolve_to(monkeypatch):
    # No DNS server is reachable here, so the resolver is the one thing stood in for.
    answers = {"intranet.example": "10.1.2.3", "www.example": "93.184.216.34"}

    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(AddressRefused, match=r"10\.1\.2\.3"):
        check_outbound_url("https://intranet.example/hook", allow_private=False)
    check_outbound_url("https://www.example/hook", allow_private=False)


def test_a_host_that_does_not_resolve_now_is_left_to_the_delivery_time_check(monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror("no DNS here")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    check_outbound_url("https://hooks.example.com/x", allow_private=False)
