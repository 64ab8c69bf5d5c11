"""CMMD (Jayasumana et al., "Rethinking FID"): MMD between CLIP ViT-L/14-336 embeddings of real and
generated images, with a Gaussian RBF kernel, sigma 10, scaled by 1000.

The estimator is the minimum-variance (biased, diagonal included) one of the reference
implementation (google-research/cmmd, ported as cmmd-pytorch):
    k(x, y) = exp(-||x - y||² / (2 sigma²));  MMD² = mean k(x, x') + mean k(y, y') - 2 mean k(x, y).
"""

from __future__ import annotations

from pathlib import Path

import torch

from face_mogle.eval.clipnet import ClipNet, CmmdTransform
from face_mogle.eval.errors import EvalError
from face_mogle.eval.images import batches
from face_mogle.eval.weights import CLIP_L14_336, folder_identity

SIGMA = 10.0
SCALE = 1000.0


def mmd(x: torch.Tensor, y: torch.Tensor, sigma: float = SIGMA, scale: float = SCALE) -> float:
    """CMMD value between embedding sets x [n, D] and y [m, D] (float64 for a clean 0 on x == y)."""
    x, y = x.double(), y.double()
    gamma = 1.0 / (2.0 * sigma**2)

    def mean_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return torch.exp(-gamma * sq).mean()

    return float(scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y)))


def embed(net: ClipNet, paths: list[Path], batch_size: int, size: int | None, num_workers: int,
          desc: str) -> torch.Tensor:
    out = [net.image_embeddings(pixels) for (pixels,) in
           batches([(p,) for p in paths], size, CmmdTransform(net), batch_size, num_workers, desc=desc)]
    return torch.cat(out)


def run(real: list[Path], fake: list[Path], model_dir: Path, device: str, batch_size: int,
        size: int | None, num_workers: int) -> dict:
    if min(len(real), len(fake)) < 2:
        raise EvalError("CMMD needs at least 2 image pairs")
    net = ClipNet(CLIP_L14_336, model_dir, device)
    real_emb = embed(net, real, batch_size, size, num_workers, "CMMD real")
    fake_emb = embed(net, fake, batch_size, size, num_workers, "CMMD fake")
    return {"value": mmd(real_emb, fake_emb), "count": len(fake), "model": folder_identity(model_dir)}
