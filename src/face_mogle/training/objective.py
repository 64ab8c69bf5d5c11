"""Rectified-flow objective (DESIGN §2) and the deterministic randomness of a training step.

Every random draw of a step comes from a generator seeded by (seed, step, micro-batch, rank), so a
resumed run draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F


def step_generator(seed: int, step: int, micro: int, rank: int, device="cpu") -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{step}/{micro}/{rank}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def sample_t(batch: int, generator: torch.Generator, device, loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Logit-normal timesteps: t = sigmoid(N(loc, scale²)), in (0, 1); (0, 1) is the paper's setting."""
    return torch.sigmoid(torch.randn(batch, generator=generator, device=device) * scale + loc)


def noisy_and_target(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = (1 − t)·x₀ + t·ε, target velocity ε − x₀."""
    tt = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - tt) * x0 + tt * noise, noise - x0


def flow_matching_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float())
