#!/usr/bin/env bash
# The paper's results table for a run, in one command (resumable: rerun it after an interruption):
#     bash script/eval_paper.sh RUN [DATA_ROOT]
# 1. test.py: one face per id of the test split (the 3,000 MM-CelebA-HQ test ids), 512², 28 steps,
#    guidance 3.5, sampled as the official code does (configs/official-sampler.yaml), each id seeded
#    from (seed, id): an interrupted run continues where it stopped;
# 2. python -m face_mogle.eval: FID, KID, CLIP score, CMMD, DINO structure, ImageReward against the
#    real test faces (weights under checkpoints/eval/, see the README's Evaluation section);
# 3. the table in the order of the official evaluation: OUT/table.md and OUT/table.json.
# Environment overrides: OUT (default outputs/paper/RUN_NAME), SPLIT (test; 'all' for the zero-shot
# MM-FFHQ-Female), SIZE (512), STEPS (28), GUIDANCE (3.5), PRESET (configs/official-sampler.yaml;
# empty = this project's sampler), METRICS (fid,kid,clip,cmmd,dino,ir), WEIGHTS_DIR (checkpoints/eval),
# BATCH_SIZE (4), DEVICE (auto).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: bash script/eval_paper.sh RUN [DATA_ROOT]   (DATA_ROOT defaults to data/mmcelebahq)" >&2
    exit 2
fi
RUN=$1
ROOT=${2:-data/mmcelebahq}
OUT=${OUT:-outputs/paper/$(basename "$RUN")}
PRESET=${PRESET-configs/official-sampler.yaml}
PRESET_ARGS=()
if [[ -n "$PRESET" ]]; then PRESET_ARGS=(--preset "$PRESET"); fi
DEVICE_ARGS=()
if [[ -n "${DEVICE:-}" ]]; then DEVICE_ARGS=(--device "$DEVICE"); fi

python test.py --run "$RUN" --root "$ROOT" --split "${SPLIT:-test}" --output_dir "$OUT/images" \
    --size "${SIZE:-512}" --steps "${STEPS:-28}" --guidance "${GUIDANCE:-3.5}" \
    --batch_size "${BATCH_SIZE:-4}" "${PRESET_ARGS[@]}" "${DEVICE_ARGS[@]}"
python -m face_mogle.eval --fake "$OUT/images" --real "$ROOT" --metrics "${METRICS:-fid,kid,clip,cmmd,dino,ir}" \
    --size "${SIZE:-512}" --weights_dir "${WEIGHTS_DIR:-checkpoints/eval}" --out "$OUT/results.json" "${DEVICE_ARGS[@]}"
python -m face_mogle.eval.paper "$OUT/results.json" --name "$(basename "$RUN")" --md "$OUT/table.md" --json "$OUT/table.json"
