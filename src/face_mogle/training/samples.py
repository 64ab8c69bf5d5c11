"""Sample grids during training: fixed validation masks and prompts → `runs/NAME/samples/step-N.png`.

Each row is one validation sample: coloured mask | generated face (mask + text) | mask only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.dataset import DataError, read_captions, read_split
from ..data.masks import load_label_map
from ..labels import colorize
from ..utils import atomic_write

NUM_SAMPLES = 4


def validation_set(cfg) -> tuple[list[np.ndarray], list[str]]:
    """The first few ids of the test split (train split if there is none): masks and first captions."""
    root = Path(cfg.data.root)
    for spec in (cfg.data.test_split, cfg.data.train_split):
        try:
            ids = read_split(root, spec)[:NUM_SAMPLES]
        except DataError:
            continue
        captions = read_captions(root, ids)
        ids = [i for i in ids if captions.get(i) and (root / "mask" / f"{i}.png").is_file()]
        if ids:
            masks = [load_label_map(root / "mask" / f"{i}.png", cfg.data.size) for i in ids]
            return masks, [captions[i][0] for i in ids]
    return [], []


@torch.no_grad()
def write_sample_grid(trainer, step: int) -> Path | None:
    from ..models.face_mogle import FaceMoGLE
    from ..pipeline import FaceMoGLEPipeline

    cfg = trainer.cfg
    model = trainer.acc.unwrap_model(trainer.model)
    if not isinstance(model, FaceMoGLE):  # base mode has no condition stream to show
        return None
    masks, prompts = validation_set(cfg)
    if not masks:
        return None
    seeds = list(range(len(masks)))
    # encoders kept on the CPU (a full cache) come to the GPU one stage at a time, as with offload model
    pipe = FaceMoGLEPipeline(trainer.backbone, model, cfg, device=trainer.acc.device,
                             offload="model" if trainer.encoders_on_cpu else "none")
    try:
        both = pipe(prompts, masks, seeds=seeds, size=cfg.data.size).images
        mask_only = pipe([""] * len(masks), masks, seeds=seeds, size=cfg.data.size).images
    finally:
        model.train()
    s = cfg.data.size
    grid = Image.new("RGB", (3 * s, len(masks) * s + 14), "white")
    ImageDraw.Draw(grid).text((2, 1), f"step {step}: mask | mask + text | mask only", fill="black")
    for row, (labels, a, b) in enumerate(zip(masks, both, mask_only)):
        y = 14 + row * s
        grid.paste(Image.fromarray(colorize(labels)), (0, y))
        grid.paste(a, (s, y))
        grid.paste(b, (2 * s, y))
    path = trainer.run_dir / "samples" / f"step-{step}.png"
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
    return path
