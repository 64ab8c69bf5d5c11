#!/usr/bin/env bash
# Train Face-MoGLE with accelerate.  Usage: bash script/train_face-mogle.sh [CONFIG] [extra train.py args]
#   ACCELERATE_CONFIG=configs/accelerate/multi_gpu.yaml bash script/train_face-mogle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/face-mogle.yaml}"
shift || true
ARGS=()
if [[ -n "${ACCELERATE_CONFIG:-}" ]]; then ARGS+=(--config_file "$ACCELERATE_CONFIG"); fi
exec accelerate launch "${ARGS[@]}" train.py --config "$CONFIG" "$@"
