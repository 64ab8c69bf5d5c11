"""A small CNN identity encoder for SynthFaces, trained contrastively over identities.

Input: the aligned face crop (align.py, CROP x CROP) with everything that is not the face (hair,
hat, glasses, jewellery, neck, clothes, background) set to grey using the crop's label map, so the
net sees only what makes the identity (geometry, skin tone, eye colour). Output: a DIM-d
L2-normalised embedding. Training draws P identities x K renders per batch and minimises the
supervised contrastive loss (renders of one identity pull together, all others push apart), with
augmentations that leave identity alone: a small extra shift / scale / tilt of the alignment and a
mild brightness change (skin tones stay far apart) plus pixel noise.

Saved as a folder: encoder.safetensors (weights) and encoder.json (EncoderConfig and training
notes), each written atomically (temp file, then rename).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from face_mogle.identity.align import FACE_CLASSES, align_matrix, warp
from face_mogle.identity.errors import IdentityError
from face_mogle.utils import atomic_save_safetensors, atomic_write, read_safetensors

DEFAULT_SYNTHFACES = "checkpoints/identity/synthfaces"
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "encoder.json"
FORMAT = "face-mogle-identity-encoder/1"


@dataclass
class EncoderConfig:
    crop: int = 64  # aligned crop side (the ArcFace template scaled from 112)
    width: int = 32  # channels of the first block; doubled per block up to 4x
    blocks: int = 4  # each halves the side: 64 → 4
    dim: int = 128  # embedding size
    face_only: bool = True  # grey out the non-face classes (see module docstring)


@dataclass
class TrainSettings:
    steps: int = 2000
    identities_per_batch: int = 16  # P
    renders_per_identity: int = 4  # K (fewer where an identity has fewer)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    max_shift: float = 0.03  # of the crop side
    max_scale: float = 0.05  # relative
    max_tilt_deg: float = 5.0
    max_brightness: float = 0.05  # relative, per image: skin tones differ by far more
    noise: float = 2.0  # pixel noise, in 0..255 units
    seed: int = 0


class SynthFacesNet(nn.Module):
    """blocks x (conv3x3 → GN → ReLU → conv3x3/2 → GN → ReLU), then the flattened map → DIM. The map
    is flattened, not pooled: where each feature sits on the template is the face geometry.
    GroupNorm, not BatchNorm: the same embedding in training and at inference, whatever the batch."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        layers, c_in = [], 3
        for i in range(cfg.blocks):
            c = cfg.width * min(2**i, 4)
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(8, c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = cfg.crop // 2**cfg.blocks
        self.head = nn.Linear(c_in * side * side, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x).flatten(1)), dim=1)


def check_config(cfg: EncoderConfig, name: str = "EncoderConfig") -> None:
    if cfg.blocks < 1 or cfg.crop % 2**cfg.blocks or cfg.crop < 2**cfg.blocks:
        raise IdentityError(f"{name}: crop {cfg.crop} must be a positive multiple of 2**blocks = {2**cfg.blocks}")
    if cfg.width < 8 or cfg.width % 8 or cfg.dim < 1:
        raise IdentityError(f"{name}: width must be a multiple of 8 (GroupNorm(8)) and dim >= 1; got width "
                            f"{cfg.width}, dim {cfg.dim}")


def to_tensor(crops: Sequence[Image.Image], crop_labels: Sequence[np.ndarray], face_only: bool) -> torch.Tensor:
    """Aligned crops + their label maps → float [N, 3, S, S] in [-1, 1], non-face pixels 0 (grey)."""
    x = torch.from_numpy(np.stack([np.asarray(c.convert("RGB"), dtype=np.float32) for c in crops]))
    x = x.permute(0, 3, 1, 2) / 127.5 - 1.0
    if face_only:
        keep = torch.from_numpy(np.stack([np.isin(lab, FACE_CLASSES) for lab in crop_labels]))
        x = x * keep[:, None]
    return x


class SynthFacesEncoder:
    """A trained SynthFacesNet with its config: `encode(crops, crop_labels)` → [N, dim]."""

    def __init__(self, net: SynthFacesNet, cfg: EncoderConfig, info: Optional[dict] = None, device="cpu"):
        self.net, self.cfg, self.info = net.to(device).eval(), cfg, dict(info or {})
        self.device = device

    @property
    def dim(self) -> int:
        return self.cfg.dim

    @property
    def crop_size(self) -> int:
        return self.cfg.crop

    @torch.no_grad()
    def encode(self, crops: Sequence[Image.Image], crop_labels: Sequence[np.ndarray]) -> torch.Tensor:
        if not crops:
            return torch.zeros(0, self.dim)
        return self.net(to_tensor(crops, crop_labels, self.cfg.face_only).to(self.device)).float().cpu()

    def save(self, folder: str | os.PathLike, extra: Optional[dict] = None, dtype: Optional[torch.dtype] = None) -> Path:
        return save_encoder(self.net, self.cfg, folder, {**self.info, **(extra or {})}, dtype)


def save_encoder(net: SynthFacesNet, cfg: EncoderConfig, folder: str | os.PathLike, info: Optional[dict] = None,
                 dtype: Optional[torch.dtype] = None) -> Path:
    """Weights, then the JSON (which names them): a reader that finds the JSON finds whole weights.
    `dtype` (e.g. float16, for a shipped copy) stores the floating tensors in it; loading casts back."""
    folder = Path(folder)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in net.state_dict().items()}
    atomic_save_safetensors(state, folder / WEIGHTS_FILE, metadata={"format": FORMAT})
    text = json.dumps({"format": FORMAT, "config": dataclasses.asdict(cfg), "info": info or {}}, indent=1) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def load_synthfaces_encoder(weights: str | os.PathLike = DEFAULT_SYNTHFACES, device: str = "cpu") -> SynthFacesEncoder:
    """A folder written by `save_encoder` (or its encoder.safetensors) → SynthFacesEncoder."""
    folder = Path(weights)
    if folder.suffix == ".safetensors":
        folder = folder.parent
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise IdentityError(f"{folder}: no SynthFaces identity encoder there (expected {CONFIG_FILE} and {WEIGHTS_FILE}); "
                            "train one with python -m face_mogle.identity.train_encoder --root DATA --out "
                            f"{folder}, or set model.identity.weights")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        cfg = EncoderConfig(**meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise IdentityError(f"{config_path}: not a SynthFaces identity encoder config ({' '.join(str(err).split())[:160]})") from None
    check_config(cfg, str(config_path))
    try:
        state = read_safetensors(weights_path)
    except ValueError as err:
        raise IdentityError(str(err)) from None
    net = SynthFacesNet(cfg)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        bad = sorted(set(expected) ^ set(found)) or [k for k in expected if expected[k] != found[k]]
        raise IdentityError(f"{weights_path}: weights do not fit the encoder of {config_path.name} "
                            f"(first mismatch: {bad[0]}, {found.get(bad[0])} vs expected {expected.get(bad[0])})")
    net.load_state_dict(state)  # copies into the net's float32 parameters (a float16 copy casts back)
    return SynthFacesEncoder(net, cfg, meta.get("info"), device)


# ---------------------------------------------------------------------------------------------
# Training


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) on L2-normalised z [B, D]: for each anchor,
    the mean over its positives of -log softmax over every other sample."""
    sim = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None]) & ~eye
    has = pos.any(1)
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)[has] / pos.sum(1)[has])
    return per_anchor.mean()


@dataclass
class FaceSet:
    """Faces in memory for training: images, label maps, identities and each face's alignment."""

    images: list  # PIL RGB
    labels: list  # uint8 [H, W]
    identities: np.ndarray  # int [N]
    names: list  # what errors call each face

    def matrices(self, crop: int) -> list[np.ndarray]:
        return [align_matrix(lab, crop, name) for lab, name in zip(self.labels, self.names)]


def jitter(matrix: np.ndarray, crop: int, rng: np.random.Generator, s: TrainSettings) -> np.ndarray:
    """The alignment followed by a small random similarity about the crop centre."""
    angle = math.radians(rng.uniform(-s.max_tilt_deg, s.max_tilt_deg))
    scale = 1.0 + rng.uniform(-s.max_scale, s.max_scale)
    shift = rng.uniform(-s.max_shift, s.max_shift, 2) * crop
    c = (crop - 1) / 2.0
    r = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    extra = np.eye(3)
    extra[:2, :2], extra[:2, 2] = r, np.array([c, c]) - r @ np.array([c, c]) + shift
    return (extra @ np.vstack([matrix, [0, 0, 1]]))[:2]


def augmented_batch(faces: FaceSet, matrices: list, index: Sequence[int], cfg: EncoderConfig, s: TrainSettings,
                    rng: np.random.Generator) -> torch.Tensor:
    crops, crop_labels = [], []
    for i in index:
        m = jitter(matrices[i], cfg.crop, rng, s)
        crops.append(warp(faces.images[i], m, cfg.crop))
        crop_labels.append(np.asarray(warp(Image.fromarray(faces.labels[i], "L"), m, cfg.crop, Image.NEAREST)))
    x = to_tensor(crops, crop_labels, cfg.face_only)
    gain = torch.from_numpy(rng.uniform(1 - s.max_brightness, 1 + s.max_brightness, (len(index), 1, 1, 1))).float()
    noise = torch.from_numpy(rng.normal(0.0, s.noise / 127.5, x.shape)).float()
    keep = (x != 0).any(1, keepdim=True)  # the grey outside the face stays grey
    return ((x + 1) * gain - 1 + noise).clamp(-1, 1) * keep


def identity_groups(identities: np.ndarray, min_renders: int = 2) -> dict[int, np.ndarray]:
    groups = {int(i): np.flatnonzero(identities == i) for i in np.unique(identities)}
    return {i: g for i, g in groups.items() if len(g) >= min_renders}


def sample_batch(groups: dict, s: TrainSettings, rng: np.random.Generator) -> list[int]:
    ids = list(groups)
    chosen = rng.choice(len(ids), size=min(s.identities_per_batch, len(ids)), replace=False)
    index = []
    for c in chosen:
        g = groups[ids[c]]
        index += rng.choice(g, size=min(s.renders_per_identity, len(g)), replace=False).tolist()
    return index


def train_encoder(faces: FaceSet, cfg: EncoderConfig = EncoderConfig(), s: TrainSettings = TrainSettings(),
                  progress: bool = False, log=None) -> tuple[SynthFacesEncoder, list[float]]:
    """Train a SynthFacesNet on `faces`; returns the encoder and the loss of every step."""
    from tqdm import tqdm

    check_config(cfg)
    groups = identity_groups(faces.identities)
    if len(groups) < 2:
        raise IdentityError(f"contrastive training needs at least 2 identities with 2 or more renders each; "
                            f"found {len(groups)} among {len(faces.images)} faces")
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    net = SynthFacesNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    # cosine decay: the last steps average instead of jumping at full rate
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, s.steps) / s.steps)))
    matrices = faces.matrices(cfg.crop)
    losses = []
    net.train()
    bar = tqdm(range(s.steps), desc="identity encoder", unit="step", disable=not progress)
    for step in bar:
        index = sample_batch(groups, s, rng)
        x = augmented_batch(faces, matrices, index, cfg, s, rng)
        loss = supcon_loss(net(x), torch.as_tensor(faces.identities[index]), s.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if log is not None:
            log(step, losses[-1])
    info = {"steps": s.steps, "train_faces": len(faces.images), "train_identities": len(groups),
            "settings": dataclasses.asdict(s), "final_loss": float(np.mean(losses[-20:]))}
    return SynthFacesEncoder(net, cfg, info), losses


def retrieval_top1(embeddings: torch.Tensor, identities: np.ndarray) -> float:
    """Each identity's first face is the gallery; every other face is a query: the share of queries
    whose nearest gallery face (cosine) is its own identity."""
    identities = np.asarray(identities)
    first = {}
    for i, ident in enumerate(identities):
        first.setdefault(int(ident), i)
    gallery_idx = np.array(list(first.values()))
    queries = np.array([i for i in range(len(identities)) if i not in set(gallery_idx)])
    if len(queries) == 0:
        return float("nan")
    sim = embeddings[queries] @ embeddings[gallery_idx].T
    best = gallery_idx[sim.argmax(1).numpy()]
    return float((identities[best] == identities[queries]).mean())
