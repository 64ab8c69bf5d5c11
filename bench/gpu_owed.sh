#!/usr/bin/env bash
# The FLUX.1-dev-sized GPU figures BENCHMARKS.md still owes, in one prepared run on a CUDA machine:
# bench/train.py, bench/sample.py and bench/memory.py with --flux-size, each under its own time limit
# (one slow bench must not take the others' time). Logs and JSON land in $OUT (default bench-out/).
#
# A GPU image without this project's extra packages takes them as wheels from .whl/ (not committed).
# Fetch them on a machine with pip and network first (Python 3.12, x86-64; versions as installed here):
#   bash bench/gpu_owed.sh --wheels
# then on the GPU machine (the device tool here: carry .whl, timeout_s 600):
#   bash bench/gpu_owed.sh
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 torchao==0.18.0 bitsandbytes==0.50.2 gguf==0.19.0 prodigyopt==1.1.2)

if [[ "${1:-}" == "--wheels" ]]; then
    mkdir -p .whl
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    for w in "${WHEELS[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$w" \
            || echo "could not fetch $w (its bench rows will say the package is missing)"
    done
    # bitsandbytes carries a library per CUDA and ROCm version (43 MB); the GPU image's torch is built for
    # CUDA 13, and the whole tree that travels to the device is capped at 64 MiB: keep CUDA 13's
    for w in .whl/bitsandbytes-*.whl; do
        [[ -f "$w" ]] && zip -q -d "$w" 'bitsandbytes/libbitsandbytes_cuda11*' 'bitsandbytes/libbitsandbytes_cuda12*' \
            'bitsandbytes/libbitsandbytes_rocm*' || true
    done
    du -sh .whl
    exit 0
fi

OUT=${OUT:-bench-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the wheels in .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)' | tee -a "$OUT/gpu.txt"

# limits (seconds) sum to under 10 minutes, one device call
timeout 150 python3 bench/train.py --flux-size 2>&1 | tee "$OUT/train.log"
timeout 120 python3 bench/sample.py --flux-size --out "$OUT/sample.json" 2>&1 | tee "$OUT/sample.log"
timeout 270 python3 bench/memory.py --flux-size 2>&1 | tee "$OUT/memory.log"
