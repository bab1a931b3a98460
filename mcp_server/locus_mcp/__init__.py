"""locus-mcp: the locus router as an MCP server (stdio or streamable HTTP) for agent IDEs."""

from __future__ import annotations

__version__ = "0.1.0"

from locus_mcp.server import create_server  # noqa: E402  (server reads __version__)

__all__ = ["__version__", "create_server"]
