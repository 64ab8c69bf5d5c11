"""Identity judge for benchmarks (never used in training): who a SynthFaces-style image shows, read
from the exact parser's label map and colours alone.

SynthFaces identity (data/synthfaces/identity.py) is the face geometry, skin tone and eye colour. The
judge measures that geometry in the face frame, so pose, scale and shift cancel: origin at the midpoint
of the two eye centroids, x along the eye axis (head tilt), lengths in units of the distance between the
eyes. Vertical positions are taken from the eye line (through the eye corners), found from the eyes'
centroid and the eye height, open or closed (`measure`). Measured:
- eyes: width; height (open eyes only); brows: inner and outer ends, thickness and height (not under
  glasses, whose rims cut them); nose: length, width and area below the eye line;
- mouth: height of its centre line, width, upper and lower lip thickness (lip area over width: the
  same whether the mouth is open, closed or smiling);
- face: widths from the mouth line to the chin, the chin's height; ears (where visible):
  outer reach and centre height;
- skin tone and eye colour as the nearest palette colour, one-hot (closed eyes show lids, not colour:
  NaN there, and in every feature a face does not show, e.g. ears under a bob).
Each measured feature is divided by its spread between renders of one person (from reference renders
made in code, `reference_noise`), so a unit is "as much as one person varies"; the one-hot colours
weigh COLOUR_WEIGHT such units. `identity_distance` is the RMS difference over the features both faces
show.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from face_mogle.data.synthfaces import EYE_COLORS, L, SKIN_TONES, parse, render
from face_mogle.data.synthfaces.identity import identity_params
from face_mogle.data.synthfaces.parser import CLOSED_EYE_PX

GEOMETRY = ("eye_w", "eye_h", "brow_in", "brow_out", "brow_t", "brow_v", "nose_len", "nose_w", "nose_area", "mouth_v",
            "mouth_w", "upper_lip", "lower_lip", *(f"face_w_{t}" for t in (0, 25, 50, 75)), "chin_v", "ear_out", "ear_v")
FEATURES = GEOMETRY + tuple(f"skin.{t}" for t in SKIN_TONES) + tuple(f"eye.{c}" for c in EYE_COLORS)
# A colour mismatch counts this many "one person's spread" units per one-hot dimension.
COLOUR_WEIGHT = 10.0
# Reference renders: identities drawn in code that no data set of the default seed 0 holds.
REFERENCE_SEED = 1
REFERENCE_IDENTITIES = 80
# The generator's mean eye height over half-width (eh 0.012..0.019, ew 0.03..0.04), for closed eyes.
EH_PER_EW = 0.0155 / 0.035
# Where the face's width is measured: share of the way from the mouth line (0) to the chin (1).
JAW_LEVELS = {f"face_w_{round(100 * t)}": t for t in (0.0, 0.25, 0.5, 0.75)}
FACE_CLASSES = tuple(L[c] for c in ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip",
                                    "l_lip", "eye_g"))


class NoFace(ValueError):
    """The image shows no face the judge can measure (no two eyes, or no nose)."""


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _nearest_name(pixels: np.ndarray, named: dict) -> str:
    colours = np.array(list(named.values()), dtype=np.float64)
    d = ((pixels[:, None, :].astype(np.float64) - colours[None]) ** 2).sum(-1)
    return list(named)[int(np.bincount(d.argmin(1), minlength=len(named)).argmax())]


def measure(image, labels=None) -> dict[str, float]:
    """The raw features (module docstring; lengths in eye distances) of one image [H, W, 3] uint8,
    with its parse where already made. Raises NoFace where no face is found."""
    image = np.asarray(image)
    labels = parse(image) if labels is None else np.asarray(labels)
    h, w = labels.shape
    eyes = {side: labels == L[f"{side}_eye"] for side in ("l", "r")}
    nose = labels == L["nose"]
    if min(eyes["l"].sum(), eyes["r"].sum()) < 2 or nose.sum() < 3:
        raise NoFace("no face found: the image needs two eyes and a nose in its SynthFaces parse")
    cl, cr = _centroid(eyes["l"]), _centroid(eyes["r"])
    d = float(np.hypot(*(cl - cr)))
    if d < 2:
        raise NoFace("no face found: the two eyes coincide")
    axis = (cl - cr) / d  # towards the image right (the person's left eye)
    down = np.array([-axis[1], axis[0]])
    origin = (cl + cr) / 2
    yy, xx = np.mgrid[0:h, 0:w]
    rx, ry = xx - origin[0], yy - origin[1]
    u = (rx * axis[0] + ry * axis[1]) / d  # across, in eye distances
    v = (rx * down[0] + ry * down[1]) / d  # down
    px = 1.0 / d  # one pixel in eye distances
    nan = float("nan")
    f = dict.fromkeys(FEATURES, nan)

    # Vertical positions from the eye line, the line through the eye corners. The origin is the eyes'
    # centroid, which sits a known share of the eye height off that line: above it by 0.12 eh for an
    # open eye (an almond eh above, 0.7 eh below), below it by 0.27 eh for a closed lid (a 1 px arc
    # sagging 0.4 eh). The nose top lies on the line too, but a glasses bridge covers it.
    area = px * px  # one pixel's area in eye distances squared
    eye_pixels = eyes["l"] | eyes["r"]
    columns = eye_pixels.any(0).sum()
    closed = eye_pixels.sum() / max(columns, 1) < CLOSED_EYE_PX
    f["eye_w"] = float(np.mean([np.ptp(u[m]) + px for m in eyes.values()]))
    if closed:
        top = -0.27 * EH_PER_EW * f["eye_w"] / 2  # the lid hides eh: the generator's typical eh / ew
    else:
        f["eye_h"] = float(eye_pixels.sum() * area / 2 / f["eye_w"])  # mean height along the eye
        top = 0.12 * f["eye_h"] / (1.7 * 2 / 3)  # eh from the almond's mean height, 1.7 eh * 2/3
    glasses = (labels == L["eye_g"]).sum() >= 4
    ins, outs, thick, brow_v = [], [], [], []
    for side in ("l", "r"):
        m = labels == L[f"{side}_brow"]
        if m.sum() < 3:
            continue
        au = np.abs(u[m])
        ins.append(au.min())
        outs.append(au.max())
        thick.append(m.sum() * area / (np.ptp(au) + px))
        brow_v.append(v[m].mean() - top)
    if ins:
        f["brow_in"], f["brow_out"] = float(np.mean(ins)), float(np.mean(outs))
        if not glasses:  # the rims cross the brows and cut them
            f["brow_t"], f["brow_v"] = float(np.mean(thick)), float(np.mean(brow_v))
    f["nose_len"] = float(v[nose].max() - top + px)
    f["nose_w"] = float(np.ptp(u[nose]) + px)
    f["nose_area"] = float((nose & (v > top + px)).sum() * area)  # below the eye line: no bridge there

    upper, lower = labels == L["u_lip"], labels == L["l_lip"]
    lips = upper | lower
    mouth_v = nan
    if lips.sum() >= 4:
        lu = u[lips]
        width = float(np.ptp(lu) + px)
        centre_u = (lu.max() + lu.min()) / 2
        # the mouth between the lips is symmetric about the mouth line at its centre, open or closed
        mouth = (labels == L["mouth"]) & (np.abs(u - centre_u) < 0.15 * width)
        mouth_v = float(v[mouth].mean()) if mouth.any() else float(v[lips].mean())
        f["mouth_w"], f["mouth_v"] = width, mouth_v - top
        f["upper_lip"] = float(upper.sum() * area / width)
        f["lower_lip"] = float(lower.sum() * area / width)

    face = np.isin(labels, FACE_CLASSES)
    band = 0.1  # half-width of the centre-line strip, in eye distances
    strip = face & (np.abs(u) < band)
    if strip.any() and not math.isnan(mouth_v):
        # chin: the face's depth below the mouth line along the centre strip (area / strip width)
        below = strip & (v > mouth_v)
        chin = mouth_v + float(below.sum() * area / (2 * band))
        f["chin_v"] = chin - top
        for key, t in JAW_LEVELS.items():  # the jaw's outline: widths from the mouth line to the chin
            level = mouth_v + t * (chin - mouth_v)
            half = 1.5 * px  # a band three pixels high: its area / height is the width, sub-pixel
            f[key] = float((face & (np.abs(v - level) < half)).sum() * area / (2 * half))

    outs, ear_v = [], []
    for side in ("l", "r"):
        m = labels == L[f"{side}_ear"]
        if m.sum() >= 6:
            outs.append(np.abs(u[m]).max())
            ear_v.append(v[m].mean() - top)
    if outs:
        f["ear_out"], f["ear_v"] = float(np.max(outs)), float(np.mean(ear_v))

    skin = labels == L["skin"]
    if skin.sum() >= 4:
        f.update({f"skin.{t}": 0.0 for t in SKIN_TONES})
        f[f"skin.{_nearest_name(image[skin], SKIN_TONES)}"] = 1.0
    if not closed:
        f.update({f"eye.{c}": 0.0 for c in EYE_COLORS})
        f[f"eye.{_nearest_name(image[eye_pixels], EYE_COLORS)}"] = 1.0
    return f


@functools.lru_cache(maxsize=8)
def reference_noise(size: int, seed: int = REFERENCE_SEED, identities: int = REFERENCE_IDENTITIES) -> np.ndarray:
    """[len(GEOMETRY)] spread of each geometry feature between renders of one person: the pooled
    standard deviation over two renders (expressions on) of each of `identities` people drawn in code,
    at `size`. Cached per process (about a second at 128 px)."""
    diffs = []
    for j in range(identities):
        person = identity_params(seed, j)
        pair = [measure(render((seed, 2 * j + k), size, True, identity=person).image) for k in range(2)]
        diffs.append([pair[0][g] - pair[1][g] for g in GEOMETRY])
    diffs = np.array(diffs)
    # the difference of two draws has twice the variance of one; floor: a quarter pixel at this size
    noise = np.sqrt(np.nanmean(diffs**2, axis=0) / 2)
    return np.maximum(noise, 0.25 / (0.17 * size))


def identity_features(image, labels=None) -> np.ndarray | None:
    """The identity vector [len(FEATURES)] of a square image [S, S, 3] uint8 RGB (NaN where the face
    does not show a feature), in units of one person's spread; None where no face is found."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"identity judge: expected a square RGB image [S, S, 3], got shape {image.shape}")
    try:
        f = measure(image, labels)
    except NoFace:
        return None
    geometry = np.array([f[g] for g in GEOMETRY]) / reference_noise(image.shape[0])
    colours = np.array([f[k] for k in FEATURES[len(GEOMETRY):]]) * COLOUR_WEIGHT
    return np.concatenate([geometry, colours])


def identity_distance(a, b) -> float:
    """RMS difference of two identity vectors over the features both show (inf when they share none)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a - b
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.mean(d**2))) if len(d) else math.inf


def distance_matrix(queries, gallery) -> np.ndarray:
    """[Q, G] identity distances; a None (no face) row or column is inf throughout."""
    width = len(FEATURES)
    q = np.array([np.full(width, np.nan) if x is None else x for x in queries], dtype=np.float64)
    g = np.array([np.full(width, np.nan) if x is None else x for x in gallery], dtype=np.float64)
    d = q[:, None, :] - g[None, :, :]
    shared = np.isfinite(d)
    count = shared.sum(-1)
    sq = np.where(shared, d, 0.0) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sqrt(sq.sum(-1) / count)
    return np.where(count > 0, out, np.inf)


def retrieval_top1(query_feats, gallery_feats, truth) -> float:
    """Share of queries whose nearest gallery vector (by identity distance) is the right one:
    truth[q] is the gallery index of query q's identity. A query with no face counts as a miss."""
    truth = np.asarray(truth)
    if len(truth) != len(query_feats) or not len(truth):
        raise ValueError(f"retrieval_top1: {len(query_feats)} queries but {len(truth)} truths (need one each, >= 1)")
    d = distance_matrix(query_feats, gallery_feats)
    hit = (d.argmin(1) == truth) & np.isfinite(d.min(1))
    return float(hit.mean())
