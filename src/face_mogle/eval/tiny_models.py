"""Tiny, randomly initialised stand-ins for every evaluation model, in the real folder layout.

They are the same classes as the real weights (CLIPModel + CLIPTokenizer + CLIPImageProcessor,
ViTModel with 8-pixel patches, SegformerForSemanticSegmentation, a TorchScript Inception file that
clean-fid's wrapper accepts), so the whole evaluation CLI runs offline, end to end, through exactly
the loading code real weights go through. Their numbers mean nothing.

    python -m face_mogle.eval.tiny_models --out checkpoints/eval-tiny
    python -m face_mogle.eval --fake ... --real ... --weights_dir checkpoints/eval-tiny ...
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from face_mogle.labels import CLASSES, NUM_CLASSES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2/CLIP's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    codes = dict(zip(printable, printable)) | {b: 256 + n for n, b in enumerate(extra)}
    return [chr(codes[b]) for b in range(256)]


def write_clip_tokenizer(folder: Path) -> int:
    """A byte-level CLIP tokenizer with no merges: every byte is a token. Returns the vocab size."""
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + [BOS, EOS])}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def save_tiny_clip(folder: Path, image_size: int, patch_size: int, seed: int) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_clip_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    tokenizer.save_pretrained(str(folder))  # adds tokenizer.json / tokenizer_config.json beside them
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size),
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(str(folder))


def save_tiny_dino(folder: Path, seed: int) -> None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))


def save_tiny_face_parser(folder: Path, seed: int) -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 8, 16, 16],
        num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16, num_labels=NUM_CLASSES,
        id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    SegformerForSemanticSegmentation(config).eval().save_pretrained(str(folder))
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(str(folder))


class _TinyInceptionLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=5, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(128, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv(x))).flatten(1)
        return torch.relu(self.fc(h)).view(-1, 2048, 1, 1)  # pooled-feature shape, like Inception's


class TinyInception(nn.Module):
    """Mimics the interface of clean-fid's inception-2015-12-05.pt: `.layers(x)` on [-1, 1] images
    at 299² (clean mode) and `forward(img, return_features=True)` on 0..255 images of any size."""

    def __init__(self):
        super().__init__()
        self.layers = _TinyInceptionLayers()

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128.0) / 128.0).flatten(1)


def save_tiny_inception(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notes
        torch.jit.script(TinyInception().eval()).save(str(path))


def build_tiny_eval_models(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every tiny model under `out` in the layout --weights_dir expects; returns their paths."""
    from face_mogle.eval.weights import quiet_transformers

    quiet_transformers()
    out = Path(out)
    paths = {
        "inception": out / "inception",
        "clip": out / "clip-vit-base-patch16",
        "cmmd": out / "clip-vit-large-patch14-336",
        "dino": out / "dino-vitb8",
        "miou": out / "face-parsing",
    }
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    save_tiny_inception(paths["inception"] / "inception-2015-12-05.pt", seed)
    save_tiny_clip(paths["clip"], image_size=32, patch_size=16, seed=seed + 1)
    save_tiny_clip(paths["cmmd"], image_size=28, patch_size=14, seed=seed + 2)
    save_tiny_dino(paths["dino"], seed=seed + 3)
    save_tiny_face_parser(paths["miou"], seed=seed + 4)
    (out / "README.txt").write_text("Tiny randomly initialised stand-ins for the evaluation models, made by "
                                    "python -m face_mogle.eval.tiny_models. For tests only: their scores "
                                    "mean nothing.\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m face_mogle.eval.tiny_models",
                                description="Write tiny random evaluation models (test stand-ins) to a folder.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create; pass it as --weights_dir")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = p.parse_args(argv)
    try:
        paths = build_tiny_eval_models(args.out, args.seed)
    except OSError as e:
        print(f"error: cannot write {args.out}: {e}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:10s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
