#!/usr/bin/env bash
# Set up (idempotent) and run the service on http://127.0.0.1:8080 (pass --host/--port to change).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rxstream serve "$@"
