"""Command-line options the scripts share (inference.py, test.py, app.py, train.py)."""

from __future__ import annotations

import argparse

from .models.quantization import SCHEMES

OFFLOAD_MODES = ("none", "model", "leaf")


def add_memory_arguments(parser: argparse.ArgumentParser, sampling: bool = True) -> None:
    """--quantize (and, for samplers, --offload): what lets FLUX.1-dev fit a 24 GB or 16 GB GPU."""
    parser.add_argument("--quantize", default=None, choices=SCHEMES,
                        help="weight-only quantization of the base transformer and T5: int8 or fp8 (torchao), nf4 "
                             "(bitsandbytes, CUDA only); LoRA and MoGLE stay full precision (default: the config's "
                             "model.quantize)")
    if sampling:
        parser.add_argument("--offload", default=None, choices=OFFLOAD_MODES,
                            help="GPU memory: 'model' keeps each component on the GPU only while it runs (T5 never "
                                 "beside the transformer); 'leaf' also streams the transformer layer by layer (least "
                                 "memory, slowest) (default: the config's sample.offload)")


def memory_overrides(args: argparse.Namespace) -> list[str]:
    """The memory options as `--set` overrides (after the preset and the user's own `--set`s)."""
    out = []
    if getattr(args, "quantize", None) is not None:
        out.append(f"model.quantize={args.quantize}")
    if getattr(args, "offload", None) is not None:
        out.append(f"sample.offload={args.offload}")
    return out
