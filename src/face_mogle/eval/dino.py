"""DINO structure distance: does the generated face keep the real face's layout?

For each (generated, real) pair, take the keys of the last attention layer of DINO ViT-B/8 (all
heads concatenated, CLS token included), form their token-by-token cosine self-similarity matrix,
and score the mean squared difference between the two matrices — the "structure loss" of
Tumanyan et al. (Splicing ViT Features), which Face-MoGLE's eval_mask.py reports. Lower is better.

Preprocessing ("--dino_preprocess"):
- "official" (default): what the published eval_mask.py does — the image at the evaluation size as
  [0, 1] RGB, no ImageNet normalisation, position embeddings interpolated to the token grid.
- "imagenet": Splice's convention — resize to the model's input size and ImageNet-normalise.
The reported value is the mean per pair. eval_mask.py instead averaged, over batches of 64, the
*sum* of the per-pair losses in each batch; that number is reported as "paper_scale".
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from face_mogle.eval.errors import EvalError
from face_mogle.eval.images import batches, to_tensor
from face_mogle.eval.weights import DINO_B8, folder_identity, load_pretrained, require_hf_folder

PREPROCESS = ("official", "imagenet")
PAPER_BATCH = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every token's key with every other's: [B, T, D] -> [B, T, T]."""
    norms = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.transpose(1, 2)) / (norms @ norms.transpose(1, 2)).clamp(min=eps)


def structure_distance(keys_fake: torch.Tensor, keys_real: torch.Tensor) -> torch.Tensor:
    """Per-pair MSE between self-similarity matrices, [B]; one pair at a time to bound memory
    (at 512² a ViT-B/8 has 4097 tokens, so one matrix is 4097² floats)."""
    out = [(self_similarity(f[None].float()) - self_similarity(r[None].float())).pow(2).mean()
           for f, r in zip(keys_fake, keys_real)]
    return torch.stack(out).cpu()


def last_key_projection(model: nn.Module) -> nn.Module:
    """The key projection of the last transformer layer (`k_proj` in transformers 5, `key` before)."""
    keys = [m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and (name.endswith("k_proj") or name.endswith("attention.key"))]
    if not keys:
        raise EvalError(f"{DINO_B8.title}: no attention key projection found in {type(model).__name__}")
    return keys[-1]


class KeyExtractor:
    """Runs the ViT and returns the last layer's keys [B, T, D], captured by a forward hook."""

    def __init__(self, model: nn.Module, device: str):
        self.model, self.device = model, device
        self._keys: torch.Tensor | None = None
        last_key_projection(model).register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        self._keys = output

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self._keys = None
        self.model(pixel_values=pixels.to(self.device), interpolate_pos_encoding=True)
        assert self._keys is not None, "the key hook did not fire"
        return self._keys


class DinoTransform:
    def __init__(self, preprocess: str, image_size: int):
        if preprocess not in PREPROCESS:
            raise EvalError(f"--dino_preprocess {preprocess}: choose one of {', '.join(PREPROCESS)}")
        self.preprocess, self.image_size = preprocess, image_size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.preprocess == "official":
            return to_tensor(img)
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        x = to_tensor(img)
        return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def load_dino(model_dir: Path, device: str) -> nn.Module:
    from transformers import ViTModel

    require_hf_folder(DINO_B8, model_dir)
    return load_pretrained(ViTModel, DINO_B8, model_dir, add_pooling_layer=False).to(device).eval()


def run(real: list[Path], fake: list[Path], model_dir: Path, device: str, batch_size: int,
        size: int | None, num_workers: int, preprocess: str = "official") -> dict:
    model = load_dino(model_dir, device)
    transform = DinoTransform(preprocess, int(model.config.image_size))
    extract = KeyExtractor(model, device)
    distances = []
    for fake_px, real_px in batches(list(zip(fake, real)), size, transform, batch_size, num_workers,
                                    desc="DINO structure"):
        distances.append(structure_distance(extract(fake_px), extract(real_px)))
    d = torch.cat(distances).double()
    return {"value": float(d.mean()), "count": len(d),
            "paper_scale": float(d.sum() / math.ceil(len(d) / PAPER_BATCH)),
            "preprocess": preprocess, "model": folder_identity(model_dir)}
