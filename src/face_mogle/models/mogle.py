"""MoGLE: a mixture of one global and 19 local experts, mixed per token by a dynamic gate.

Parameter names follow the official module so released `mogle.pt` files load as they are:
`global_expert.net.{0,2}`, `local_experts.{i}.net.{0,2}`, `gating.timestep_embedding.linear_{1,2}`,
`gating.noise_proj`, `gating.gate.{0,2}`.
"""

from __future__ import annotations

import math

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn


class Expert(nn.Module):
    """Per-token MLP: Linear(in→hidden), ReLU, Linear(hidden→out)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, output_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DynamicGate(nn.Module):
    """Softmax weights over the experts per token, from the global map, noisy latent and time."""

    def __init__(self, dim: int, num_experts: int, global_prior: float = 0.0):
        super().__init__()
        # Sinusoidal features, cos first, no frequency shift (as the official gate).
        self.time_proj = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedding = TimestepEmbedding(dim, dim)
        self.noise_proj = nn.Linear(dim, dim)
        self.gate = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_experts))
        if global_prior > 0:
            # Start with about `global_prior` of every token's weight on the global expert: a
            # freshly initialised gate spreads it 1/E per expert, mostly over empty local maps,
            # and a small model then learns to ignore the mask before it learns to read it.
            with torch.no_grad():
                self.gate[2].bias.zero_()
                self.gate[2].bias[0] = math.log(global_prior * (num_experts - 1) / (1 - global_prior))

    def forward(self, global_map: torch.Tensor, noisy: torch.Tensor, timestep: torch.Tensor,
                active: Optional[torch.Tensor] = None) -> torch.Tensor:
        # global_map, noisy: [B, N, D]; timestep: [B]; active: bool [E] (ablations), None = all
        dtype = self.noise_proj.weight.dtype
        t_emb = self.timestep_embedding(self.time_proj(timestep).to(dtype))  # [B, D]
        fused = global_map.to(dtype) + self.noise_proj(noisy.to(dtype)) + t_emb[:, None, :]
        logits = self.gate(fused).float()
        if active is not None and not bool(active.all()):
            logits = logits.masked_fill(~active, float("-inf"))
        return F.softmax(logits, dim=-1).to(dtype)  # [B, N, E]


class MoGLE(nn.Module):
    """forward(mask_latents [B,E,N,D], noisy_latents [B,N,D], timestep [B] in [0,1]) → [B,N,D].

    The gate weights of the last call are kept in `last_gate_weights` ([B, N, E], or None without
    gating) for visualisation.
    """

    def __init__(
        self,
        num_experts: int = 20,
        input_dim: int = 64,
        hidden_dim: int = 32,
        output_dim: int = 64,
        has_expert: bool = True,
        has_gating: bool = True,
        scalar_gating: bool = False,
        experts: str = "all",
        gate_global_prior: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= gate_global_prior < 1.0:
            raise ValueError(f"gate_global_prior must be in [0, 1), got {gate_global_prior}")
        if experts not in ("all", "global", "local"):
            raise ValueError(f"experts must be 'all', 'global' or 'local', got {experts!r}")
        if has_expert:
            make = lambda: Expert(input_dim, hidden_dim, output_dim)  # noqa: E731
        else:
            if input_dim != output_dim:
                raise ValueError("MoGLE without experts needs input_dim == output_dim")
            make = nn.Identity
        self.num_experts = num_experts
        self.global_expert = make()
        self.local_experts = nn.ModuleList(make() for _ in range(num_experts - 1))
        self.gating = DynamicGate(input_dim, num_experts, gate_global_prior) if has_gating else None
        self.scalar_gating = scalar_gating
        # Ablation: use only the global expert, or only the local ones (all parameters still exist,
        # so weight files keep the official layout). Not a parameter: never saved.
        active = torch.ones(num_experts, dtype=torch.bool)
        if experts == "global":
            active[1:] = False
        elif experts == "local":
            active[0] = False
        self.register_buffer("active", active, persistent=False)
        self.last_gate_weights: Optional[torch.Tensor] = None

    def expert_outputs(self, mask_latents: torch.Tensor) -> torch.Tensor:
        """Each map through its own expert: [B, E, N, D] → [B, E, N, D_out]."""
        experts = [self.global_expert, *self.local_experts]
        return torch.stack([experts[e](mask_latents[:, e]) for e in range(self.num_experts)], dim=1)

    def gate_weights(self, mask_latents, noisy_latents, timestep) -> Optional[torch.Tensor]:
        if self.gating is None:
            return None
        weights = self.gating(mask_latents[:, 0], noisy_latents, timestep, self.active)  # [B, N, E]
        if self.scalar_gating:
            weights = weights.mean(dim=1, keepdim=True).expand_as(weights)
        return weights

    def forward(self, mask_latents: torch.Tensor, noisy_latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if mask_latents.ndim != 4 or mask_latents.shape[1] != self.num_experts:
            raise ValueError(
                f"MoGLE expects mask latents [B, {self.num_experts}, N, D], got {tuple(mask_latents.shape)}"
            )
        outputs = self.expert_outputs(mask_latents)  # [B, E, N, D]
        weights = self.gate_weights(mask_latents, noisy_latents, timestep)
        self.last_gate_weights = None if weights is None else weights.detach()
        if weights is None:
            return outputs[:, self.active].sum(dim=1)
        return torch.einsum("bend,bne->bnd", outputs, weights.to(outputs.dtype))

    # ---------------------------------------------------------------------------------------
    # Persistence: ours is safetensors; the official pickle is read with weights_only=True.

    def save(self, path: str | os.PathLike) -> None:
        from ..utils import atomic_save_safetensors

        atomic_save_safetensors({k: v.detach().contiguous() for k, v in self.state_dict().items()}, path)

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(read_mogle_state_dict(path), strict=True)


def read_mogle_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read MoGLE weights from our `mogle.safetensors` or an official `mogle.pt`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MoGLE weights not found: {path}")
    if path.suffix == ".safetensors":
        from ..utils import read_safetensors

        return read_safetensors(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with code in it, or a corrupt file
        raise ValueError(f"cannot read MoGLE weights {path} as a plain state dict: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}
