"""The exact SynthFaces parser: an image back to its label map, its colours and its expression.

Nearest class colour first (the palette keeps classes MIN_CLASS_DISTANCE apart). Symmetric pairs
share a colour and are split by geometry, from the image alone:
  * l_eye/r_eye, l_brow/r_brow, l_ear/r_ear: split by the face's vertical centre line, i.e. the line
    through the eyes' centroid perpendicular to the eyes' principal axis (this follows head tilt).
    As in CelebAMask-HQ, "l_" is the person's left = the IMAGE RIGHT side of the centre line.
  * u_lip/l_lip: split by the mouth line, the line through the mouth pixels (median) parallel to
    the eye axis; upper = the side towards the eyes. A clearly bent mouth (a smile) is split by a
    parabola fitted to the mouth pixels instead. The generator always draws a mouth band at least
    2 px thick along the whole lip width (a closed mouth is that thin band), so the two lips never
    touch and the split has a margin of more than a pixel.
Noise and blur: a pixel whose nearest colour wins narrowly, or which is far from every colour (a
blend), is decided from the sure pixels around it (see `parse`), so the parse degrades gently.
"""

from __future__ import annotations

import numpy as np

from face_mogle.data.synthfaces.palette import ATTRIBUTE_SOURCES, L, TABLE_LABEL, TABLE_RGB, min_pixels
from face_mogle.labels import NUM_CLASSES

# parse: pixels whose nearest colour wins by less than UNSURE_MARGIN (noise), or which are
# farther than FAR_DISTANCE from every colour (blends made by blur), are decided from context.
UNSURE_MARGIN = 15.0
FAR_DISTANCE = 20.0
# expression_of: a mouth whose corners rise by more than SMILE_BEND of its half-width smiles (the
# generator bends by 0.35..0.5); eyes thinner than CLOSED_EYE_PX on average are closed (lids: 1 px).
SMILE_BEND = 0.15
CLOSED_EYE_PX = 1.75


def _nearest(pixels: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Index of the nearest colour in rgb [K, 3] for each pixel [N, 3]."""
    rgb = rgb.astype(np.float32)
    d = (rgb**2).sum(1)[None] - 2 * pixels.astype(np.float32) @ rgb.T
    return np.argmin(d, axis=1)


def _classify(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, ambiguous, distance), each [N], for pixels [N, 3] by nearest table colour.
    ambiguous: another class's colour is nearly as close (margin < UNSURE_MARGIN), where noise
    flips labels; distance: to the nearest colour. Chunked to bound memory."""
    label = np.empty(len(pixels), dtype=np.uint8)
    ambiguous = np.empty(len(pixels), dtype=bool)
    dist = np.empty(len(pixels), dtype=np.float32)
    same_class = TABLE_LABEL[:, None] == TABLE_LABEL[None]  # [K, K]
    for i in range(0, len(pixels), 1 << 15):
        chunk = pixels[i : i + (1 << 15)].astype(np.float32)
        d2 = (chunk**2).sum(1)[:, None] - 2 * chunk @ TABLE_RGB.T + (TABLE_RGB**2).sum(1)[None]
        d = np.sqrt(np.maximum(d2, 0.0))  # [n, K]
        best = d.argmin(1)
        d1 = d[np.arange(len(chunk)), best]
        d2 = np.where(same_class[best], np.inf, d).min(1)  # nearest colour of another class
        label[i : i + len(chunk)] = TABLE_LABEL[best]
        ambiguous[i : i + len(chunk)] = d2 - d1 < UNSURE_MARGIN
        dist[i : i + len(chunk)] = d1
    return label, ambiguous, dist


def _check_image(image) -> np.ndarray:
    """RGB(A) [H, W, 3|4] in 0..255 -> uint8 [H, W, 3] (other dtypes are rounded and clipped)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64)), 0, 255).astype(np.uint8)
    return img


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4 neighbours are in the mask too: drops isolated noise pixels."""
    m = mask.copy()
    m[1:] &= mask[:-1]
    m[:-1] &= mask[1:]
    m[:, 1:] &= mask[:, :-1]
    m[:, :-1] &= mask[:, 1:]
    return m


def _neighbour_colours(labels: np.ndarray, unsure: np.ndarray, ys, xs, radius: int) -> np.ndarray:
    """[n, K] bool: table colours of the classes that sure pixels within `radius` of (ys, xs) have."""
    known = np.where(unsure, NUM_CLASSES, labels).astype(np.int64)  # NUM_CLASSES = "unsure"
    padded = np.pad(known, radius, constant_values=NUM_CLASSES)
    near = np.zeros((len(ys), NUM_CLASSES + 1), dtype=bool)
    rows = np.arange(len(ys))
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            near[rows, padded[ys + dy, xs + dx]] = True
    allowed = near[:, TABLE_LABEL]
    allowed[~allowed.any(1)] = True  # no sure neighbour: every colour stays possible
    return allowed


def _resolve_ambiguous(img, labels, ambiguous, unsure, radius: int = 2) -> None:
    """Ambiguous pixels (noise) take the nearest colour among the classes around them."""
    ys, xs = np.nonzero(ambiguous)
    if len(ys) == 0:
        return
    allowed = _neighbour_colours(labels, unsure, ys, xs, radius)
    d = ((img[ys, xs][:, None, :].astype(np.float32) - TABLE_RGB[None]) ** 2).sum(-1)
    labels[ys, xs] = TABLE_LABEL[np.where(allowed, d, np.inf).argmin(1)]


def _resolve_blends(img, labels, far, unsure, radius: int = 2) -> None:
    """Far pixels (blur) are explained as a blend of two table colours.

    A blurred edge pixel is a mix of the regions it sits between, and such a mix can lie near
    some third class's colour. So it is matched to the nearest segment between a colour A of a
    class found among the sure pixels around it and any colour B, and takes the class of the end
    it is closer to. A thin part whose every pixel is blended (a blurred brow) survives this way.
    """
    ys, xs = np.nonzero(far)
    if len(ys) == 0:
        return
    allowed_a = _neighbour_colours(labels, unsure, ys, xs, radius)
    k = len(TABLE_RGB)
    seg = TABLE_RGB[None, :] - TABLE_RGB[:, None]  # [K_a, K_b, 3]: B - A
    seg_len2 = np.maximum((seg**2).sum(-1), 1e-6)
    pix = img[ys, xs].astype(np.float32)
    for i in range(0, len(ys), 512):
        rel = pix[i : i + 512, None, :] - TABLE_RGB[None]  # [n, K_a, 3]: P - A
        n = len(rel)
        dot = np.einsum("nac,abc->nab", rel, seg)
        t = np.clip(dot / seg_len2, 0.0, 1.0)  # position of the nearest point on A -> B
        d2 = (rel**2).sum(-1)[:, :, None] - 2 * t * dot + t**2 * seg_len2
        d2 = np.where(allowed_a[i : i + 512, :, None], d2, np.inf).reshape(n, k * k)
        best = d2.argmin(1)
        end = np.where(t.reshape(n, k * k)[np.arange(n), best] < 0.5, best // k, best % k)
        labels[ys[i : i + 512], xs[i : i + 512]] = TABLE_LABEL[end]


def _clean_isolated(labels: np.ndarray, unsure: np.ndarray, min_agree: int = 3, rounds: int = 2) -> None:
    """Relabel, in place, unsure pixels that agree with fewer than `min_agree` of their 8
    neighbours: they take the neighbours' majority label.

    This removes the speckle that noise scatters into the small classes, while clean pixels
    (on or near a table colour) are never touched, however thin the part they belong to.
    """
    h, w = labels.shape
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for _ in range(rounds):
        padded = np.pad(labels, 1, mode="edge")
        nbrs = np.stack([padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in offsets])
        agree = (nbrs == labels[None]).sum(0)
        ys, xs = np.nonzero(unsure & (agree < min_agree))
        if len(ys) == 0:
            return
        votes = np.zeros((len(ys), NUM_CLASSES), dtype=np.int32)
        rows = np.arange(len(ys))
        for k in range(len(offsets)):
            votes[rows, nbrs[k, ys, xs]] += 1
        labels[ys, xs] = votes.argmax(1)


def _face_frame(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre [x, y], unit axis towards the image right) of the face, from the eye pixels."""
    eyes = labels == L["l_eye"]
    core = _eroded(eyes)
    if core.sum() >= 8:
        eyes = core
    ys, xs = np.nonzero(eyes)
    if len(xs) >= 4:
        pts = np.stack([xs, ys], 1).astype(np.float64)
        centre = pts.mean(0)
        cov = np.cov((pts - centre).T)
        axis = np.linalg.eigh(cov)[1][:, -1]
        return centre, axis if axis[0] >= 0 else -axis
    skin = np.nonzero(labels == L["skin"])
    if len(skin[0]):
        return np.array([skin[1].mean(), skin[0].mean()]), np.array([1.0, 0.0])
    h, w = labels.shape
    return np.array([(w - 1) / 2, (h - 1) / 2]), np.array([1.0, 0.0])


def _mouth_curve(across, down, mouth, lips) -> tuple[float, float, float, float]:
    """The mouth's centre line, down = c0 + c2 * s**2 with s = (across - u0) / half_width, in a
    frame (across, down) of pixel coordinates [H, W]: -> (u0, half_width, c0, c2). u0 and the
    half-width come from the lips' extent; c0, c2 from a fit to the median depth of the mouth
    pixels in 8 bins along the lips (medians: stray pixels do not move it)."""
    u = across[lips]
    u0, hw = (u.max() + u.min()) / 2, max((u.max() - u.min()) / 2, 1.0)
    s, d = (across[mouth] - u0) / hw, down[mouth]
    bins = np.clip(np.floor((s + 1) * 4), 0, 7)
    at = np.unique(bins)
    if len(at) < 3:  # too short to bend
        return u0, hw, float(np.median(d)), 0.0
    xs = np.array([np.median(s[bins == b]) for b in at])
    ys = np.array([np.median(d[bins == b]) for b in at])
    c0, c2 = np.linalg.lstsq(np.stack([np.ones_like(xs), xs**2], 1), ys, rcond=None)[0]
    return u0, hw, float(c0), float(c2)


def parse(image) -> np.ndarray:
    """Recover the label map of a SynthFaces-style image [H, W, 3] (uint8 RGB).

    Nearest class colour; pixels that noise or blur made unsure are decided from the sure pixels
    around them; then the symmetric pairs and the lips are split by geometry (module docstring).
    Returns uint8 [H, W] with CelebAMask-HQ labels."""
    img = _check_image(image)
    h, w = img.shape[:2]
    # classify each distinct colour once (a clean image has few), then spread to the pixels
    code = img.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    uniq, inverse = np.unique(code, return_inverse=True)
    colours = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=1)
    labels, ambiguous, dist = (a[inverse].reshape(h, w) for a in _classify(colours))
    # A pixel far from every colour is a blend (blur). On a noisy image every pixel is somewhat
    # far, so the bar rises with the image's typical distance.
    far = dist > max(FAR_DISTANCE, 2.0 * float(np.median(dist)))
    unsure = ambiguous | far  # the resolvers below read only the sure pixels' labels
    _resolve_ambiguous(img, labels, ambiguous & ~far, unsure)
    _resolve_blends(img, labels, far, unsure)
    _clean_isolated(labels, unsure)

    centre, axis = _face_frame(labels)
    normal = np.array([-axis[1], axis[0]])  # points down the face, towards the mouth
    yy, xx = np.mgrid[0:h, 0:w]
    rel_x, rel_y = xx - centre[0], yy - centre[1]
    across = rel_x * axis[0] + rel_y * axis[1]  # > 0: image right = the person's left
    for left, right in ((L["l_eye"], L["r_eye"]), (L["l_brow"], L["r_brow"]), (L["l_ear"], L["r_ear"])):
        labels[(labels == left) & (across <= 0)] = right

    down = rel_x * normal[0] + rel_y * normal[1]
    lips = labels == L["u_lip"]
    if lips.any():
        mouth = labels == L["mouth"]
        # only mouth pixels near the lips count: stray pixels elsewhere must not move the line
        ly, lx = np.nonzero(lips)
        pad = max(3, int(ly.max() - ly.min()))
        box = np.zeros_like(mouth)
        box[max(0, ly.min() - pad) : ly.max() + pad + 1, max(0, lx.min() - pad) : lx.max() + pad + 1] = True
        ref = mouth & box
        line = np.median(down[ref]) if ref.any() else down[lips].mean()
        u0, hw, c0, c2 = _mouth_curve(across, down, ref, lips) if ref.any() else (0.0, 1.0, 0.0, 0.0)
        if abs(c2) > SMILE_BEND * hw:  # a bent mouth (a smile): the split follows the bend
            line = c0 + c2 * ((across - u0) / hw) ** 2
        labels[lips & (down > line)] = L["l_lip"]
    return labels


def expression_of(labels) -> str:
    """The expression a label map [H, W] shows (one of EXPRESSIONS), by geometry; for faces of
    128 px and more. Mouth first, in the frame of the eye axis: corners above the centre
    by more than SMILE_BEND of the half-width -> "smiling"; a mouth region at the centre more than
    1.7x as thick as the band between closed lips -> "open_mouth". Then eyes thinner than
    CLOSED_EYE_PX on average (pixels per image column), or none at all -> "closed_eyes"."""
    labels = np.asarray(labels)
    eyes = np.isin(labels, (L["l_eye"], L["r_eye"]))
    lips = np.isin(labels, (L["u_lip"], L["l_lip"]))
    if lips.sum() >= 8:
        # the eye axis, not the lips' own: an open mouth can be as tall as it is wide
        centre, axis = _face_frame(np.where(eyes, L["l_eye"], labels))
        yy, xx = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]]
        across = (xx - centre[0]) * axis[0] + (yy - centre[1]) * axis[1]
        down = (xx - centre[0]) * -axis[1] + (yy - centre[1]) * axis[0]
        ys, xs = np.nonzero(lips)
        # the mouth near the lips only, as in parse
        pad = max(3, int(ys.max() - ys.min()))
        box = np.zeros_like(lips)
        box[max(0, ys.min() - pad) : ys.max() + pad + 1, max(0, xs.min() - pad) : xs.max() + pad + 1] = True
        mouth = (labels == L["mouth"]) & box
        if mouth.any():
            u0, hw, c0, c2 = _mouth_curve(across, down, mouth, lips)
            if -c2 > SMILE_BEND * hw:
                return "smiling"
            centre_px = (mouth & (np.abs(across - u0) < 0.35 * hw)).sum()
            band = max(2.0, 0.01 * labels.shape[0])  # as _paint draws it
            if centre_px / (0.7 * hw) > 1.7 * (band + 1):  # + 1: both edges rasterise
                return "open_mouth"
    columns = eyes.any(0).sum()
    if columns == 0 or eyes.sum() / columns < CLOSED_EYE_PX:
        return "closed_eyes"
    return "neutral"


def attributes(image, labels) -> dict:
    """Colour attributes of an image: for each attribute, the majority nearest named colour over
    its class's pixels; None where the class has fewer than ~0.1% of the pixels. Plus "expression",
    read from the label map by `expression_of`."""
    img = _check_image(image)
    labels = np.asarray(labels)
    need = min_pixels(*labels.shape)
    out = {}
    for key, (classes, named) in ATTRIBUTE_SOURCES.items():
        mask = np.isin(labels, classes)
        if mask.sum() < need:
            out[key] = None
            continue
        names = list(named)
        votes = np.bincount(_nearest(img[mask], np.array(list(named.values()))), minlength=len(names))
        out[key] = names[int(votes.argmax())]
    out["expression"] = expression_of(labels)
    return out


# The colours a caption-following score judges (hat colour is rare and left out).
CAPTION_COLOR_KEYS = ("hair_color", "eye_color", "lip_color", "skin_tone", "cloth_color", "background_color")


def caption_color_hits(image, labels, truth: dict, caption: str) -> dict:
    """Which of the caption's colours a generated face shows: {key: read-back colour == truth[key]}
    for each key of CAPTION_COLOR_KEYS that the face has (truth not None); lip colour only where the
    caption names the lips. `labels` is the face's parse."""
    got = attributes(image, labels)
    return {k: got.get(k) == truth[k] for k in CAPTION_COLOR_KEYS
            if truth.get(k) is not None and (k != "lip_color" or " lip" in caption)}


def mean_iou(preds, targets, num_classes: int = NUM_CLASSES) -> float:
    """mIoU over a set of label maps: per-class IoU from the summed confusion, averaged over the
    classes that occur in the targets or the predictions."""
    inter = np.zeros(num_classes, np.int64)
    union = np.zeros(num_classes, np.int64)
    for pred, target in zip(preds, targets):
        pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
        inter += np.bincount(target[pred == target], minlength=num_classes)[:num_classes]
        both = np.bincount(pred, minlength=num_classes) + np.bincount(target, minlength=num_classes)
        union += both[:num_classes]
    union -= inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 1.0
