"""One face from a prompt and a mask with a trained Face-MoGLE run.

    python inference.py --run runs/face-mogle --prompt "She has blond hair." --mask mask.png --output face.png
    python inference.py --prompt "A man with red hair." --mask mask.png   # the shipped tiny model
    python inference.py          # the shipped tiny model on the shipped example
    python inference.py --image face.png --source_mask mask.png --mask edited_mask.png --prompt TEXT
                                 # edit a real face: regenerate what the edited mask / prompt changes
    python inference.py --run runs/face-mogle-id --identity person.png --prompt "She has red hair."
                                 # that person (a run trained with identity), as the prompt / mask say

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

from face_mogle.cli import add_memory_arguments, memory_overrides


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
    p.add_argument("--cfg_scale", type=float, default=None, help="true classifier-free guidance: w >= 1 pushes away from the prediction without prompt and mask; 1 = off, > 1 costs a second pass per step; given alone it is also the prompt's weight (default: sample.cfg_scale: 2 for the shipped tiny model, 1 for FLUX.1-dev)")
    p.add_argument("--text_cfg_scale", type=float, default=None, help="the prompt's own guidance weight on top of the mask's, >= 1: v_u + cfg·(v_mask − v_u) + text·(v_c − v_mask), a third pass per step with a mask; without a mask it is the only weight (default: sample.text_cfg_scale; unset = --cfg_scale, one joint weight)")
    p.add_argument("--pretrained", default=None, help="FLUX backbone folder or 'tiny', instead of the run config's 'pretrained'")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype (default: the run config's dtype)")
    add_memory_arguments(p)
    p.add_argument("--preset", default=None, metavar="FILE", help="a YAML of config keys applied over the run's config (before --set): configs/official-sampler.yaml samples exactly as the official code does")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run config key, e.g. model.gate_timestep_scale=1000 (the official sampler's gate input) or sample.mask_latent=sample (repeatable)")
    p.add_argument("--gates", action="store_true", help="also write OUTPUT_gates.png, the MoGLE expert map")
    p.add_argument("--identity", default=None, metavar="FACE",
                   help="a reference face (image file): generate that person, with or without --mask / --prompt. Only "
                        "runs trained with identity (model.identity.encoder set) take it; the face goes through the "
                        "run's identity encoder (parse, align, encode), and must show one front-facing face")
    e = p.add_argument_group("editing a real face (with --image)")
    e.add_argument("--image", default=None, metavar="FACE", help="edit this face (square image) instead of generating from noise: "
                   "--mask is the edited mask, --prompt the new description")
    e.add_argument("--source_mask", default=None, metavar="PNG", help="FACE's own mask; default: parsed from FACE by --parser")
    e.add_argument("--source_prompt", default=None, metavar="TEXT", help="FACE's own description, read only by --inversion ode (default: --prompt)")
    e.add_argument("--regions", default=None, metavar="CLASSES", help="comma-separated classes the edit may change besides the "
                   "relabelled pixels, e.g. hair for a text edit 'red hair' with the same mask; none changed = the whole image")
    e.add_argument("--strength", type=float, default=None, help="how much of the schedule is re-run, in (0, 1]; 1 = from pure noise inside the edit area (default: 1.0)")
    e.add_argument("--inversion", choices=["noise", "ode"], default=None, help="start point: noised FACE, or the flow ODE run backwards from FACE "
                   "under its own mask and prompt (default: noise)")
    e.add_argument("--margin", type=int, default=None, help="pixels the edit area grows by, for seams (default: 4)")
    e.add_argument("--no_paste_back", action="store_true", help="keep the decoded pixels outside the edit area instead of FACE's own")
    e.add_argument("--parser", choices=["segformer", "synthfaces"], default=None, help="face parser for a missing --source_mask "
                   "(segformer: the eval suite's, from --weights_dir/face-parsing; synthfaces: SynthFaces' exact colour parser; "
                   "default: the run's data.parser, synthfaces for the shipped model and other runs trained on SynthFaces)")
    e.add_argument("--weights_dir", default="checkpoints/eval", metavar="DIR", help="where the eval suite's models live (default: %(default)s)")
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
    from face_mogle.outputs import check_outputs

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
    edit_only = {"--source_mask": args.source_mask, "--source_prompt": args.source_prompt, "--regions": args.regions,
                 "--strength": args.strength, "--inversion": args.inversion, "--margin": args.margin,
                 "--no_paste_back": args.no_paste_back or None}
    if args.image is None and any(v is not None for v in edit_only.values()):
        raise UsageError(f"{next(k for k, v in edit_only.items() if v is not None)} is an editing option: it needs --image FACE")
    # the run's bound on input images (sample.max_input_pixels), checked on each file's header
    args.max_input_pixels = run_config(args).sample.max_input_pixels
    if args.image is not None:
        check_edit_inputs(args)
    elif args.prompt is None and args.mask is None and args.identity is None:
        raise UsageError("give --prompt, --mask or both, and/or --identity FACE (--prompt \"\" alone is unconditional)")
    if args.identity is not None:
        check_identity(args)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.size is not None and args.size <= 0:
        raise UsageError(f"--size must be positive, got {args.size}")
    if args.condition_scale is not None and not (math.isfinite(args.condition_scale) and args.condition_scale > 0):
        raise UsageError(f"--condition_scale must be a finite number > 0, got {args.condition_scale}")
    if args.cfg_scale is not None and not (math.isfinite(args.cfg_scale) and args.cfg_scale >= 1):
        raise UsageError(f"--cfg_scale must be a finite number >= 1 (1 = off), got {args.cfg_scale}")
    if args.text_cfg_scale is not None and not (math.isfinite(args.text_cfg_scale) and args.text_cfg_scale >= 1):
        raise UsageError(f"--text_cfg_scale must be a finite number >= 1, got {args.text_cfg_scale}")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise UsageError(f"--guidance must be a finite number, got {args.guidance}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in 0..2**63-1, got {args.seed}")
    if args.mask is not None:
        from face_mogle.data.masks import load_label_map

        labels = load_label_map(args.mask, max_pixels=args.max_input_pixels)  # MaskError: one line naming the file and the problem
        if labels.shape[0] != labels.shape[1]:
            raise UsageError(f"--mask {args.mask} is {labels.shape[1]}x{labels.shape[0]}: masks must be square, as the faces")
    out = Path(args.output)
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
    check_outputs(output_paths(args), input_paths(args))


def output_paths(args) -> dict[str, Path]:
    """Every file this run will write, by what it is (write_outputs writes these and no others)."""
    out = Path(args.output)
    paths = {"--output": out, "its settings record": out.with_suffix(".json")}
    if args.gates:
        paths["its expert map"] = out.with_name(out.stem + "_gates.png")
    if args.image is not None and args.source_mask is None:
        paths["its parsed source mask"] = out.with_name(out.stem + "_source_mask.png")
    return paths


def input_paths(args) -> dict[str, list]:
    run = Path(args.run)
    return {"--mask": [args.mask], "--image": [args.image], "--source_mask": [args.source_mask],
            "--identity": [args.identity], "--preset": [args.preset], "--run": [run / name for name in (*RUN_FILES, "mogle.safetensors", "mogle.pt")]}


def run_config(args):
    """The run's config with the --set overrides, read without the heavy imports (the pipeline later
    applies --preset too, and checks every input again)."""
    from face_mogle.config import load_config

    return load_config(Path(args.run) / "config.yaml", args.overrides)


def check_identity(args) -> None:
    """--identity: a readable image, and a run that takes one (both known before the model loads)."""
    from face_mogle.image_files import ImageFileError, open_header

    if args.image is not None:
        raise UsageError("--identity conditions a generation; it does not apply to an edit (--image), which keeps "
                         "the face's own identity")
    encoder = run_config(args).model.identity.encoder
    if encoder is None:
        raise UsageError(f"--identity {args.identity}: run {args.run} was trained without identity "
                         "(model.identity.encoder is null): use a run trained with an identity stage, or leave --identity out")
    try:
        with open_header(args.identity, args.max_input_pixels, "image"):  # size-checked, not decoded
            pass
    except ImageFileError as err:
        raise UsageError(f"--identity {err}") from None


def check_edit_inputs(args) -> None:
    from face_mogle.image_files import ImageFileError, open_header
    from face_mogle.labels import CLASSES

    try:
        with open_header(args.image, args.max_input_pixels, "face") as im:  # size-checked, not decoded
            w, h = im.size
    except ImageFileError as err:
        raise UsageError(f"--image {err}") from None
    if args.gates:
        raise UsageError("--gates draws the expert map of a generation; it does not apply to an edit (--image)")
    if w != h:
        raise UsageError(f"--image {args.image} is {w}x{h}: the face must be square, like its mask")
    if args.source_mask is not None:
        from face_mogle.data.masks import load_label_map

        load_label_map(args.source_mask, max_pixels=args.max_input_pixels)
    if args.strength is not None and not (math.isfinite(args.strength) and 0 < args.strength <= 1):
        raise UsageError(f"--strength must be in (0, 1], got {args.strength}")
    if args.margin is not None and args.margin < 0:
        raise UsageError(f"--margin must be >= 0 pixels, got {args.margin}")
    if args.source_prompt is not None and args.inversion != "ode":
        # the noise inversion re-noises the face itself: a source prompt would be silently unused
        raise UsageError("--source_prompt is read only by --inversion ode (the noise inversion never reads it): "
                         "add --inversion ode, or leave --source_prompt out")
    for r in (args.regions or "").split(","):
        if r.strip() and r.strip() not in CLASSES:
            raise UsageError(f"--regions: unknown class {r.strip()!r}; classes: {', '.join(CLASSES)}")


def warn_unread(pipe, prompt: str, option: str) -> list[str]:
    """The words of `prompt` the text encoder drops, named in a warning (the tiny demo encoder knows
    only SynthFaces caption words)."""
    unread = pipe.unread_words(prompt)
    if unread:
        print(f"inference.py: warning: the text encoder does not read {', '.join(repr(w) for w in unread)} of {option} "
              f"(not in its vocabulary, or past its {pipe.cfg.sample.max_sequence_length} tokens)", file=sys.stderr)
    return unread


def run_edit(args, pipe):
    """--image: edit the face; returns (result, parsed source mask or None)."""
    from face_mogle.editing import (DEFAULT_INVERSION, DEFAULT_MARGIN, DEFAULT_STRENGTH, parse_face)

    parsed = None
    source = args.source_mask
    if source is None:
        args.parser = args.parser or pipe.cfg.data.parser  # the parser of the faces this run was trained on
        parsed = parse_face(args.image, args.parser, args.weights_dir, device=str(pipe.device))
        source = parsed
    regions = [r.strip() for r in (args.regions or "").split(",") if r.strip()]
    result = pipe.edit(
        args.image, source if args.mask is None else args.mask, args.prompt or "", source,
        source_prompts=args.source_prompt, seeds=[args.seed], regions=regions,
        strength=DEFAULT_STRENGTH if args.strength is None else args.strength,
        inversion=args.inversion or DEFAULT_INVERSION, margin=DEFAULT_MARGIN if args.margin is None else args.margin,
        paste_back=not args.no_paste_back, steps=args.steps, guidance=args.guidance,
        condition_scale=args.condition_scale, cfg_scale=args.cfg_scale, text_cfg_scale=args.text_cfg_scale,
        size=args.size, batch_size=1,
    )
    return result, parsed


def write_outputs(args, pipe, result, seconds: float, load_seconds: float, parsed=None, unread=(),
                  source_unread=()) -> list[Path]:
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
    if args.image is not None:
        return write_edit_outputs(args, pipe, result, seconds, load_seconds, out, written, parsed, unread, source_unread)
    record = dict(
        run=str(args.run), run_resolved=str(Path(args.run).resolve()), backbone=pipe.backbone.source,
        prompt=args.prompt or "", unread_words=list(unread),
        mask=None if args.mask is None else str(args.mask), **identity_record(args, pipe), seed=args.seed, steps=s["steps"], guidance=s["guidance"], size=s["size"],
        condition_scale=s["condition_scale"], cfg_scale=s["cfg_scale"], text_cfg_scale=s["text_cfg_scale"],
        gate_timestep_scale=s["gate_timestep_scale"],
        mask_latent=s["mask_latent"], max_sequence_length=s["max_sequence_length"], mode=s["modes"][0],
        device=str(pipe.device), dtype=str(pipe.dtype).removeprefix("torch."), overrides=list(args.overrides), preset=args.preset,
        quantize=pipe.backbone.quantize, offload=pipe.offload,
        global_map=pipe.cfg.model.global_map, local_maps=pipe.cfg.sample.local_maps,
        output=str(out), gates=None if gates_path is None else str(gates_path),
        gate_mean=None if not result.gate_weights else [round(float(v), 6) for v in result.gate_weights[0].mean(0)],
        seconds=round(seconds, 3), load_seconds=round(load_seconds, 3),
    )
    sidecar = out.with_suffix(".json")
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(text))
    return written + [sidecar]


def identity_record(args, pipe) -> dict:
    """The reference face and the encoder that read it (None without --identity)."""
    if args.identity is None:
        return dict(identity=None, identity_encoder=None, identity_weights=None)
    ident = pipe.cfg.model.identity
    weights = pipe.identity_encoder_weights()
    return dict(identity=str(args.identity), identity_encoder=ident.encoder,
                identity_weights=None if weights is None else str(Path(weights).resolve()))


def write_edit_outputs(args, pipe, result, seconds, load_seconds, out: Path, written: list, parsed, unread,
                       source_unread=()) -> list[Path]:
    from face_mogle.data.masks import save_label_map
    from face_mogle.utils import atomic_write

    s = result.settings
    ode = s["inversion"] == "ode"
    parsed_path = None
    if parsed is not None:  # the parser's mask, so the user can check (and reuse) it
        parsed_path = out.with_name(out.stem + "_source_mask.png")
        save_label_map(parsed, parsed_path)  # atomic itself
        written.append(parsed_path)
    record = dict(
        mode="edit", run=str(args.run), run_resolved=str(Path(args.run).resolve()), backbone=pipe.backbone.source,
        image=str(args.image), source_mask=str(args.source_mask) if args.source_mask else f"parsed by {args.parser}: {parsed_path}",
        mask=str(args.mask) if args.mask else "the source mask", prompt=args.prompt or "",
        unread_words=list(unread),
        # the description the inversion reads (ode only: the noise inversion reads none)
        source_prompt=(args.prompt or "" if args.source_prompt is None else args.source_prompt) if ode else None,
        source_unread_words=list(source_unread) if ode else [],
        seed=args.seed, steps=s["steps"], denoised_steps=s["denoised_steps"], guidance=s["guidance"], size=s["size"],
        output_size=s["output_sizes"][0],
        condition_scale=s["condition_scale"], cfg_scale=s["cfg_scale"], text_cfg_scale=s["text_cfg_scale"], strength=s["strength"], inversion=s["inversion"], margin=s["margin"],
        paste_back=s["paste_back"], regions=s["regions"][0], edited_fraction=s["edited_fraction"][0],
        device=str(pipe.device), dtype=str(pipe.dtype).removeprefix("torch."), overrides=list(args.overrides), preset=args.preset,
        quantize=pipe.backbone.quantize, offload=pipe.offload,
        global_map=pipe.cfg.model.global_map, local_maps=pipe.cfg.sample.local_maps,
        output=str(out), seconds=round(seconds, 3), load_seconds=round(load_seconds, 3),
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
    from face_mogle.config import ConfigError
    from face_mogle.data.masks import MaskError
    from face_mogle.image_files import ImageFileError
    from face_mogle.outputs import OutputError

    try:
        check_inputs(args)
    except (UsageError, MaskError, ConfigError, ImageFileError, OutputError) as err:
        print(f"inference.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2

    from face_mogle.pipeline import FaceMoGLEPipeline, one_line, preset_overrides, user_errors

    try:
        start = time.perf_counter()
        pipe = FaceMoGLEPipeline.from_run(args.run, pretrained=args.pretrained, device=args.device,
                                          dtype=args.dtype, overrides=preset_overrides(args.preset) + args.overrides
                                          + memory_overrides(args))
        loaded = time.perf_counter()
        unread = warn_unread(pipe, args.prompt or "", "--prompt")
        # a --source_prompt implies --inversion ode (checked above); without one the ode inversion reads --prompt
        source_unread = unread if args.source_prompt is None else warn_unread(pipe, args.source_prompt, "--source_prompt")
        if args.image is not None:
            result, parsed = run_edit(args, pipe)
        else:
            parsed = None
            result = pipe(args.prompt or "", args.mask, seeds=[args.seed], steps=args.steps, guidance=args.guidance,
                          condition_scale=args.condition_scale, cfg_scale=args.cfg_scale,
                          text_cfg_scale=args.text_cfg_scale, size=args.size, batch_size=1, return_gates=args.gates,
                          identities=None if args.identity is None else [args.identity])
        seconds = time.perf_counter() - loaded
        written = write_outputs(args, pipe, result, seconds, loaded - start, parsed, unread, source_unread)
    except user_errors() as err:
        print(f"inference.py: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while writing
        print(f"inference.py: error: cannot write {getattr(err, 'filename', None) or args.output}: {err.strerror or err}", file=sys.stderr)
        return 1
    s = result.settings
    mode = f"edit, {s['edited_fraction'][0]:.0%} of the image editable" if args.image is not None else s["modes"][0]
    side = s.get("output_sizes", [s["size"]])[0]  # an edit comes back at the input face's size
    shape = f"{side}x{side}" + (f" (generated at {s['size']})" if side != s["size"] else "")
    print(f"wrote {', '.join(str(p) for p in written)} ({mode}, {shape}, "
          f"{s['steps']} steps, seed {args.seed}, {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
