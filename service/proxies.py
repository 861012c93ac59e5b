"""The client's address behind reverse proxies: X-Forwarded-For is believed only from PHASESCREEN_TRUSTED_PROXIES.

Every other peer's header is ignored, so a client cannot pick its own rate-limit bucket by sending one. The
address replaces ``scope["client"]`` before any route, rate limit or log reads it (what uvicorn's
``--forwarded-allow-ips`` does, but in the app, so every server and the tests behave alike).
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str, forwarded_for: list[str], networks: tuple[Network, ...]) -> str:
    """The peer itself, unless it is a trusted proxy: then the right-most hop of X-Forwarded-For that is not."""
    if not networks or not forwarded_for or not is_trusted(peer, networks):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    address = peer
    for hop in reversed(hops):
        address = hop[:64]
        if not is_trusted(hop, networks):
            break
    return address


class TrustedProxies:
    def __init__(self, app: ASGIApp, trusted: tuple[str, ...]) -> None:
        self.app = app
        self.networks = parse_networks(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.networks and scope["type"] in ("http", "websocket") and scope.get("client"):
            peer, port = scope["client"]
            forwarded = [v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"x-forwarded-for"]
            address = client_address(peer, forwarded, self.networks)
            if address != peer:
                scope = {**scope, "client": (address, port)}
        await self.app(scope, receive, send)
