#!/usr/bin/env bash
# Redraw the README's pictures (assets/readme/) with the shipped tiny model, exactly as the README's
# commands make them: run it after the model is retrained. About a minute on 2 CPU cores.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,/^set /p' "$0" | grep "^#" | cut -c3-; exit 0; fi
cd "$(dirname "$0")/.."
OUT=assets/readme
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PROMPT=$(cat assets/examples/prompt.txt)

draw() {  # draw NAME ARGS...: inference.py into a scratch folder, keep only the picture
    local name=$1
    shift
    python inference.py "$@" --output "$TMP/$name" >/dev/null
    mv "$TMP/$name" "$OUT/$name"
}

# the first picture: the shipped example, then its prompt with three colour words swapped (seed 42)
python - "$OUT/mask.png" <<'PY'
import sys
import numpy as np
from PIL import Image
from face_mogle.data.masks import load_label_map
from face_mogle.labels import colorize
Image.fromarray(colorize(load_label_map("assets/examples/mask.png")).astype(np.uint8)).save(sys.argv[1])
PY
draw inference.png --mask assets/examples/mask.png --prompt "$PROMPT"  # = python inference.py
swap() { sed -e "s/black long/$1 long/; s/black shirt/$2 shirt/; s/purple background/$3 background/" <<<"$PROMPT"; }
draw prompt-1.png --mask assets/examples/mask.png --prompt "$(swap red green orange)"
draw prompt-2.png --mask assets/examples/mask.png --prompt "$(swap blond navy blue)"
draw prompt-3.png --mask assets/examples/mask.png --prompt "$(swap gray red green)"
# text only (no mask): the same four prompts
draw text-only.png --prompt "$PROMPT"
draw text-only-1.png --prompt "$(swap red green orange)"
draw text-only-2.png --prompt "$(swap blond navy blue)"
draw text-only-3.png --prompt "$(swap gray red green)"

# editing (README, "Editing a real face")
E=assets/examples/edit
EDIT_PROMPT=$(cat $E/prompt.txt)
draw edit-bob.png --image $E/face.png --source_mask $E/mask.png --mask $E/mask-bob.png \
    --prompt "${EDIT_PROMPT/blond long hair/blond bob-cut hair}"
draw edit-smiling.png --image $E/face.png --source_mask $E/mask.png --mask $E/mask-smiling.png --prompt "$EDIT_PROMPT"
draw edit-red.png --image $E/face.png --source_mask $E/mask.png --regions hair \
    --prompt "${EDIT_PROMPT/blond long hair/red long hair}"
# identity (README, "Identity"): one held-out person under four prompts, each changing one thing
I=assets/examples/identity
ID_PROMPT=$(cat $I/prompt.txt)
if [[ -f checkpoints/face-mogle-tiny/identity.safetensors ]]; then
    draw identity-hair.png --identity $I/face.png --prompt "${ID_PROMPT/brown short hair/blond long hair}"
    draw identity-shirt.png --identity $I/face.png --prompt "${ID_PROMPT/red shirt/green shirt}"
    draw identity-background.png --identity $I/face.png --prompt "${ID_PROMPT/gray background/orange background}"
    draw identity-expression.png --identity $I/face.png --prompt "${ID_PROMPT/dark skin/an open mouth and dark skin}"
else
    echo "the shipped model has no identity tokens (identity.safetensors): identity pictures not drawn" >&2
fi
ls "$OUT"
