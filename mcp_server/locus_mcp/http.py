"""Streamable HTTP for the MCP server: endpoint `/mcp`, loopback by default, guarded.

Guards, outermost first: an optional bearer token (401 without it), then the SDK's transport
checks — request body size (413), Host (421) and Origin (403) against allow-lists, which is the
DNS-rebinding protection a local server needs — then the MCP session.
"""

from __future__ import annotations

import hmac
import ipaddress
import sys
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

ENDPOINT = "/mcp"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None  # bearer token every request must carry
    allowed_hosts: list[str] = field(default_factory=list)  # besides the loopback names
    allowed_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (loopback) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_security(settings: HttpSettings) -> TransportSecuritySettings:
    """Host and Origin allow-lists: the loopback names on any port, plus what the user adds.

    Always enabled — the SDK would switch the checks off for a non-loopback bind address."""
    hosts = [f"{name}:*" for name in LOOPBACK_NAMES] + list(LOOPBACK_NAMES)
    origins = [f"http://{name}:*" for name in LOOPBACK_NAMES] + [
        f"http://{name}" for name in LOOPBACK_NAMES
    ]
    bind = settings.host if ":" not in settings.host else f"[{settings.host}]"
    if not is_loopback(settings.host) and settings.host not in ("0.0.0.0", "::"):
        hosts += [bind, f"{bind}:*"]
    hosts += settings.allowed_hosts
    origins += settings.allowed_origins
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def http_app(server: MCPServer, settings: HttpSettings) -> ASGIApp:
    app = server.streamable_http_app(
        streamable_http_path=ENDPOINT,
        max_request_body_size=settings.max_body_bytes,
        transport_security=transport_security(settings),
        host=settings.host,
    )
    if settings.token:
        return BearerToken(app, settings.token)
    return app


async def serve(server: MCPServer, settings: HttpSettings) -> None:
    """Serve until interrupted; prints the endpoint URL (with the real port) on stderr."""
    import uvicorn

    config = uvicorn.Config(
        http_app(server, settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="on",
    )
    http = uvicorn.Server(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(http.serve)
        while not http.started:
            if http.should_exit:
                return
            await anyio.sleep(0.01)
        port = http.servers[0].sockets[0].getsockname()[1]
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        print(
            f"locus-mcp: streamable HTTP on http://{host}:{port}{ENDPOINT}",
            file=sys.stderr,
            flush=True,
        )


class BearerToken:
    """Refuses HTTP requests without `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
            await _send_401(send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                return hmac.compare_digest(value, self.expected)
        return False


async def _send_401(send: Send) -> None:
    body = b'{"error": "unauthorized: send Authorization: Bearer <token>"}'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="locus-mcp"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
