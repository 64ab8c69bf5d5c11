"""Five face landmarks from a face-parse label map, and the aligned face crop they give.

Face-recognition models are trained on crops in which five points (the two eye centres, the nose
tip and the two mouth corners) sit on a fixed template; the same crop makes a learnt encoder see the
face at one scale and angle whatever the render's tilt, scale and shift. The landmarks come from
the parse (CelebAMask-HQ label layout, face_mogle.labels), so no landmark detector is needed:
  * eyes: the centroids of l_eye and r_eye, ordered by the image x of the two;
  * nose tip: the centroid of the lowest NOSE_TIP_BAND of the nose region, "low" measured along the
    face's own down axis (perpendicular to the eye line), so a tilted head gets its own tip;
  * mouth corners: the extremes of mouth + lips along the eye line (the mean of the pixels within
    MOUTH_CORNER_BAND of the mouth's width of each extreme).
Coordinates are (x, y) with pixel centres at integers, as the template's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from face_mogle.identity.errors import IdentityError
from face_mogle.labels import CLASSES

# The standard ArcFace five-point template on a 112 x 112 crop (x, y): image-left eye, image-right
# eye, nose tip, image-left mouth corner, image-right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
TEMPLATE_SIZE = 112
NOSE_TIP_BAND = 0.2  # the lowest fifth of the nose: its tip and nostrils, not the bridge
# A mouth corner is the mean of the pixels within this share of the mouth's width from its end: one
# extreme pixel moves with every rasterisation, a small band does not.
MOUTH_CORNER_BAND = 0.1

_L = {name: i for i, name in enumerate(CLASSES)}
MOUTH_CLASSES = (_L["mouth"], _L["u_lip"], _L["l_lip"])
# Classes that belong to who the face is (geometry, skin, eyes); hair, hat, glasses, earrings,
# necklace, neck, clothes and background do not.
FACE_CLASSES = (_L["skin"], _L["nose"], _L["l_eye"], _L["r_eye"], _L["l_brow"], _L["r_brow"],
                _L["l_ear"], _L["r_ear"], *MOUTH_CLASSES)


def _points(labels: np.ndarray, classes) -> np.ndarray:
    ys, xs = np.nonzero(np.isin(labels, classes))
    return np.stack([xs, ys], 1).astype(np.float64)


def landmarks(labels: np.ndarray, name: str = "<image>") -> np.ndarray:
    """The five landmarks [5, 2] (template order) of a label map [H, W]; IdentityError when it holds
    no face (no skin, or an eye, the nose or the mouth missing)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise IdentityError(f"{name}: expected a label map [H, W], got shape {list(labels.shape)}")
    parts = {"skin": (_L["skin"],), "left eye": (_L["l_eye"],), "right eye": (_L["r_eye"],),
             "nose": (_L["nose"],), "mouth": MOUTH_CLASSES}
    pts = {part: _points(labels, classes) for part, classes in parts.items()}
    missing = [part for part, p in pts.items() if len(p) == 0]
    if missing:
        raise IdentityError(f"{name}: no face found (the face parse has no {', '.join(missing)}): "
                            "give a front-facing photo of one face")
    eyes = sorted((pts["left eye"].mean(0), pts["right eye"].mean(0)), key=lambda e: e[0])
    across = eyes[1] - eyes[0]
    if np.hypot(*across) < 2.0:  # both eyes on one spot: a parse, not a face
        raise IdentityError(f"{name}: no face found (its two eyes are {np.hypot(*across):.1f} px apart)")
    across /= np.hypot(*across)
    down = np.array([-across[1], across[0]])  # +90 degrees from the eye line: towards the chin (y down)

    nose = pts["nose"]
    depth = nose @ down
    lo, hi = depth.min(), depth.max()
    tip = nose[depth >= hi - NOSE_TIP_BAND * (hi - lo)].mean(0)

    mouth = pts["mouth"]
    side = mouth @ across
    reach = max(1.0, MOUTH_CORNER_BAND * (side.max() - side.min()))
    left = mouth[side <= side.min() + reach].mean(0)
    right = mouth[side >= side.max() - reach].mean(0)
    return np.stack([eyes[0], eyes[1], tip, left, right])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity transform (rotation, uniform scale, shift; no reflection) that maps the points
    `src` [K, 2] onto `dst` [K, 2] best in least squares, as a 2 x 3 matrix M: dst ≈ M @ [x, y, 1]."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    # x' = a x - b y + tx,  y' = b x + a y + ty: linear in (a, b, tx, ty)
    k = len(src)
    rows = np.zeros((2 * k, 4))
    rows[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(k), np.zeros(k)], 1)
    rows[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(k), np.ones(k)], 1)
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def template(size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The ArcFace template scaled to a size x size crop (pixel centres at integers)."""
    return (ARCFACE_TEMPLATE + 0.5) * (size / TEMPLATE_SIZE) - 0.5


def warp(image: Image.Image, matrix: np.ndarray, size: int, resample=Image.BILINEAR, fill=0) -> Image.Image:
    """The size x size crop of `image` under `matrix` (input → crop, pixel centres at integers)."""
    m = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(m)
    # PIL samples the input at inv(out + 0.5) in coordinates where pixel i spans [i, i + 1): shift
    # both sides by half a pixel so integer centres map as the matrix says.
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unhalf = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    pil = half @ inv @ unhalf
    return image.transform((size, size), Image.AFFINE, tuple(pil[:2].ravel()), resample=resample, fillcolor=fill)


def align_matrix(labels: np.ndarray, size: int = TEMPLATE_SIZE, name: str = "<image>") -> np.ndarray:
    """The 2 x 3 matrix that takes the face in `labels` onto the template of a size x size crop."""
    return similarity(landmarks(labels, name), template(size))


def aligned_crop(image: Image.Image, labels: np.ndarray, size: int = TEMPLATE_SIZE, name: str = "<image>",
                 matrix: np.ndarray | None = None) -> tuple[Image.Image, np.ndarray]:
    """The aligned RGB crop and its label map (nearest), both size x size. `labels` must be at the
    image's size; `matrix` overrides the alignment (e.g. a jittered one in training)."""
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape != (image.height, image.width):
        raise IdentityError(f"{name}: the label map is {labels.shape[1]}x{labels.shape[0]}, "
                            f"the image {image.width}x{image.height}: they must match")
    m = align_matrix(labels, size, name) if matrix is None else matrix
    crop = warp(image.convert("RGB"), m, size)
    crop_labels = np.asarray(warp(Image.fromarray(labels, "L"), m, size, Image.NEAREST))
    return crop, crop_labels
