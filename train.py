#!/usr/bin/env python
"""Train Face-MoGLE (or, with train.mode=base, the text-to-image base model).

    python train.py --config configs/face-mogle.yaml [--set key=value ...] [--resume latest|PATH]
    accelerate launch train.py --config ...      # several GPUs / nodes (see configs/accelerate/)
"""

import argparse
import errno
import sys

from face_mogle.cli import add_memory_arguments, memory_overrides


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Train Face-MoGLE: LoRA + MoGLE on a frozen FLUX.1 backbone (train.mode=mogle), "
        "or a base text-to-image transformer (train.mode=base). Works alone, under torchrun, or "
        "under `accelerate launch`.",
    )
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/face-mogle.yaml or configs/tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.batch_size=2 (repeatable)")
    parser.add_argument("--resume", metavar="latest|PATH",
                        help="continue the run from its newest checkpoint ('latest') or a checkpoint folder")
    parser.add_argument("--pretrained", metavar="DIR",
                        help="FLUX backbone folder (overrides the config's `pretrained`)")
    add_memory_arguments(parser, sampling=False)
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a run folder that already holds a run (its checkpoints are deleted)")
    args = parser.parse_args(argv)
    if args.overwrite and args.resume:
        parser.error("--overwrite starts afresh; it cannot be combined with --resume")

    from face_mogle.config import ConfigError, load_config
    from face_mogle.data.cache import CacheError
    from face_mogle.data.dataset import DataError
    from face_mogle.data.masks import MaskError
    from face_mogle.locks import FolderBusy
    from face_mogle.models.builder import BackboneError
    from face_mogle.training.checkpoint import CheckpointError
    from face_mogle.training.trainer import Trainer, TrainingError

    try:
        cfg = load_config(args.config, args.overrides + memory_overrides(args))
        from face_mogle.memory import cuda_lines

        predicted, measured = cuda_lines(cfg, "train", pretrained=args.pretrained)
        if predicted:
            print(predicted)
        trainer = Trainer(cfg, resume=args.resume, pretrained=args.pretrained, overwrite=args.overwrite)
        trainer.train()
        if measured:
            print(measured())
    except (ConfigError, CacheError, DataError, MaskError, BackboneError, CheckpointError, TrainingError,
            FolderBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the newest checkpoint is intact; continue with --resume latest", file=sys.stderr)
        return 130
    except OSError as err:  # the disk filled up, a folder became unwritable: one line, checkpoints intact
        where = err.filename or "the run folder"
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        what = "no space left on device" if full else (err.strerror or str(err))
        fix = "free space" if full else "fix that (check train.runs_dir and name)"
        print(f"error: {what} at {where}; the newest complete checkpoint is intact: {fix}, then "
              "continue with --resume latest", file=sys.stderr)
        return 1
    print(f"done: run folder {trainer.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
