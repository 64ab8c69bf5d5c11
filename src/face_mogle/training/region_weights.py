"""Loss weights from the face's label map: rare classes (eyes, lips, brows) and class edges count more.

The flow-matching loss averages over pixels, so an eye (a few dozen of 16,384 pixels at 128²) barely
moves it: a small model then learns the hair and background colours and leaves the eyes to chance.
Weighting each pixel by its class's rarity, ×2 on class edges, is what the tiny VAE stage trains with;
`train.loss_weighting: regions` applies the same weights to the transformer's loss, one weight per
image token (the mean over the pixels it covers). The paper's objective is unweighted (`none`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..labels import NUM_CLASSES

CAP = 10.0  # rarest class weight relative to the commonest, before the edge factor


def class_weights(counts: torch.Tensor, cap: float = CAP) -> torch.Tensor:
    """Per-class weights [NUM_CLASSES] from pixel counts: (max frequency / frequency)^½, capped."""
    freq = counts.float() / counts.sum().clamp_min(1)
    return (freq.max() / freq.clamp_min(1e-8)).sqrt().clamp(max=cap)


def pixel_weights(masks: torch.Tensor, per_class: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel weights [N, S, S] of label maps [N, S, S]: class weight, ×2 on class edges.

    `per_class` defaults to the weights of these masks' own class counts. Not normalised."""
    m = masks.long()
    if per_class is None:
        per_class = class_weights(torch.bincount(m.flatten(), minlength=NUM_CLASSES))
    edge = torch.zeros_like(m, dtype=torch.bool)
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[:, :-1] |= m[:, 1:] != m[:, :-1]
    edge[:, :, 1:] |= m[:, :, 1:] != m[:, :, :-1]
    edge[:, :, :-1] |= m[:, :, 1:] != m[:, :, :-1]
    return per_class[m] * (1 + edge.float())


def token_weights(root: str | Path, ids: list[int], size: int, token_pixels: int, progress: bool = True) -> dict[int, torch.Tensor]:
    """Per-token loss weights {id: [T]} for the faces `ids` of a data set at `size`², in the packed
    token order (row-major over the token grid), normalised to mean 1 over all tokens of all faces.

    Two passes over the label maps (class counts, then weights) keep memory at one map at a time."""
    from tqdm.auto import tqdm

    from ..data.masks import load_label_map

    if size % token_pixels:
        raise ValueError(f"size {size} is not a multiple of the token size {token_pixels}")

    def maps(desc):
        for i in tqdm(ids, desc=desc, disable=not progress, leave=False):
            yield i, torch.from_numpy(load_label_map(Path(root) / "mask" / f"{i}.png", size).astype(np.int64))

    counts = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for _, m in maps("region weights: class counts"):
        counts += torch.bincount(m.flatten(), minlength=NUM_CLASSES).double()
    per_class = class_weights(counts)
    out = {}
    for i, m in maps("region weights: tokens"):
        w = pixel_weights(m[None], per_class)[:, None]  # [1, 1, S, S]
        out[i] = F.avg_pool2d(w, token_pixels).flatten()
    mean = torch.cat(list(out.values())).mean()
    return {i: w / mean for i, w in out.items()}


def weighted_flow_matching_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error over [B, T, D] with one weight per token, `weights` [B, T]."""
    err = (prediction.float() - target.float()).pow(2)
    return (err * weights.to(err.device, err.dtype)[..., None]).mean()
