#!/usr/bin/env bash
# Regenerate every benchmark result and docs/benchmarks.md. Pass --quick for the short versions.
set -euo pipefail
cd "$(dirname "$0")/.."
RAY_AUTH_MODE=disabled exec .venv/bin/python -m benchmarks "$@"
