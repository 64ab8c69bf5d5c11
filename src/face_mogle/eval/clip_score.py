"""CLIP score: how well each generated face matches its caption, by CLIP ViT-B/16.

score = max(100 * cos(image embedding, text embedding), 0), averaged over images — the scale of the
clip-score package the paper used (logit scale 100), floored at 0 as torchmetrics' CLIPScore does
(cosines of real CLIP pairs are positive, so the floor never moves published numbers).
"""

from __future__ import annotations

from pathlib import Path

import torch

from face_mogle.eval.clipnet import ClipNet, OpenAIClipTransform
from face_mogle.eval.images import batches
from face_mogle.eval.weights import CLIP_B16, folder_identity


def raw_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """100 x cosine per pair, from L2-normalised embeddings [B, D] x [B, D] -> [B]."""
    return 100.0 * (image_emb * text_emb).sum(dim=-1)


def clip_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP scores, floored at 0 -> [B]."""
    return raw_scores(image_emb, text_emb).clamp(min=0)


def run(fake: list[Path], captions: list[str], model_dir: Path, device: str, batch_size: int,
        size: int | None, num_workers: int) -> dict:
    net = ClipNet(CLIP_B16, model_dir, device)
    net.load_tokenizer()
    scores = []
    start = 0
    for (pixels,) in batches([(p,) for p in fake], size, OpenAIClipTransform(net), batch_size, num_workers,
                             desc="CLIP score"):
        texts = captions[start:start + len(pixels)]
        start += len(pixels)
        scores.append(raw_scores(net.image_embeddings(pixels), net.text_embeddings(texts)))
    raw = torch.cat(scores).double()
    clipped = raw.clamp(min=0)
    return {"value": float(clipped.mean()), "std": float(clipped.std()) if len(clipped) > 1 else 0.0,
            "unclipped": float(raw.mean()), "count": len(raw), "model": folder_identity(model_dir)}
