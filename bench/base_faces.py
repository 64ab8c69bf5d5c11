"""Text-only faces of the base DiT alone, checkpoint by checkpoint (the demo recipe's stage 2).

    python bench/base_faces.py --checkpoints checkpoints/tiny-stages/runs/tiny-demo-base/checkpoints/step-{2000,4000} \
        [--run checkpoints/face-mogle-tiny] [--num 100] [--out base_faces.json]

Each checkpoint (a training checkpoint of a `train.mode: base` run, or a transformer folder) replaces
the base transformer under the run's LoRA; the run then samples text-only with `sample.text_only:
base` (LoRA off, no condition tokens: the base DiT alone, with the run's sampler settings) on the
first captions of held-out SynthFaces, scored as `bench/controllability.py` scores its text rows:
face validity (whole faces), attribute accuracy (the caption's colours). With `--run` alone (no
checkpoints) it scores the run's own base, the same as `controllability.py --text_only base`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _controllability():
    spec = importlib.util.spec_from_file_location("controllability", HERE / "controllability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_weights(path: Path) -> dict:
    """The transformer's weights from a base-mode training checkpoint or a transformer folder."""
    from face_mogle.utils import read_safetensors

    if (path / "trainable.safetensors").is_file():  # BaseTextToImage names them transformer.*
        return {k.removeprefix("transformer."): v for k, v in read_safetensors(path / "trainable.safetensors").items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"error: {path} holds neither trainable.safetensors (a training checkpoint) nor a "
                         "transformer's *.safetensors")
    out = {}
    for f in files:
        out.update(read_safetensors(f))
    return out


def load_base_into(transformer, weights: dict, where: Path) -> None:
    """Copy base weights under peft's LoRA wrappers (`x.weight` sits at `x.base_layer.weight` there)."""
    import torch

    params = dict(transformer.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            target = params.get(name)
            if target is None:
                head, _, leaf = name.rpartition(".")
                target = params.get(f"{head}.base_layer.{leaf}")
            if target is None or target.shape != value.shape:
                raise SystemExit(f"error: {where}: {name} {tuple(value.shape)} does not fit the run's transformer")
            target.copy_(value.to(target.dtype))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="checkpoints/face-mogle-tiny", help="run whose sampler, VAE and text encoders are used")
    p.add_argument("--checkpoints", nargs="*", default=[], type=Path, help="base checkpoints or transformer folders")
    p.add_argument("--root", default="data/synthfaces-128", type=Path, help="SynthFaces data root")
    p.add_argument("--split", default="splits/test.txt", help="held-out ids (the first --num are used)")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    p.add_argument("--batch_size", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from face_mogle.data.dataset import read_split
    from face_mogle.pipeline import FaceMoGLEPipeline

    bench = _controllability()
    pipe = FaceMoGLEPipeline.from_run(args.run, device="cpu")
    ids = read_split(args.root, args.split)[: args.num]
    rows = {}
    for ckpt in args.checkpoints or [None]:
        name = "run's own base" if ckpt is None else str(ckpt)
        if ckpt is not None:
            load_base_into(pipe.backbone.transformer, base_weights(ckpt), ckpt)
        r = bench.evaluate(pipe, args.root, ids, ["text"], args.steps, args.batch_size, args.seed,
                           text_only=["base"])["text [base]"]
        rows[name] = r
        fails = ", ".join(f"{k} {v}" for k, v in sorted(r["validity_failures"].items(), key=lambda kv: -kv[1])[:2])
        print(f"{name}: face validity {r['face_validity']:.3f}, attribute accuracy {r['attribute_accuracy']:.3f} "
              f"({r['images']} faces, {r['seconds']:.0f} s; commonest failures: {fails or 'none'})", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
