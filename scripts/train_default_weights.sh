#!/usr/bin/env bash
# Reproduce the shipped default weights in models/weights/ (see models/weights/README.md).
#
#   scripts/train_default_weights.sh [autoencoder|restorer|generator ...]   (default: all three)
#
# Trains each model with models/configs/shipped/<model>.json (fixed step counts and seeds, 1 CPU thread
# each: on a 2-core machine the three ran side by side in about 70–100 minutes), publishes the EMA
# weights, and evaluates them on the held-out split (report JSON beside the weights; the contact sheet,
# which shows faces from the shared data, stays under runs/). Needs ../shared/data and the landmarker
# model (scripts/setup.sh). Set RUNS to change where runs go (default ~/.cache/rxstream/runs).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-$HOME/.cache/rxstream/runs}
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(autoencoder restorer generator)
py=.venv/bin/rxstream
for m in "${models[@]}"; do
  "$py" train "$m" --config "models/configs/shipped/$m.json" --out "$RUNS/$m" --no-progress &
done
wait
declare -A name=([autoencoder]=style_autoencoder [restorer]=restorer [generator]=generator)
for m in "${models[@]}"; do
  ckpt=$(ls "$RUNS/$m"/checkpoints/step_*.pt | tail -n 1)
  "$py" publish "$ckpt" --out models/weights
  "$py" eval "$m" --weights "$ckpt" --out "$RUNS/$m/eval" --n 128 > /dev/null
  cp "$RUNS/$m/eval/report.json" "models/weights/${name[$m]}.eval.json"
done
