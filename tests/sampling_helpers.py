"""Shared test helpers: a tiny run folder with random LoRA/MoGLE weights, and drawn face masks."""

from pathlib import Path

import numpy as np
import torch

from face_mogle.config import load_config, save_config
from face_mogle.models.builder import load_backbone
from face_mogle.models.face_mogle import FaceMoGLE

SIZE, STEPS = 32, 2


def make_run(folder, size=SIZE, steps=STEPS, seed=0, overrides=()):
    """A run folder on the tiny backbone whose LoRA and MoGLE weights are random (so they matter)."""
    folder = Path(folder)
    cfg = load_config(None, [
        "pretrained=tiny", "dtype=float32", f"data.size={size}", f"data.condition_size={size}",
        f"sample.size={size}", f"sample.steps={steps}", "sample.max_sequence_length=64", *overrides,
    ])
    backbone = load_backbone("tiny")
    model = FaceMoGLE(backbone.transformer, cfg.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the LoRA act
                p.copy_(torch.randn(p.shape, generator=g))
        for p in model.mogle.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    model.save_weights(folder)
    save_config(cfg, folder / "config.yaml")
    return folder


def draw_mask(i: int, size: int = 64) -> np.ndarray:
    """A simple face label map that varies with i: background, hair, skin, brows, eyes, nose, lips."""
    yy, xx = np.mgrid[:size, :size] / size
    lab = np.zeros((size, size), np.uint8)
    r = 0.30 + 0.03 * (i % 3)
    lab[((xx - 0.5) ** 2 + (yy - 0.45) ** 2) < (r + 0.08) ** 2] = 13  # hair
    lab[yy > 0.8] = 18  # cloth
    lab[((xx - 0.5) / 0.8) ** 2 + (yy - 0.5) ** 2 < r**2] = 1  # skin
    for cx, c in ((0.4, 5), (0.6, 4)):
        lab[(np.abs(xx - cx) < 0.05) & (np.abs(yy - 0.45) < 0.025)] = c
        lab[(np.abs(xx - cx) < 0.06) & (np.abs(yy - 0.38) < 0.015)] = c + 2  # brows 7/6
    lab[(np.abs(xx - 0.5) < 0.03) & (np.abs(yy - 0.53) < 0.05)] = 2  # nose
    lab[(np.abs(xx - 0.5) < 0.08 + 0.02 * (i % 2)) & (np.abs(yy - 0.64) < 0.015)] = 11
    lab[(np.abs(xx - 0.5) < 0.08 + 0.02 * (i % 2)) & (np.abs(yy - 0.67) < 0.015)] = 12
    if i % 4 == 3:
        lab[(np.abs(yy - 0.45) < 0.01) & (np.abs(xx - 0.5) < 0.2)] = 3  # glasses
    return lab
