#!/usr/bin/env bash
# The official MCP conformance suite against `locus-mcp --http`, for the scenarios that apply to
# any server. Installs @modelcontextprotocol/conformance (0.1.13: the last that runs on Node 20)
# into .ci/node/ (git-ignored) on first use. Exits non-zero if any scenario fails.
#
#   .ci/conformance.sh                 # all five scenarios
#   .ci/conformance.sh ping tools-list # some
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_DIR="$ROOT/.ci/node"
VERSION="0.1.13"
LOCUS_MCP="${LOCUS_MCP:-$ROOT/.venv/bin/locus-mcp}"
SCENARIOS=("$@")
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  SCENARIOS=(server-initialize ping tools-list logging-set-level dns-rebinding-protection)
fi

mkdir -p "$NODE_DIR"
if [ ! -f "$NODE_DIR/.gitignore" ]; then
  printf '*\n!.gitignore\n' > "$NODE_DIR/.gitignore"
fi
CONFORMANCE="$NODE_DIR/node_modules/.bin/conformance"
installed="$(node -p "require('$NODE_DIR/node_modules/@modelcontextprotocol/conformance/package.json').version" 2>/dev/null || true)"
if [ "$installed" != "$VERSION" ]; then
  echo "conformance: installing @modelcontextprotocol/conformance@$VERSION into $NODE_DIR"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/conformance@$VERSION" >/dev/null
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Loopback, a port the OS picks; the server prints its URL on stderr once it listens.
"$LOCUS_MCP" --http 127.0.0.1:0 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
URL=""
for _ in $(seq 1 600); do
  URL="$(sed -n 's/.*streamable HTTP on \(http:[^ ]*\).*/\1/p' "$WORK/server.log" | head -n1)"
  [ -n "$URL" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$URL" ]; then
  echo "conformance: locus-mcp did not start:" >&2
  cat "$WORK/server.log" >&2
  exit 1
fi
echo "conformance: locus-mcp at $URL"

failed=()
for scenario in "${SCENARIOS[@]}"; do
  if "$CONFORMANCE" server --url "$URL" --scenario "$scenario" >"$WORK/$scenario.out" 2>&1 \
    && ! grep -q "FAILURE\|Failed: [1-9]" "$WORK/$scenario.out"; then
    echo "conformance: $scenario passed"
  else
    echo "conformance: $scenario FAILED" >&2
    cat "$WORK/$scenario.out" >&2
    failed+=("$scenario")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "conformance: ${#failed[@]} of ${#SCENARIOS[@]} scenarios failed: ${failed[*]}" >&2
  exit 1
fi
echo "conformance: all ${#SCENARIOS[@]} scenarios passed"
