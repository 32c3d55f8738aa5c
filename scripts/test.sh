#!/usr/bin/env bash
# Set up, then run every check CI runs: ruff, the import-layer contracts, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff" >&2
.venv/bin/ruff check .
echo "== import layers" >&2
.venv/bin/lint-imports
echo "== tests" >&2
exec .venv/bin/pytest -q "$@"
