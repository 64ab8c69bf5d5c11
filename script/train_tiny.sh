#!/usr/bin/env bash
# Reproduce the shipped tiny Face-MoGLE (checkpoints/face-mogle-tiny/) with the project's own scripts:
#   SynthFaces → (1) a small 16-channel VAE → (1b) text encoders pre-trained to bind words to
#   attributes → (2) a base text-to-image DiT → (3) Face-MoGLE (LoRA + MoGLE) → (3b) an identity
#   encoder on SynthFaces identities → (4) Face-MoGLE with identity tokens, from stage 3's weights.
# Runs on a CPU (the base stage alone: about 3 hours on 2 quiet cores, 8,000 steps at 1.3 s) or a GPU. Extra arguments go to every train.py call.
# Each stage writes its own folder under checkpoints/tiny-stages/; re-running skips finished stages
# and resumes the DiT stages from their latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGES=checkpoints/tiny-stages
DATA=data/synthfaces-128
ID_DATA=data/synthfaces-id-128  # 1,000 people x 5 renders with expressions (the last 200 held out)

if [[ ! -f "$DATA/text.json" ]]; then
    python script/make_synthfaces.py --out "$DATA" --num 5000 --size 128 --seed 0
fi

# (1) VAE → a whole FLUX-layout backbone folder (random tiny transformer and text encoders)
# (skipped once the text stage's backbone exists: it holds the trained VAE)
if [[ ! -f "$STAGES/backbone-vae/model_index.json" && ! -f "$STAGES/backbone-text/model_index.json" ]]; then
    python -m face_mogle.training.vae --data "$DATA" --out "$STAGES/backbone-vae" --size 128 --steps 3000 --batch_size 16
fi

# (1b) text encoders: T5 tags each colour word with the part it describes, CLIP's pooled vector names
# every colour (FLUX reads the caption as a bag of T5 vectors: the binding must be in them)
if [[ ! -f "$STAGES/backbone-text/model_index.json" ]]; then
    python -m face_mogle.training.text_encoders --data "$DATA" --backbone "$STAGES/backbone-vae" \
        --out "$STAGES/backbone-text" --steps 1500
fi

# how train.py continues RUN: from its newest checkpoint, afresh if it stopped before the first
# one (a finished run without checkpoints is left for train.py to refuse)
resume_args() {
    if compgen -G "$1/checkpoints/step-*" >/dev/null; then RESUME=(--resume latest)
    elif [[ -e "$1" && ! -e "$1/export.json" ]]; then RESUME=(--overwrite); else RESUME=(); fi
}

# (2) base DiT: full training of the transformer as plain text-to-image, from a cache of the faces
# and captions (the VAE and text encoders are stage 1b's: they never change after it)
python -m face_mogle.data.cache --config configs/tiny-demo-base.yaml --split train
BASE_RUN="$STAGES/runs/tiny-demo-base"
resume_args "$BASE_RUN"
python train.py --config configs/tiny-demo-base.yaml "${RESUME[@]}" "$@"
rm -rf "$STAGES/backbone-base.tmp"
cp -r "$STAGES/backbone-text" "$STAGES/backbone-base.tmp"
rm -rf "$STAGES/backbone-base.tmp/transformer"
cp -r "$BASE_RUN/transformer" "$STAGES/backbone-base.tmp/transformer"
rm -rf "$STAGES/backbone-base" && mv "$STAGES/backbone-base.tmp" "$STAGES/backbone-base"

# (3) Face-MoGLE on the frozen base, from the latent cache
python -m face_mogle.data.cache --config configs/tiny-demo.yaml --split train
MOGLE_RUN="$STAGES/runs/face-mogle-tiny"
resume_args "$MOGLE_RUN"
python train.py --config configs/tiny-demo.yaml "${RESUME[@]}" "$@"

# (3b) the SynthFaces identity encoder: contrastive over the identities of ID_DATA's training split
if [[ ! -f "$ID_DATA/text.json" ]]; then
    python script/make_synthfaces.py --out "$ID_DATA" --identities 1000 --per_identity 5 --size 128 \
        --expressions --test_fraction 0.2 --seed 0
fi
if [[ ! -f "$STAGES/identity-encoder/encoder.json" ]]; then
    python -m face_mogle.identity.train_encoder --root "$ID_DATA" --out "$STAGES/identity-encoder" --steps 2000
fi

# (4) identity: Face-MoGLE goes on from stage 3 with identity tokens, on pairs of renders of one person
python -m face_mogle.data.cache --config configs/tiny-demo-identity.yaml --split train
ID_RUN="$STAGES/runs/face-mogle-tiny-identity"
resume_args "$ID_RUN"
python train.py --config configs/tiny-demo-identity.yaml "${RESUME[@]}" "$@"

# ship: run folder + its backbone and identity encoder, with the config pointing at the shipped copies
OUT=checkpoints/face-mogle-tiny
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
cp "$ID_RUN/pytorch_lora_weights.safetensors" "$ID_RUN/mogle.safetensors" "$ID_RUN/identity.safetensors" "$OUT.tmp/"
cp -r "$STAGES/backbone-base" "$OUT.tmp/backbone"
# the encoder in float16 (half its bytes; the shipped folder stays under 30 MB)
python -c 'import sys, torch; from face_mogle.identity import load_synthfaces_encoder as load
load(sys.argv[1]).save(sys.argv[2], dtype=torch.float16)' "$STAGES/identity-encoder" "$OUT.tmp/identity-encoder"
python - "$ID_RUN/config.yaml" "$OUT.tmp/config.yaml" <<'PY'
import sys
from face_mogle.config import load_config, save_config
cfg = load_config(sys.argv[1], ["pretrained=checkpoints/face-mogle-tiny/backbone", "data.cache_dir=null",
                                "model.identity.weights=checkpoints/face-mogle-tiny/identity-encoder",
                                "train.init_from=null"])
save_config(cfg, sys.argv[2])
PY
# the model card and the CI floors are written from the benchmark (bench/controllability.py): keep them
for f in README.md ci_floors.json; do
    if [[ -f "$OUT/$f" ]]; then cp "$OUT/$f" "$OUT.tmp/$f"; fi
done
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
du -sh "$OUT"
echo "shipped: $OUT (try: python inference.py)"
