"""`python -m face_mogle.data.cache`: build or continue a latent cache from a config."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import torch

from ...locks import FolderBusy
from ..dataset import DataError
from ..masks import MaskError
from .builder import MAX_SHARD_SIZE, build_cache
from .manifest import CacheError, require_cache_dir


def main(argv: Optional[list[str]] = None) -> int:
    from ...config import ConfigError, load_config
    from ...models.builder import BackboneError

    parser = argparse.ArgumentParser(
        prog="python -m face_mogle.data.cache",
        description="Pre-encode faces, mask maps and captions into data.cache_dir (VAE posteriors, T5 + CLIP "
                    "embeddings). Resumable: rerun the same command to continue an interrupted build.",
    )
    parser.add_argument("--config", required=True, help="YAML config (e.g. configs/face-mogle.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. --set data.cache_dir=data/mmcelebahq/cache/512)")
    parser.add_argument("--split", choices=("train", "test", "both"), default="both")
    parser.add_argument("--batch_size", type=int, default=8, help="samples encoded together (x21 images)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--pretrained", default=None, help="FLUX folder or 'tiny' (overrides the config)")
    parser.add_argument("--shard_size", type=int, default=None,
                        help=f"samples per shard (default: up to {MAX_SHARD_SIZE}, about 1 GiB per shard)")
    parser.add_argument("--max_shards", type=int, default=None, help="stop after writing this many shards")
    parser.add_argument("--overwrite", action="store_true", help="delete an incompatible cache and start over")
    parser.add_argument("--no_text", action="store_true",
                        help="latents only: skip the T5/CLIP embeddings (at FLUX.1-dev scale ~4 MiB per caption)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        overrides = list(args.overrides) + ([f"pretrained={args.pretrained}"] if args.pretrained else [])
        cfg = load_config(args.config, overrides)
        if args.shard_size is not None and args.shard_size < 1:
            raise CacheError(f"--shard_size must be >= 1, got {args.shard_size}")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise CacheError("--device cuda: no CUDA device is available (use --device cpu)")
        require_cache_dir(cfg)
        build_cache(cfg, split=args.split, batch_size=args.batch_size, device=device,
                    shard_size=args.shard_size, overwrite=args.overwrite, max_shards=args.max_shards,
                    progress=not args.no_progress, config_path=args.config, quiet=True, text=not args.no_text)
    except (CacheError, ConfigError, DataError, BackboneError, MaskError, FolderBusy) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0
