"""Generate a face for every image of a test split with a trained Face-MoGLE run.

    python test.py --run runs/face-mogle --root data/mmcelebahq --split test --output_dir outputs/test
    python test.py --run runs/face-mogle-id --root data/synthfaces-id --identity_root refs/ --output_dir outputs/people

Writes OUT/face/{id}.jpg, OUT/text/{id}.txt (the caption used: the image's first) and
OUT/manifest.json. Image `id` is seeded from (seed, id): runs resume (existing faces are skipped)
and shard (`--shard i/n`; automatic by RANK under `torchrun` / `accelerate launch`). With
--identity_root each id is also the person of its reference face DIR/{id}.png.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from face_mogle.cli import add_memory_arguments, memory_overrides


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (exit 2), like every other input error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None):
    p = OneLineParser(
        description="Generate faces for a data split (MM-CelebA-HQ layout) with a Face-MoGLE run folder.",
    )
    p.add_argument("--run", required=True, help="run folder: config.yaml, pytorch_lora_weights.safetensors, mogle.safetensors (or mogle.pt)")
    p.add_argument("--root", default=None, help="data root with mask/{id}.png and text.json or text/{id}.txt (default: the run config's data.root)")
    p.add_argument("--split", default="test", help="'test' or 'train' (the config's data.test_split / data.train_split), 'all' (every id with a mask in --root, e.g. the zero-shot MM-FFHQ-Female), or a split itself: 'START-END' or an id-list file relative to --root (default: test)")
    p.add_argument("--output_dir", required=True, help="where face/, text/ and manifest.json go; ids already in face/ are skipped")
    p.add_argument("--identity_root", default=None, metavar="DIR",
                   help="generate given people (runs trained with identity only): DIR/{id}.png (or .jpg, .jpeg, .webp) is "
                        "the reference face of image id; every id generated needs one (the missing ones are listed "
                        "before any work). Recorded in the manifest: resuming with another DIR is refused")
    p.add_argument("--batch_size", type=int, default=4, help="images per forward pass (default: 4)")
    p.add_argument("--limit", type=int, default=None, help="only the first N ids of the split (applied before sharding)")
    p.add_argument("--seed", type=int, default=None, help="base seed; image id i uses seed * 1000003 + i (default: the config's seed)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the config's sample.steps)")
    p.add_argument("--guidance", type=float, default=None, help="embedded guidance (default: sample.guidance)")
    p.add_argument("--condition_scale", type=float, default=None, help="mask strength, > 0 (default: sample.condition_scale)")
    p.add_argument("--cfg_scale", type=float, default=None, help="true classifier-free guidance, >= 1 (1 = off; default: sample.cfg_scale)")
    p.add_argument("--text_cfg_scale", type=float, default=None, help="the prompt's own guidance weight on top of the mask's, >= 1; a third pass per step (default: sample.text_cfg_scale, else --cfg_scale)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels, a multiple of the token size (default: sample.size)")
    p.add_argument("--shard", default=None, help="i/n: take every n-th id starting at i (default: RANK/WORLD_SIZE under torchrun or accelerate launch, else all)")
    p.add_argument("--pretrained", default=None, help="FLUX backbone folder or 'tiny', instead of the run config's 'pretrained'")
    p.add_argument("--device", default=None, help="torch device (default: cuda, cuda:LOCAL_RANK under a launcher, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype (default: the config's dtype)")
    add_memory_arguments(p)
    p.add_argument("--preset", default=None, metavar="FILE", help="a YAML of config keys applied over the run's config (before --set): configs/official-sampler.yaml samples exactly as the official code does")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run config key, e.g. model.gate_timestep_scale=1000 (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the images, captions and manifest test.py wrote in --output_dir (made with other settings or weights; "
                        "its manifest records them by digest) and start afresh; other files there are never deleted")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from face_mogle.generate_split import GenerationError, generate_split, parse_shard, shard_from_env
    from face_mogle.pipeline import FaceMoGLEPipeline, one_line, preset_overrides, user_errors

    errors = user_errors() + (GenerationError,)
    try:
        shard = parse_shard(args.shard) or shard_from_env()
        device = args.device
        if device is None and os.environ.get("LOCAL_RANK") is not None:
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        pipe = FaceMoGLEPipeline.from_run(args.run, pretrained=args.pretrained, device=device,
                                          dtype=args.dtype, overrides=preset_overrides(args.preset) + args.overrides
                                          + memory_overrides(args))
        from face_mogle.memory import cuda_lines

        predicted, measured = cuda_lines(pipe.cfg, "sample", device=pipe.device, size=args.size,
                                         batch_size=args.batch_size, pretrained=pipe.backbone.source)
        if predicted:
            print(predicted)
        summary = generate_split(
            pipe, args.root or pipe.cfg.data.root, args.split, args.output_dir, batch_size=args.batch_size,
            limit=args.limit, seed=pipe.cfg.seed if args.seed is None else args.seed, steps=args.steps,
            guidance=args.guidance, condition_scale=args.condition_scale, cfg_scale=args.cfg_scale,
            text_cfg_scale=args.text_cfg_scale, size=args.size, shard=shard,
            progress=not args.quiet, overwrite=args.overwrite, identity_root=args.identity_root,
        )
    except errors as err:
        print(f"test.py: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up: the images written so far are complete
        what = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        print(f"test.py: error: {what} at {err.filename or args.output_dir}; images written so far are complete: "
              "free space and rerun the same command to continue", file=sys.stderr)
        return 1
    if measured:
        print(measured())
    rate = summary["generated"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
    print(f"generated {summary['generated']} images ({summary['skipped']} skipped) in "
          f"{summary['seconds']:.1f} s ({rate:.2f} img/s) -> {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
