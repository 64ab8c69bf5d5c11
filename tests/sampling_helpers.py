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


ID_DIM = 16  # the identity embedding size of make_identity_run's encoder and run


def make_identity_run(folder, seed=0):
    """A tiny run with identity tokens (condition entry) and its own SynthFaces identity encoder (random
    CNN weights, ID_DIM-d): the encoder folder sits in FOLDER/encoder, named by model.identity.weights.
    The SynthFaces parser finds the faces of SynthFaces renders, so a saved render is a reference face."""
    from face_mogle.identity import EncoderConfig, SynthFacesNet, save_encoder

    folder = Path(folder)
    cfg = EncoderConfig(crop=32, width=8, blocks=3, dim=ID_DIM)
    torch.manual_seed(seed)
    encoder = save_encoder(SynthFacesNet(cfg), cfg, folder / "encoder")
    return make_run(folder / "run", seed=seed, overrides=[
        "model.identity.encoder=synthfaces", f"model.identity.weights={encoder.resolve()}",
        f"model.identity.embed_dim={ID_DIM}", "model.identity.num_tokens=2", "data.parser=synthfaces"])


def save_reference_face(path, seed=0, size=96):
    """A SynthFaces render saved as a PNG: a reference face the SynthFaces parser reads exactly."""
    from PIL import Image

    from face_mogle.data.synthfaces import render

    Image.fromarray(render(seed, size).image).save(path)
    return Path(path)
