"""Face validity: does a generated SynthFaces image hold one whole face, as a real render does?

A face is valid when the exact SynthFaces parse of the image has one face region (skin and the
parts drawn on it) holding two eyes, two brows, a nose and a mouth, brows above eyes above nose
above mouth on each side, and every measured size and position inside the range of real renders.

The range is not typed by hand: `reference_ranges` renders faces in code that no data set made with
the default seed holds (seed 1, ids 0-499), parses them like generated images, measures the same
features and takes each feature's min..max, widened by a margin. Given a run's VAE, the renders are
also measured after a round trip through it: every generated face is decoded by that VAE, and a real
face through it (its edges moved by a pixel, a thin brow cut in two) is still a whole face. Computed
on the fly (seconds, cached per process), so it follows the generator, the parser and the VAE.

Features (positions in the face frame: origin at the face region's centroid, x along the eye axis,
lengths in units of sqrt(face area), so they do not depend on image size or head tilt):
- face: area (share of the image), centre x / y (share of the image side), share of all face-class
  pixels in the largest face region (1 for one face, lower when skin is scattered), eye-axis tilt;
- each part (l_eye, r_eye, l_brow, r_brow, nose, mouth = mouth + lips): area (share of the face),
  x and y of its centroid, the share of its pixels inside the face region, and the share in its
  own largest piece (a scattered part is in many pieces).
"""

from __future__ import annotations

import functools
import math
from collections import Counter

import numpy as np
from scipy import ndimage

from face_mogle.data.synthfaces import L, parse, render

# What the face region is made of: skin and everything drawn on it.
FACE_CLASSES = tuple(L[c] for c in ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip",
                                    "l_lip"))
PARTS = {
    "l_eye": (L["l_eye"],), "r_eye": (L["r_eye"],), "l_brow": (L["l_brow"],), "r_brow": (L["r_brow"],),
    "nose": (L["nose"],), "mouth": (L["mouth"], L["u_lip"], L["l_lip"]),
}
# Top to bottom on each side of the face.
ORDER = (("r_brow", "r_eye", "nose", "mouth"), ("l_brow", "l_eye", "nose", "mouth"))

# The reference: renders outside the data sets of the default seed 0 (train and held-out alike).
REFERENCE_SEED = 1
REFERENCE_IDS = range(500)
# Each feature's range is min..max over the reference, widened on both sides by MARGIN of its width
# plus SLACK of its median magnitude (a feature that never varies, such as a share of 1, would
# otherwise admit only its exact value).
MARGIN = 0.25
SLACK = 0.05
# Pieces smaller than 1/SPECK_DIVISOR of the image (4 px at 128 px, at least 3) are not counted.
SPECK_DIVISOR = 4096


def _pieces(mask: np.ndarray, speck: int) -> tuple[np.ndarray, np.ndarray]:
    """(the mask without pieces smaller than `speck` pixels, its largest piece), 8-connected. Specks
    are what blur and noise scatter (a blend of two colours can land on a third class's colour)."""
    comp, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    sizes[0] = 0
    kept = sizes[comp] >= speck
    largest = comp == int(sizes.argmax()) if n and sizes.max() >= speck else np.zeros_like(mask)
    return kept, largest


def features(labels) -> dict[str, float] | None:
    """The measured features of one label map [H, W] (see the module docstring), or None where it
    has no face region or lacks a part (such a face is invalid whatever the ranges)."""
    out = _measure(labels)
    return out if isinstance(out, dict) else None


def _measure(labels) -> dict[str, float] | str:
    """The features of a label map, or what it lacks: "no face", "no <part>" (the first missing, in
    PARTS order) or "eyes at one point" (no eye axis)."""
    labels = np.asarray(labels)
    h, w = labels.shape
    speck = max(3, h * w // SPECK_DIVISOR)
    face_all, face = _pieces(np.isin(labels, FACE_CLASSES), speck)
    area = int(face.sum())
    if area == 0:
        return "no face"
    ys, xs = np.nonzero(face)
    centre = np.array([xs.mean(), ys.mean()])
    parts = {name: _pieces(np.isin(labels, classes), speck) for name, classes in PARTS.items()}
    lacking = [name for name, (kept, _) in parts.items() if not kept.any()]
    if lacking:
        return f"no {lacking[0]}"
    cents = {name: np.array([np.nonzero(m)[1].mean(), np.nonzero(m)[0].mean()]) for name, (m, _) in parts.items()}
    axis = cents["l_eye"] - cents["r_eye"]  # the person's right eye is on the image left
    norm = float(np.hypot(*axis))
    if norm == 0:
        return "eyes at one point"
    axis /= norm
    down = np.array([-axis[1], axis[0]])
    unit = math.sqrt(area)
    out = {"face.area": area / (h * w), "face.x": centre[0] / w, "face.y": centre[1] / h,
           "face.share": area / int(face_all.sum()), "face.tilt": math.atan2(axis[1], axis[0])}
    for name, (m, largest) in parts.items():
        n = int(m.sum())
        rel = cents[name] - centre
        out[f"{name}.area"] = n / area
        out[f"{name}.x"] = float(rel @ axis) / unit
        out[f"{name}.y"] = float(rel @ down) / unit
        out[f"{name}.inside"] = int((m & face).sum()) / n
        out[f"{name}.compact"] = int(largest.sum()) / n
    return out


def in_order(feats: dict[str, float]) -> bool:
    """Brows above eyes above the nose above the mouth, on each side of the face."""
    return all(feats[f"{a}.y"] < feats[f"{b}.y"] for side in ORDER for a, b in zip(side, side[1:]))


def _through_vae(vae, images: list[np.ndarray]) -> list[np.ndarray]:
    """Images [S, S, 3] uint8 encoded and decoded by `vae` (posterior means), as uint8."""
    import torch

    from face_mogle.encoding import decode_tokens, encode_images

    param = next(vae.parameters())
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    out = []
    for k in range(0, len(images), 25):
        x = torch.from_numpy(np.stack(images[k : k + 25])).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            y = decode_tokens(vae, encode_images(vae, x.to(param.device, param.dtype)), x.shape[-1], scale)
        out += list((y.float() * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy())
    return out


class TooSmallToScore(ValueError):
    """Real renders at this size lose parts in parsing (eyes and brows a pixel or two): validity
    cannot be measured there."""


@functools.lru_cache(maxsize=8)
def reference_ranges(size: int = 128, expressions: bool = False, vae=None, seed: int = REFERENCE_SEED,
                     ids: tuple[int, ...] = tuple(REFERENCE_IDS), margin: float = MARGIN,
                     slack: float = SLACK) -> dict[str, tuple[float, float]]:
    """{feature: (low, high)} from real renders (seed, i) for i in ids at `size`, parsed like generated
    images; with `vae` (a run's AutoencoderKL), also from the same renders through it. A real face
    can lack a part too (brows hidden under glasses: about 1 in 500); those are left out, but more than
    2% would mean the checks do not fit the generator: an error."""
    images = [render((seed, i), size, expressions).image for i in ids]
    if vae is not None:
        images += _through_vae(vae, images)
    rows = [features(parse(im)) for im in images]
    rows = [r for r in rows if r is not None and in_order(r)]
    if len(rows) < 0.98 * len(images):
        raise TooSmallToScore(f"face validity: {len(images) - len(rows)} of {len(images)} real renders (seed {seed}) at "
                              f"{size} px lack a part or are out of order; the checks do not fit the generator at this size")
    ranges = {}
    for key in rows[0]:
        values = np.array([r[key] for r in rows])
        lo, hi = float(values.min()), float(values.max())
        pad = margin * (hi - lo) + slack * abs(float(np.median(values)))
        ranges[key] = (lo - pad, hi + pad)
    return ranges


def check(labels, ranges: dict[str, tuple[float, float]]) -> str | None:
    """Why a label map is not a valid face ("no face", "no <part>", "parts out of order", or the first
    feature out of range), or None when it is valid."""
    feats = _measure(labels)
    if isinstance(feats, str):
        return feats
    if not in_order(feats):
        return "parts out of order"
    for key, (lo, hi) in ranges.items():
        if not lo <= feats[key] <= hi:
            return key
    return None


def face_validity(images, size: int | None = None, expressions: bool = False, labels=None, vae=None) -> dict:
    """Share of valid faces among `images` (each [S, S, 3] uint8 RGB), with the count of each reason
    for failing. All images share one size (the ranges come from renders at that size); `labels`:
    their parses where already made (parsing is the costly part); `vae`: the autoencoder that decoded
    them (generated faces: the run's), so that the ranges include real faces through it."""
    images = list(images)
    if not images:
        raise ValueError("face validity: no images given")
    sizes = {np.asarray(im).shape[:2] for im in images}
    if len(sizes) != 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
        raise ValueError(f"face validity: images must be square and of one size, got sizes {sorted(sizes)}")
    side = next(iter(sizes))[0]
    if size is not None and size != side:
        raise ValueError(f"face validity: images are {side} px, expected {size}")
    ranges = reference_ranges(side, expressions, vae)
    parsed = labels if labels is not None else [parse(np.asarray(im)) for im in images]
    reasons = [check(lab, ranges) for lab in parsed]
    fails = Counter(r.split(".")[0] if r and "." in r else r for r in reasons if r is not None)
    return {"validity": sum(r is None for r in reasons) / len(reasons), "images": len(reasons),
            "failures": dict(fails.most_common())}
