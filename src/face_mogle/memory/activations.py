"""Activation memory of the three-stream step (formulas) and of the encoders (shape-only traces).

Notation, per sample: T text tokens (the T5 length), N image tokens ((size / token_pixels)²),
C condition tokens (N with a mask, 0 without), H = T + N, S = T + N + C; D = heads × head_dim the
transformer width; e the bytes of the compute dtype; a "row" is one token of width D (D·e bytes);
φ = 4 / e (a float32 copy of a row is φ rows). FLUX.1-dev at 512²: T 512, N = C = 1024, D 3072.

Inference (no grad) — the peak sits in a single-stream block, counted from `single_block`:
  resident: the last double block's text + image outputs (H) and the block's inputs (H + C);
  attention, rotating the keys: h_norm H, h_mlp 4H, q/k/v 3S, condition q/k/v and norm 4C,
    rotated queries S, rotated keys S + 3φS (RoPE computes in float32)  → 7H + 5C + 5S + 3φS;
  condition output (LoRA proj_out): new hid H, h_norm H, h_mlp 4H, q/k/v 3S, 4C, attention out S,
    c_mlp 4C, its concat 5C, base + LoRA + sum 3C                        → 8H + 17C + 4S;
  a double block's attention: inputs S, per-stream q/k/v 3S, joined 3S, rotated S + S + 3φS → 9S + 3φS.
  peak = B·D·e·max(those) + RoPE tables 2·S·head_dim·4 bytes.
Training — autograd keeps, per block and sample, rows per text token and per image token (with its
  condition token), plus float32 per-head statistics (attention log-sum-exp, RMSNorm scales):
                     text   image+cond   per-head floats (text, image+cond)
  double, float32     13       35          5, 20
  double, bf16/fp16   14       48          5, 20      (RMSNorm and RoPE keep float32 copies)
  single, float32     11       30          4, 18
  single, bf16/fp16   13       46          4, 18
  without checkpointing: Σ over blocks + the last block's working set (14T + 17N rows float32,
    12T + 22N half);
  with checkpointing: each block's input (S rows) + one block recomputed with its backward
    (20T + 51N rows + 4T + 52N head floats float32; 23T + 77N rows + 4T + 68N half).
The counts are of the tensors our forward creates (LayerNorm inputs, GELU inputs, LoRA inputs,
q/k/v and outputs kept by the fused attention, float32 RMSNorm copies); tests/test_memory.py checks
the result against the CPU allocator on the tiny model, bench/memory.py against a shape-only trace
at FLUX.1-dev size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# (text rows, image+condition rows, text head floats, image+condition head floats) per token
SAVED = {
    ("double", False): (13, 35, 5, 20), ("double", True): (14, 48, 5, 20),
    ("single", False): (11, 30, 4, 18), ("single", True): (13, 46, 4, 18),
}
LAST_BLOCK = {False: (14, 17, 0, 0), True: (12, 22, 0, 0)}
RECOMPUTE = {False: (20, 51, 4, 52), True: (23, 77, 4, 68)}


@dataclass(frozen=True)
class Streams:
    text: int
    image: int
    cond: int

    @property
    def total(self) -> int:
        return self.text + self.image + self.cond


@dataclass(frozen=True)
class Width:
    """The transformer's shape, from its config."""

    heads: int
    head_dim: int
    double: int
    single: int

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @classmethod
    def of(cls, config) -> "Width":
        return cls(config["num_attention_heads"], config["attention_head_dim"], config["num_layers"],
                   config["num_single_layers"])


def rope_bytes(s: Streams, w: Width) -> int:
    return 2 * s.total * w.head_dim * 4  # cos and sin tables, float32, shared by the batch


def inference_bytes(s: Streams, w: Width, batch: int, e: int) -> int:
    """Peak activation bytes of one transformer forward without gradients (formula above)."""
    t, n, c, total = s.text, s.image, s.cond, s.total
    h, phi = t + n, 4 / e
    rows = max(
        2 * h + c + 5 * h + 4 * c + total + total + 3 * phi * total + 2 * total,  # 7H + 5C + 5S + 3φS
        2 * h + c + 6 * h + 4 * total + 16 * c,  # 8H + 17C + 4S
        9 * total + 3 * phi * total,
    )
    return int(batch * w.dim * e * rows) + rope_bytes(s, w)


def _token_bytes(coeffs, s: Streams, w: Width, e: int) -> int:
    text_rows, image_rows, text_heads, image_heads = coeffs
    return (text_rows * s.text + image_rows * s.image) * w.dim * e + (text_heads * s.text + image_heads * s.image) * w.heads * 4


def training_bytes(s: Streams, w: Width, batch: int, e: int, checkpointing: bool) -> int:
    """Peak activation bytes of one training forward + backward (C = N: training always has the
    condition stream)."""
    half = e < 4
    if checkpointing:
        inputs = (w.double + w.single) * s.total * w.dim * e
        per_sample = inputs + _token_bytes(RECOMPUTE[half], s, w, e)
    else:
        per_sample = (w.double * _token_bytes(SAVED["double", half], s, w, e)
                      + w.single * _token_bytes(SAVED["single", half], s, w, e)
                      + _token_bytes(LAST_BLOCK[half], s, w, e))
    return batch * per_sample + rope_bytes(s, w)


def mogle_bytes(s: Streams, batch: int, experts: int, hidden: int, channels: int, training: bool) -> int:
    """MoGLE (float32): every expert's hidden and output tokens, stacked and mixed; training keeps
    the hidden (ReLU) and output tokens of each expert."""
    per_token = experts * ((2 * hidden + 2 * channels) if training else (hidden + 2 * channels))
    return batch * s.cond * per_token * 4


# --------------------------------------------------------------------------------------------
# Encoders and the VAE: traced on the meta device at the real shapes (modules already in `dtype`)


def _vae_shapes(vae, size: int):
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    return (3, size, size), (vae.config.latent_channels, size // f, size // f)


def vae_encode_bytes(vae, size: int, images: int, dtype: torch.dtype) -> int:
    from .trace import meta_peak

    if images == 0:
        return 0
    pixels, _ = _vae_shapes(vae, size)
    x = torch.empty(images, *pixels, device="meta", dtype=dtype)
    return meta_peak(lambda: vae.encode(x).latent_dist.mean)


def vae_decode_bytes(vae, size: int, images: int, dtype: torch.dtype) -> int:
    from .trace import meta_peak

    _, latent = _vae_shapes(vae, size)
    z = torch.empty(images, *latent, device="meta", dtype=dtype)
    return meta_peak(lambda: vae.decode(z).sample)


def text_encoder_bytes(encoder, batch: int, length: int, dtype: torch.dtype) -> int:
    from .trace import meta_peak

    ids = torch.zeros(batch, length, dtype=torch.long, device="meta")
    return meta_peak(lambda: encoder(ids, output_hidden_states=False)[0])
