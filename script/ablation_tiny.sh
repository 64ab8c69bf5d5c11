#!/usr/bin/env bash
# The MoGLE ablation on the tiny demo (BENCHMARKS.md, "Ablation"): the Face-MoGLE stage of
# script/train_tiny.sh trained again without gating, with the global expert only and with the local
# experts only, on the same budget and data, then the four models scored side by side.
#
#   bash script/ablation_tiny.sh [STEPS] [NUM]
#
# Needs the stages of script/train_tiny.sh (checkpoints/tiny-stages/). STEPS (default: the recipe's
# max_steps) is each run's budget; below that the full model's row is its own checkpoint at STEPS and
# every run holds its rate after warm-up (the recipe's cool-down starts later, so that checkpoint is
# the same run stopped there: keep STEPS a multiple of train.save_interval among the kept checkpoints,
# before the cool-down). NUM held-out faces are scored
# (default 300). Each run resumes where it stopped; the figures go to logs/ablation-STEPS.json.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,/^set /p' "$0" | grep "^#" | cut -c3-; exit 0; fi
cd "$(dirname "$0")/.."
CONFIG=configs/tiny-demo.yaml
RUNS=checkpoints/tiny-stages/runs
FULL_STEPS=$(python -c "from face_mogle.config import load_config; print(load_config('$CONFIG').train.max_steps)")
STEPS=${1:-$FULL_STEPS}
NUM=${2:-300}

FULL=$RUNS/face-mogle-tiny
if [[ ! -f "$FULL/export.json" ]]; then
    echo "error: $FULL has no finished run: run 'bash script/train_tiny.sh' first" >&2
    exit 1
fi
SCHEDULE=()
if [[ "$STEPS" != "$FULL_STEPS" ]]; then
    SCHEDULE=(--set train.optimizer.decay=constant --set train.optimizer.decay_steps=0)
    # the full model at STEPS: its checkpoint, exported in a copy of the run folder
    CUT=$RUNS/face-mogle-tiny-at-$STEPS
    if [[ ! -f "$CUT/export.json" ]]; then
        if [[ ! -d "$FULL/checkpoints/step-$STEPS" ]]; then
            echo "error: $FULL/checkpoints/step-$STEPS not found (kept: $(ls "$FULL/checkpoints" | tr '\n' ' '))" >&2
            exit 1
        fi
        rm -rf "$CUT" && mkdir -p "$CUT/checkpoints"
        cp "$FULL/config.yaml" "$CUT/"
        cp -r "$FULL/checkpoints/step-$STEPS" "$CUT/checkpoints/"
        python train.py --config "$CONFIG" --set "name=face-mogle-tiny-at-$STEPS" --set "train.max_steps=$STEPS" \
            "${SCHEDULE[@]}" --resume latest
    fi
    FULL=$CUT
fi

SUFFIX=$([[ "$STEPS" == "$FULL_STEPS" ]] && echo "" || echo "-$STEPS")
ROWS=("$FULL")
for variant in "no-gating model.has_gating=false" "global-only model.experts=global" "local-only model.experts=local"; do
    read -r tag key <<<"$variant"
    name=face-mogle-tiny-$tag$SUFFIX
    if [[ ! -f "$RUNS/$name/export.json" ]] || ! python - "$RUNS/$name/export.json" "$STEPS" <<'PY'
import json, sys
sys.exit(0 if json.load(open(sys.argv[1]))["step"] == int(sys.argv[2]) else 1)
PY
    then
        # resume from the newest checkpoint; a run stopped before its first one starts again
        if compgen -G "$RUNS/$name/checkpoints/step-*" >/dev/null; then RESUME=(--resume latest)
        elif [[ -e "$RUNS/$name" && ! -e "$RUNS/$name/export.json" ]]; then RESUME=(--overwrite); else RESUME=(); fi
        python train.py --config "$CONFIG" --set "name=$name" --set "$key" --set "train.max_steps=$STEPS" "${SCHEDULE[@]}" \
            "${RESUME[@]}"
    fi
    ROWS+=("$RUNS/$name")
done

mkdir -p logs
python bench/controllability.py --runs "${ROWS[@]}" --modes mask+text --num "$NUM" --swap_num 0 \
    --out "logs/ablation-$STEPS.json"
