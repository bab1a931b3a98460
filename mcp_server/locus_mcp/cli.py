"""`locus-mcp`: serve the locus router over MCP, on stdio (default) or streamable HTTP.

    locus-mcp --config locus.yaml                      # stdio, for Claude Desktop / Cursor / VS Code
    locus-mcp --http 127.0.0.1:8765 --token-env LOCUS_MCP_TOKEN

Errors print `error: <message>` on stderr and exit non-zero; stdout belongs to the protocol.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from locus_mcp import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="locus-mcp",
        description="MCP server for locus: routed LLM inference and routing decisions as tools.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="locus config (YAML, TOML or JSON); default: $LOCUS_CONFIG or the "
        "embedded on-device default",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio "
        "(':PORT' binds 127.0.0.1; port 0 picks a free one)",
    )
    parser.add_argument(
        "--token-env",
        metavar="VAR",
        help="HTTP: require 'Authorization: Bearer <token>', the token read from "
        "environment variable VAR",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="HTTP: accept this Host header besides the loopback names "
        "(repeatable; 'name:*' for any port)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="HTTP: accept this Origin header besides loopback origins (repeatable)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=None,
        metavar="N",
        help="HTTP: largest request body accepted (default 1 MiB)",
    )
    parser.add_argument("--version", action="version", version=f"locus-mcp {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from locus_llm.config import load_config

    config = load_config(args.config)  # fail now, with the file and field named, not on a call
    from locus_mcp.server import create_server

    server = create_server(config)
    if args.http is None:
        for flag in ("token_env", "max_body_bytes"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} applies to --http only")
        server.run("stdio")
        return 0
    return serve_http(server, args)


def serve_http(server: object, args: argparse.Namespace) -> int:
    import anyio

    from locus_mcp.http import DEFAULT_MAX_BODY_BYTES, HttpSettings, is_loopback, parse_address
    from locus_mcp.http import serve as serve_app

    host, port = parse_address(args.http)
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ValueError(f"--token-env {args.token_env}: the variable is unset or empty")
    max_body = args.max_body_bytes if args.max_body_bytes is not None else DEFAULT_MAX_BODY_BYTES
    if max_body <= 0:
        raise ValueError("--max-body-bytes must be positive")
    if not is_loopback(host) and token is None:
        print(
            f"locus-mcp: warning: listening on {host} without a token; anyone who can reach "
            "it can run calls (set --token-env)",
            file=sys.stderr,
        )
    settings = HttpSettings(
        host=host,
        port=port,
        token=token,
        allowed_hosts=args.allow_host,
        allowed_origins=args.allow_origin,
        max_body_bytes=max_body,
    )
    anyio.run(serve_app, server, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
