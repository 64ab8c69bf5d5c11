"""Identity tokens: a reference face's embedding → K tokens in the transformer's width.

The tokens enter one stream of the three-stream forward (`model.identity.entry`): the condition
stream, beside the mask tokens (LoRA and timestep-0 modulation, like them), or the text stream,
after the T5 tokens (read by the frozen text weights). Either way their RoPE position is (1, 0, 0):
the first axis is 0 for every text and image token, so the identity sits apart from the image grid
and the text, and its K tokens form a set (one position, no order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..identity.errors import IdentityError


@dataclass
class IdentityTokens:
    tokens: torch.Tensor  # [B, K, hidden]
    ids: torch.Tensor  # [K, 3] RoPE positions
    stream: str  # "condition" or "text"


def identity_ids(num_tokens: int, device=None, dtype=torch.float32) -> torch.Tensor:
    ids = torch.zeros(num_tokens, 3, device=device, dtype=dtype)
    ids[:, 0] = 1
    return ids


class IdentityProjector(nn.Module):
    """[B, D] embedding → [B, K, hidden] tokens: a two-layer MLP (width 2·D), each token layer-normed
    (the scale the transformer's own tokens have after their embedders)."""

    def __init__(self, embed_dim: int, hidden: int, num_tokens: int):
        super().__init__()
        self.embed_dim, self.num_tokens = embed_dim, num_tokens
        self.proj = nn.Sequential(nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(),
                                  nn.Linear(2 * embed_dim, hidden * num_tokens))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        if embeds.ndim != 2 or embeds.shape[1] != self.embed_dim:
            raise IdentityError(f"identity embeddings must be [batch, {self.embed_dim}] (model.identity.embed_dim of "
                                f"this run), got {list(embeds.shape)}: was it made by the run's identity encoder?")
        x = self.proj(embeds.to(self.proj[0].weight.dtype))
        return self.norm(x.unflatten(-1, (self.num_tokens, -1)))
