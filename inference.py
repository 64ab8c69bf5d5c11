"""One face from a prompt and a mask with a trained Face-MoGLE run.

    python inference.py --run runs/face-mogle --prompt "She has blond hair." --mask mask.png --output face.png
    python inference.py --prompt "A man with red hair." --mask mask.png   # the shipped tiny model
    python inference.py          # the shipped tiny model on the shipped example

Writes the image (atomically), OUTPUT.json with every setting used, and with --gates
OUTPUT_gates.png: per image token the expert the MoGLE gate weighted most (grey = global expert,
palette colour = that class's local expert), averaged over the denoising steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (exit 2), like every other input error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


HERE = Path(__file__).resolve().parent
DEMO_RUN = HERE / "checkpoints" / "face-mogle-tiny"
DEMO_MASK = HERE / "assets" / "examples" / "mask.png"
DEMO_PROMPT = HERE / "assets" / "examples" / "prompt.txt"
DEMO_OUTPUT = Path("outputs") / "inference.png"  # under the current folder, as every other output
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
RUN_FILES = ("config.yaml", "pytorch_lora_weights.safetensors")


class UsageError(ValueError):
    pass


def parse_args(argv):
    p = OneLineParser(
        description="Generate one face from a text prompt and a semantic face mask with a Face-MoGLE run. "
        "With no arguments at all: the shipped tiny model (checkpoints/face-mogle-tiny/) on the shipped "
        "example (assets/examples/), written to outputs/inference.png.",
    )
    p.add_argument("--run", help="run folder: config.yaml, pytorch_lora_weights.safetensors, mogle.safetensors (or mogle.pt); "
                   "default: the shipped tiny model, checkpoints/face-mogle-tiny/")
    p.add_argument("--prompt", default=None, help="text prompt; \"\" or leaving it out with --mask = mask-only mode")
    p.add_argument("--mask", default=None, help="label-map PNG (values 0..18, or coloured with the CelebAMask-HQ palette); leaving it out = text-only mode")
    p.add_argument("--output", default="outputs/inference.png", help="image to write (.png, .jpg or .webp); OUTPUT.json beside it records the settings")
    p.add_argument("--seed", type=int, default=42, help="noise seed (default: 42)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the run config's sample.steps)")
    p.add_argument("--guidance", type=float, default=None, help="embedded guidance (default: sample.guidance)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels, a multiple of the backbone's token size (16 for FLUX; default: sample.size)")
    p.add_argument("--condition_scale", type=float, default=None, help="mask strength: log(scale) biases image<->mask attention; > 0 (default: sample.condition_scale)")
    p.add_argument("--pretrained", default=None, help="FLUX backbone folder or 'tiny', instead of the run config's 'pretrained'")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype (default: the run config's dtype)")
    p.add_argument("--preset", default=None, metavar="FILE", help="a YAML of config keys applied over the run's config (before --set): configs/official-sampler.yaml samples exactly as the official code does")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run config key, e.g. model.gate_timestep_scale=1000 (the official sampler's gate input) or sample.mask_latent=sample (repeatable)")
    p.add_argument("--gates", action="store_true", help="also write OUTPUT_gates.png, the MoGLE expert map")
    return p.parse_args(argv)


def demo_args(argv):
    """No arguments: the shipped tiny model on the shipped example, or a one-line pointer."""
    if not (DEMO_RUN / "config.yaml").is_file():
        raise UsageError(
            f"the no-argument demo needs the tiny model run folder {DEMO_RUN.relative_to(HERE)}/ "
            "(not found: restore it with `git checkout checkpoints/face-mogle-tiny`, or remake it with `bash script/train_tiny.sh`): or pass your own run with --run RUN --prompt TEXT --mask PNG --output PNG"
        )
    prompt = DEMO_PROMPT.read_text().strip() if DEMO_PROMPT.is_file() else ""
    return parse_args(["--run", str(DEMO_RUN), "--mask", str(DEMO_MASK), "--prompt", prompt,
                       "--output", str(DEMO_OUTPUT)])


def check_inputs(args) -> None:
    """Everything that can be checked before loading a model."""
    if not args.run:
        if not (DEMO_RUN / "config.yaml").is_file():
            raise UsageError(f"no --run given and the shipped tiny model {DEMO_RUN} is missing: pass --run RUN "
                             "(a run folder with config.yaml and the weights)")
        args.run = str(DEMO_RUN)
    run = Path(args.run)
    if not run.is_dir():
        raise UsageError(f"run folder not found: {run}")
    for name in RUN_FILES:
        if not (run / name).is_file():
            raise UsageError(f"run folder {run} is incomplete: missing {name}")
    if not ((run / "mogle.safetensors").is_file() or (run / "mogle.pt").is_file()):
        raise UsageError(f"run folder {run} is incomplete: missing mogle.safetensors")
    if args.prompt is None and args.mask is None:
        raise UsageError("give --prompt, --mask or both (--prompt \"\" with no mask is unconditional)")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.size is not None and args.size <= 0:
        raise UsageError(f"--size must be positive, got {args.size}")
    if args.condition_scale is not None and not (math.isfinite(args.condition_scale) and args.condition_scale > 0):
        raise UsageError(f"--condition_scale must be a finite number > 0, got {args.condition_scale}")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise UsageError(f"--guidance must be a finite number, got {args.guidance}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in 0..2**63-1, got {args.seed}")
    if args.mask is not None:
        from face_mogle.data.masks import load_label_map

        load_label_map(args.mask)  # MaskError: one line naming the file and the problem
    out = Path(args.output)
    if args.mask is not None and out.resolve() == Path(args.mask).resolve():
        raise UsageError(f"--output {out} is the input mask: it would be overwritten; write elsewhere")
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"--output must end in {', '.join(FORMATS)}; got {out}")
    if out.is_dir():
        raise UsageError(f"--output {out} is a folder; give a file name such as {out / 'face.png'}")
    blocker = next((d for d in [out.parent, *out.parent.parents] if d.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UsageError(f"cannot write {out}: {blocker} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the output folder {out.parent}: {err.strerror or err}") from None
    try:  # a real probe: permission bits say little for root or special file systems
        import tempfile

        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".probe-", suffix=".tmp"):
            pass
    except OSError as err:
        raise UsageError(f"output {out} is not writable: {err.strerror or err}") from None


def write_outputs(args, pipe, result, seconds: float, load_seconds: float) -> list[Path]:
    from face_mogle.utils import atomic_write

    out = Path(args.output)
    fmt = FORMATS[out.suffix.lower()]
    image = result.images[0]
    atomic_write(out, lambda tmp: image.save(tmp, format=fmt))
    written = [out]
    gates_path = None
    if args.gates:
        if result.expert_maps:
            gates_path = out.with_name(out.stem + "_gates.png")
            atomic_write(gates_path, lambda tmp: result.expert_maps[0].save(tmp, format="PNG"))
            written.append(gates_path)
        else:
            print("inference.py: this model has no gating network (model.has_gating: false): no expert map", file=sys.stderr)
    s = result.settings
    record = dict(
        run=str(args.run), run_resolved=str(Path(args.run).resolve()), backbone=pipe.backbone.source,
        prompt=args.prompt or "", mask=None if args.mask is None else str(args.mask),
        seed=args.seed, steps=s["steps"], guidance=s["guidance"], size=s["size"],
        condition_scale=s["condition_scale"], gate_timestep_scale=s["gate_timestep_scale"],
        mask_latent=s["mask_latent"], max_sequence_length=s["max_sequence_length"], mode=s["modes"][0],
        device=str(pipe.device), dtype=str(pipe.dtype).removeprefix("torch."), overrides=list(args.overrides), preset=args.preset,
        global_map=pipe.cfg.model.global_map, local_maps=pipe.cfg.sample.local_maps,
        output=str(out), gates=None if gates_path is None else str(gates_path),
        gate_mean=None if not result.gate_weights else [round(float(v), 6) for v in result.gate_weights[0].mean(0)],
        seconds=round(seconds, 3), load_seconds=round(load_seconds, 3),
    )
    sidecar = out.with_suffix(".json")
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(text))
    return written + [sidecar]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        args = demo_args(argv) if not argv else parse_args(argv)
    except UsageError as err:  # before any heavy import: this answer is instant
        print(f"inference.py: error: {err}", file=sys.stderr)
        return 2
    from face_mogle.data.masks import MaskError

    try:
        check_inputs(args)
    except (UsageError, MaskError) as err:
        print(f"inference.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2

    from face_mogle.pipeline import FaceMoGLEPipeline, one_line, preset_overrides, user_errors

    try:
        start = time.perf_counter()
        pipe = FaceMoGLEPipeline.from_run(args.run, pretrained=args.pretrained, device=args.device,
                                          dtype=args.dtype, overrides=preset_overrides(args.preset) + args.overrides)
        loaded = time.perf_counter()
        result = pipe(args.prompt or "", args.mask, seeds=[args.seed], steps=args.steps, guidance=args.guidance,
                      condition_scale=args.condition_scale, size=args.size, batch_size=1, return_gates=args.gates)
        seconds = time.perf_counter() - loaded
        written = write_outputs(args, pipe, result, seconds, loaded - start)
    except user_errors() as err:
        print(f"inference.py: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while writing
        print(f"inference.py: error: cannot write {getattr(err, 'filename', None) or args.output}: {err.strerror or err}", file=sys.stderr)
        return 1
    s = result.settings
    print(f"wrote {', '.join(str(p) for p in written)} ({s['modes'][0]}, {s['size']}x{s['size']}, "
          f"{s['steps']} steps, seed {args.seed}, {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
