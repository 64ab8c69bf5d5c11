"""CLIP models from a local transformers folder, their embeddings, and the two image preprocessings
the metrics use (openai CLIP's for the CLIP score, cmmd's for CMMD).

Preprocessing is done here with PIL rather than by CLIPImageProcessor so that it matches the
reference implementations exactly whichever image-processor backend transformers picks; sizes and
normalisation constants are still read from the folder's processor config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from face_mogle.eval.weights import ModelSpec, load_pretrained, require_hf_folder


def _get(sized, key: str):
    """Read a size field from either a dict (older configs) or a SizeDict (transformers 5)."""
    if sized is None:
        return None
    if isinstance(sized, (int, float)):
        return int(sized)
    try:
        value = sized[key]
    except (KeyError, TypeError):
        value = getattr(sized, key, None)
    return value


class ClipNet:
    """CLIPModel + tokenizer + image-processor settings from one folder."""

    def __init__(self, spec: ModelSpec, path: Path, device: str):
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        require_hf_folder(spec, path)
        self.spec, self.path, self.device = spec, path, device
        self.model = load_pretrained(CLIPModel, spec, path).to(device).eval()
        self.tokenizer = None
        self._tokenizer_cls = CLIPTokenizer
        processor = load_pretrained(CLIPImageProcessor, spec, path)
        crop = _get(processor.crop_size, "height") or self.model.config.vision_config.image_size
        short = _get(processor.size, "shortest_edge") or _get(processor.size, "height") or crop
        self.crop, self.short = int(crop), int(short)
        self.mean = [float(v) for v in processor.image_mean]
        self.std = [float(v) for v in processor.image_std]

    def load_tokenizer(self):
        if self.tokenizer is None:  # only the CLIP score needs text
            self.tokenizer = load_pretrained(self._tokenizer_cls, self.spec, self.path)
        return self.tokenizer

    @torch.no_grad()
    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected image embeddings [B, D] (float32, on CPU)."""
        out = self.model.get_image_features(pixel_values=pixels.to(self.device))
        return _normalise(_projected(out))

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised projected text embeddings [B, D]; long captions are cut at CLIP's 77 tokens."""
        tok = self.load_tokenizer()
        max_len = min(int(tok.model_max_length), int(self.model.config.text_config.max_position_embeddings))
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                           attention_mask=enc["attention_mask"].to(self.device))
        return _normalise(_projected(out))


def _projected(out) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projection; 4.x a tensor.
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise TypeError(f"unexpected CLIP output {type(out).__name__}")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float().cpu()
    return x / x.norm(dim=-1, keepdim=True)


def _normalised_tensor(img: Image.Image, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class OpenAIClipTransform:
    """openai CLIP's preprocess (what the clip-score package uses): bicubic resize of the short side,
    centre crop, normalise."""

    def __init__(self, net: ClipNet):
        self.short, self.crop, self.mean, self.std = net.short, net.crop, net.mean, net.std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        new_w, new_h = (self.short, int(self.short * h / w)) if w <= h else (int(self.short * w / h), self.short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.BICUBIC)
        left = int(round((img.size[0] - self.crop) / 2.0))
        top = int(round((img.size[1] - self.crop) / 2.0))
        img = img.crop((left, top, left + self.crop, top + self.crop))
        return _normalised_tensor(img, self.mean, self.std)


class CmmdTransform:
    """cmmd's preprocess: centre crop to a square, PIL bicubic (antialiased) resize straight to the
    model's input size, scale to [0, 1], normalise."""

    def __init__(self, net: ClipNet):
        self.crop, self.mean, self.std = net.crop, net.mean, net.std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((self.crop, self.crop), Image.BICUBIC)
        return _normalised_tensor(img, self.mean, self.std)
