"""Host allow-list, against DNS rebinding.

A web page can make a browser send requests to a name it controls that, moments later,
resolves to 127.0.0.1: the request then reaches this server with the page's name in its
``Host`` header. Every request whose Host is not one of this server's names is answered
421 (Misdirected Request) before any route runs (the token protects most routes, but not
/v1/health or the API documentation).

This server's names: the loopback names (``127.0.0.1`` and all of 127.0.0.0/8,
``localhost``, ``[::1]``), the address ``--host`` binds, and the comma-separated
``allowed_hosts`` setting (``ZS_ALLOWED_HOSTS``). Bound to every interface (``0.0.0.0``
or ``::``), any IP address and this machine's host name are accepted too: a rebinding
attack needs a domain name, never an address. Any port is accepted. A request without a
Host header (HTTP/1.0) does not come from a browser and passes.
"""

from __future__ import annotations

import ipaddress
import json
import socket

from .config import Settings

LOOPBACK_NAMES = ("localhost",)
WILDCARD_BINDS = ("", "0.0.0.0", "::")


class HostCheck:
    """ASGI middleware: 421 for an HTTP request whose Host is not one of ``names``."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.any_address = settings.host in WILDCARD_BINDS
        names = {*LOOPBACK_NAMES, _normal(settings.host)}
        names.update(_normal(name) for name in settings.allowed_hosts.split(",") if name.strip())
        if self.any_address:
            names.add(_normal(socket.gethostname()))
        self.names = frozenset(name for name in names if name)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = next((value for key, value in scope["headers"] if key == b"host"), None)
            if host is not None and not self.allows(host.decode("latin-1")):
                await _misdirected(send, host.decode("latin-1"))
                return
        await self.app(scope, receive, send)

    def allows(self, host: str) -> bool:
        name = _hostname(host)
        if name is None:
            return False
        if name in self.names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_address


def _hostname(host: str) -> str | None:
    """``name[:port]`` or ``[v6]:port`` -> the lower-case name (None when malformed)."""
    host = host.strip()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit())):
            return None
        return _normal(name)
    name, colon, port = host.rpartition(":") if ":" in host else (host, "", "")
    if colon and not (port.isascii() and port.isdigit()):
        return None
    return _normal(name)


def _normal(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


async def _misdirected(send, host: str) -> None:
    shown = host if len(host) <= 100 else host[:100] + "..."
    body = json.dumps({"detail": {"field": "host", "message": (
        f"this server does not answer to the name {shown!r} (a protection against DNS rebinding); "
        "use http://127.0.0.1:<port>, localhost or [::1], or add the name to ZS_ALLOWED_HOSTS")}}).encode()
    await send({"type": "http.response.start", "status": 421,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
