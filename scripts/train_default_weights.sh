#!/usr/bin/env bash
# Reproduce the shipped default weights in models/weights/ (see models/weights/README.md).
#
#   scripts/train_default_weights.sh [autoencoder|restorer|generator ...]   (default: all three)
#
# Trains each model with models/configs/shipped/<model>.json (fixed step counts and seeds, 1 CPU thread
# each: on a 2-core machine the three ran side by side in about 70–100 minutes), then, where a
# <model>_finetune.json exists (the restorer: 4455 more steps, ~75 min alone), fine-tunes the first run's
# published weights with it (`rxstream train --init`), publishes the EMA
# weights, and evaluates them on the held-out split (report JSON beside the weights; the contact sheet,
# which shows faces from the shared data, stays under runs/). Needs ../shared/data and the landmarker
# model (scripts/setup.sh). Set RUNS to change where runs go (default ~/.cache/rxstream/runs).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-$HOME/.cache/rxstream/runs}
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(autoencoder restorer generator)
py=.venv/bin/rxstream
last_checkpoint() { ls "$1"/checkpoints/step_*.pt | tail -n 1; }
train() {
  "$py" train "$1" --config "models/configs/shipped/$1.json" --out "$RUNS/$1" --no-progress
  if [ -f "models/configs/shipped/$1_finetune.json" ]; then
    # Second run, started from the first one's published (EMA) weights with a fresh optimiser and its own
    # config (the restorer: half of the samples at fidelity 1, two threads, trained alone on the machine).
    "$py" publish "$(last_checkpoint "$RUNS/$1")" --out "$RUNS/$1_base_weights" > /dev/null
    "$py" train "$1" --config "models/configs/shipped/$1_finetune.json" --out "$RUNS/$1_finetune" \
      --init "$RUNS/$1_base_weights/${name[$1]}.pt" --no-progress
  fi
}
final_run() { [ -f "models/configs/shipped/$1_finetune.json" ] && echo "$RUNS/$1_finetune" || echo "$RUNS/$1"; }
declare -A name=([autoencoder]=style_autoencoder [restorer]=restorer [generator]=generator)
for m in "${models[@]}"; do
  train "$m" &
done
wait
for m in "${models[@]}"; do
  ckpt=$(last_checkpoint "$(final_run "$m")")
  "$py" publish "$ckpt" --out models/weights
  extra=(); [ "$m" = restorer ] && extra=(--fidelity 1)  # judged at the reconstruction end of its control
  "$py" eval "$m" --weights "$ckpt" --out "$(final_run "$m")/eval" --n 128 "${extra[@]}" > /dev/null
  cp "$(final_run "$m")/eval/report.json" "models/weights/${name[$m]}.eval.json"
done
