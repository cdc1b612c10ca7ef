#!/usr/bin/env bash
# Set up (idempotent, incl. chromium and test tools) and run the whole test suite, lint first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check .
export GLOG_minloglevel=2 TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q -ra "$@"
