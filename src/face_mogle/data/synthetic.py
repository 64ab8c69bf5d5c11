"""SynthFaces: a procedural face data set in the MM-CelebA-HQ layout (DESIGN §6).

Every face is drawn as a label map first (PIL polygons, no antialiasing, so labels are exact) and
then coloured with one flat colour per class. Colours the mask does not fix (hair, eyes, lips, skin,
cloth, background, hat) vary per sample and are named in the captions.

Colour rule: every colour of one class is at least MIN_CLASS_DISTANCE (RGB, Euclidean) from every
colour of every other class, so `parse` recovers the classes of an image by nearest colour alone.
Symmetric pairs share a colour and are split by geometry, from the image alone:
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
Images are saved as JPEG quality 95 with 4:4:4 chroma (4:2:0 would smear colour edges).

Sample i of a set is a pure function of (seed, i): its generator is np.random.default_rng([seed, i]).

Expressions (opt-in, `render(..., expressions=True)`): neutral, smiling (corners raised, an open
smile), open mouth, closed eyes (1 px lids in a fixed dark colour, so no eye colour is shown). They
are drawn from a stream of their own, so a face keeps every other choice it has without them, and
`expression_of` reads them back from a label map by geometry.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from face_mogle.data.masks import save_label_map
from face_mogle.labels import CLASSES, NUM_CLASSES
from face_mogle.utils import atomic_write

# ---------------------------------------------------------------------------------------------
# Colours. Chosen by hand, then pushed apart by a small repulsion solver and rounded; the test
# suite checks MIN_CLASS_DISTANCE. Per-tone shades give nose, ears and neck a plausible colour.

SKIN_TONES = {"light": (245, 213, 190), "medium": (208, 156, 116), "dark": (137, 100, 65)}
NOSE_SHADES = {"light": (218, 149, 161), "medium": (178, 105, 110), "dark": (114, 45, 65)}
EAR_SHADES = {"light": (250, 183, 154), "medium": (220, 117, 95), "dark": (158, 59, 69)}
NECK_SHADES = {"light": (200, 190, 149), "medium": (166, 137, 79), "dark": (91, 80, 45)}
HAIR_COLORS = {
    "black": (29, 29, 28), "brown": (134, 69, 30), "blond": (231, 198, 114),
    "red": (182, 76, 32), "gray": (165, 165, 168),
}
EYE_COLORS = {"brown": (97, 48, 11), "blue": (80, 159, 232), "green": (70, 160, 100)}
LIP_COLORS = {"red": (205, 35, 60), "pink": (238, 109, 148), "plum": (138, 35, 104)}
HAT_COLORS = {"yellow": (245, 210, 60), "white": (245, 245, 245), "teal": (0, 140, 140)}
CLOTH_COLORS = {"red": (185, 20, 20), "black": (2, 2, 2), "navy": (25, 38, 128), "green": (30, 110, 50)}
BACKGROUND_COLORS = {
    "blue": (80, 121, 203), "green": (130, 190, 120), "purple": (150, 115, 190),
    "gray": (120, 120, 120), "orange": (240, 160, 80),
}
BROW_COLOR = (70, 39, 48)
MOUTH_COLOR = (94, 4, 27)
GLASSES_COLOR = (49, 48, 89)
EARRING_COLOR = (215, 165, 25)
NECKLACE_COLOR = (195, 200, 215)

MIN_CLASS_DISTANCE = 45.0
# parse: pixels whose nearest colour wins by less than UNSURE_MARGIN (noise), or which are
# farther than FAR_DISTANCE from every colour (blends made by blur), are decided from context.
UNSURE_MARGIN = 15.0
FAR_DISTANCE = 20.0

L = {name: i for i, name in enumerate(CLASSES)}  # class name -> label value

# Each colour attribute: the classes whose pixels vote, and the named colours they can have.
ATTRIBUTE_SOURCES: dict[str, tuple[tuple[int, ...], dict[str, tuple[int, int, int]]]] = {
    "hair_color": ((L["hair"],), HAIR_COLORS),
    "eye_color": ((L["l_eye"], L["r_eye"]), EYE_COLORS),
    "lip_color": ((L["u_lip"], L["l_lip"]), LIP_COLORS),
    "skin_tone": ((L["skin"],), SKIN_TONES),
    "cloth_color": ((L["cloth"],), CLOTH_COLORS),
    "background_color": ((L["background"],), BACKGROUND_COLORS),
    "hat_color": ((L["hat"],), HAT_COLORS),
}
COLOR_KEYS = tuple(ATTRIBUTE_SOURCES)


def _color_table() -> tuple[np.ndarray, np.ndarray]:
    """All colours the generator uses -> (rgb [K, 3], label [K]); pairs use their l_/u_ label."""
    groups = [
        (L["background"], BACKGROUND_COLORS.values()), (L["skin"], SKIN_TONES.values()),
        (L["nose"], NOSE_SHADES.values()), (L["eye_g"], [GLASSES_COLOR]),
        (L["l_eye"], EYE_COLORS.values()), (L["l_brow"], [BROW_COLOR]),
        (L["l_ear"], EAR_SHADES.values()), (L["mouth"], [MOUTH_COLOR]),
        (L["u_lip"], LIP_COLORS.values()), (L["hair"], HAIR_COLORS.values()),
        (L["hat"], HAT_COLORS.values()), (L["ear_r"], [EARRING_COLOR]),
        (L["neck_l"], [NECKLACE_COLOR]), (L["neck"], NECK_SHADES.values()),
        (L["cloth"], CLOTH_COLORS.values()),
    ]
    rgb = [c for _, colours in groups for c in colours]
    label = [lab for lab, colours in groups for _ in colours]
    return np.array(rgb, dtype=np.float32), np.array(label, dtype=np.uint8)


TABLE_RGB, TABLE_LABEL = _color_table()


def min_class_distance() -> float:
    """Smallest RGB distance between colours of two different classes (must be >= 45)."""
    d = np.linalg.norm(TABLE_RGB[:, None] - TABLE_RGB[None], axis=-1)
    other = TABLE_LABEL[:, None] != TABLE_LABEL[None]
    return float(d[other].min())


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclass
class Sample:
    image: np.ndarray  # uint8 [S, S, 3]
    labels: np.ndarray  # uint8 [S, S], values 0..18
    attributes: dict = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # every drawn parameter (see render's `changes`)


HAIR_STYLES = ("short", "long", "wavy", "bob", "buzz", "bald")
EXPRESSIONS = ("neutral", "smiling", "open_mouth", "closed_eyes")
# What makes a hairstyle: give these of another face to `render(changes=...)` to swap hairstyles.
HAIR_PARAMS = ("hair_style", "hair_out_x", "hair_out_y", "hairline", "hair_side", "fringe", "hair_len",
               "hair_flare", "wave_amp", "wave_freq", "wave_phase", "bob_len")
_EXPRESSION_P = (0.4, 0.3, 0.2, 0.1)
LID_COLOR = EYE_COLORS["brown"]  # closed lids: one dark colour for every face, so no eye colour shows
# expression_of: a mouth whose corners rise by more than SMILE_BEND of its half-width smiles (the
# generator bends by 0.35..0.5); eyes thinner than CLOSED_EYE_PX on average are closed (lids: 1 px).
SMILE_BEND = 0.15
CLOSED_EYE_PX = 1.75
_STYLE_P = {"female": (0.2, 0.3, 0.2, 0.25, 0.03, 0.02), "male": (0.45, 0.08, 0.05, 0.02, 0.25, 0.15)}
_LIP_P = {"female": (0.4, 0.35, 0.25), "male": (0.2, 0.7, 0.1)}  # red, pink, plum


def _ellipse(cx, cy, rx, ry, n=40, t0=0.0, t1=2 * math.pi):
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.sin(t), cy - ry * np.cos(t)], axis=1)  # t=0 at the top


def _dome(cx, cy, rx, ry, n=30):
    """Upper half of an ellipse, from its left end over the top to its right end."""
    return _ellipse(cx, cy, rx, ry, n=n, t0=-math.pi / 2, t1=math.pi / 2)


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


class _Painter:
    """Draws shapes given in face coordinates (units of image size, origin at the face centre,
    y down) into the label map, after the head-pose similarity transform."""

    def __init__(self, size: int, centre, scale: float, tilt: float):
        self.size = size
        self.image = Image.new("L", (size, size), L["background"])
        self.draw = ImageDraw.Draw(self.image)
        c, s = math.cos(tilt), math.sin(tilt)
        self.m = np.array([[c, -s], [s, c]]) * scale * size
        self.t = np.asarray(centre, dtype=np.float64) * size

    def px(self, pts) -> list[float]:
        return (np.asarray(pts, dtype=np.float64) @ self.m.T + self.t).ravel().tolist()

    def poly(self, pts, label: int) -> None:
        self.draw.polygon(self.px(pts), fill=label)

    def line(self, pts, label: int, width_px: float) -> None:
        self.draw.line(self.px(pts), fill=label, width=max(1, int(round(width_px))), joint="curve")


def _draw_params(rng: np.random.Generator) -> dict:
    """Every random choice of one face, drawn in a fixed order so the face does not depend on
    the output size."""
    u = rng.uniform
    gender = "female" if rng.random() < 0.5 else "male"
    p = {
        "gender": gender,
        "hair_style": HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=_STYLE_P[gender])],
        "hair_color": str(rng.choice(list(HAIR_COLORS))),
        "eye_color": str(rng.choice(list(EYE_COLORS))),
        "lip_color": str(rng.choice(list(LIP_COLORS), p=_LIP_P[gender])),
        "skin_tone": str(rng.choice(list(SKIN_TONES))),
        "cloth_color": str(rng.choice(list(CLOTH_COLORS))),
        "background_color": str(rng.choice(list(BACKGROUND_COLORS))),
        "hat_color": str(rng.choice(list(HAT_COLORS))),
        "glasses": bool(rng.random() < 0.3),
        "hat": bool(rng.random() < 0.2),
        "earrings": bool(rng.random() < (0.55 if gender == "female" else 0.1)),
        "necklace": bool(rng.random() < (0.4 if gender == "female" else 0.15)),
        "mouth_open": bool(rng.random() < 0.35),
        "hat_style": "beanie" if rng.random() < 0.5 else "brim",
        "tilt_deg": u(-10, 10), "scale": u(0.9, 1.08), "shift": (u(-0.04, 0.04), u(-0.03, 0.04)),
        # face shape
        "a": u(0.18, 0.215), "b": u(0.25, 0.285), "chin": u(0.15, 0.32),
        "eye_y": u(-0.035, -0.01), "eye_dx": u(0.075, 0.09), "ew": u(0.03, 0.04), "eh": u(0.012, 0.019),
        "brow_gap": u(0.045, 0.06), "brow_in": u(0.9, 1.2), "brow_out": u(1.1, 1.4),
        "brow_t": u(0.01, 0.018), "brow_arch": u(0.004, 0.018),
        "nose_len": u(0.06, 0.09), "nose_w": u(0.024, 0.034),
        "mouth_y": u(0.13, 0.16), "mw": u(0.05, 0.07), "hu": u(0.014, 0.022), "hl": u(0.018, 0.03),
        "mouth_o": u(0.008, 0.018),
        "ear_dy": u(0.005, 0.03), "ear_rx": u(0.022, 0.03), "ear_ry": u(0.045, 0.06),
        "neck_w": u(0.07, 0.095), "shoulder_dy": u(0.07, 0.12), "shoulder_w": u(0.33, 0.45),
        "neckline_d": u(0.03, 0.1), "neckline_w": u(0.0, 0.04),
        "earring_r": u(0.009, 0.014), "necklace_dip": u(0.3, 0.7),
        "glass_mx": u(0.012, 0.02), "glass_my": u(0.012, 0.02),
        # hair
        "hair_out_x": u(0.01, 0.03), "hair_out_y": u(0.025, 0.05), "hairline": u(0.5, 0.65),
        "hair_side": u(-0.15, 0.05), "fringe": u(-0.3, 0.3), "hair_len": u(0.45, 0.62),
        "hair_flare": u(0.02, 0.06), "wave_amp": u(0.012, 0.022), "wave_freq": u(25, 40),
        "wave_phase": u(0, 2 * math.pi), "bob_len": u(0.75, 0.95),
        "hat_h": u(0.05, 0.09), "hat_band": u(0.5, 0.62),
    }
    if p["hair_style"] in ("buzz", "bald"):
        p["hat"] = False  # a hat would hide all the hair there is
    return p


def _draw_expression(rng: np.random.Generator, p: dict, forced: Optional[str] = None) -> dict:
    """The expression and the mouth geometry it sets, drawn in a fixed order (every value is drawn
    whichever expression comes out, so `forced` changes only the expression). Overrides the face's
    mouth_open and mouth_o."""
    u = rng.uniform
    expression = EXPRESSIONS[rng.choice(len(EXPRESSIONS), p=_EXPRESSION_P)]
    if forced is not None:
        if forced not in EXPRESSIONS:
            raise ValueError(f"expression must be one of {', '.join(EXPRESSIONS)}, got {forced!r}")
        expression = forced
    open_o, smile_o, bend = u(0.025, 0.035), u(0.008, 0.014), u(0.35, 0.5)
    return {
        "expression": expression,
        "mouth_open": expression == "open_mouth",
        # a smile shows a little mouth (teeth) too; neutral and closed-eyes mouths are closed
        "mouth_o": {"open_mouth": open_o, "smiling": smile_o}.get(expression, 0.0),
        "smile": bend * p["mw"] if expression == "smiling" else 0.0,  # corner rise, face units
    }


def _face_outline(p) -> np.ndarray:
    a, b = p["a"], p["b"]
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x, y = a * np.sin(t), -b * np.cos(t)
    lower = np.clip(-np.cos(t), 0, None)  # 0 on the upper half, 1 at the chin
    return np.stack([x * (1 - p["chin"] * lower**2), y], axis=1)


def _hair_cap(p, out_x, out_y, hairline, side_y, side_in_x=None) -> np.ndarray:
    """Hair over the top of the head: outer arc, then the hairline back across the forehead."""
    a, b = p["a"], p["b"]
    rx, ry = a + out_x, b + out_y
    phi = math.acos(max(-0.99, min(0.99, -side_y / ry)))  # angle from the top where y == side_y
    outer = _ellipse(0.0, 0.0, rx, ry, n=40, t0=-phi, t1=phi)
    xin = a * 0.97 if side_in_x is None else side_in_x
    xs = np.linspace(xin, -xin, 24)
    rel = np.abs(xs) / xin
    y_hl = -hairline * b
    ys = y_hl + (side_y - y_hl) * rel**3 + p["fringe"] * b * np.clip(xs / xin, 0, 1) * (1 - rel) * 1.5
    return np.concatenate([outer, np.stack([xs, ys], axis=1)])


def _hair_back(p, bottom_y, flare, wavy) -> np.ndarray:
    """Hair behind the head and down the sides (long styles)."""
    a, b = p["a"], p["b"]
    top = _dome(0.0, 0.0, a + p["hair_out_x"] + 0.01, b + p["hair_out_y"])
    ys = np.linspace(0.0, bottom_y, 20)
    xs = a + p["hair_out_x"] + 0.01 + flare * (ys / bottom_y) ** 2
    if wavy:
        xs = xs + p["wave_amp"] * np.sin(p["wave_freq"] * ys + p["wave_phase"])
    right = np.stack([xs, ys], axis=1)
    left = np.stack([-xs, ys], axis=1)[::-1]
    return np.concatenate([top, right, left])


def _lip_shapes(p, open_h) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper lip, lower lip and mouth polygons in the mouth frame (origin at the mouth centre)."""
    w, hu, hl = p["mw"], p["hu"], p["hl"]
    x = np.linspace(-w, w, 25)
    f = np.clip(1 - (x / w) ** 2, 0, None)
    g = open_h * f  # the opening closes at the corners
    bow = 1 - 0.3 * np.exp(-((x / (0.22 * w)) ** 2))  # Cupid's bow dip
    upper_outer = -(hu * f**0.6 * bow + g)
    lower_outer = hl * f**0.6 + g
    upper = np.concatenate([np.stack([x, upper_outer], 1), np.stack([x[::-1], -g[::-1]], 1)])
    lower = np.concatenate([np.stack([x, lower_outer], 1), np.stack([x[::-1], g[::-1]], 1)])
    mouth = np.concatenate([np.stack([x, -g], 1), np.stack([x[::-1], g[::-1]], 1)])
    return upper, lower, mouth


def _bend(pts: np.ndarray, rise: float, w: float) -> np.ndarray:
    """pts [N, 2] with y raised by rise * (x / w)**2 (y points down)."""
    return pts - np.stack([np.zeros(len(pts)), rise * (pts[:, 0] / w) ** 2], 1)


def _paint(p: dict, size: int) -> Image.Image:
    """Rasterise the label map. Later shapes cover earlier ones (CelebAMask-HQ merges the same way)."""
    cx, cy = 0.5 + p["shift"][0], 0.42 + p["shift"][1]
    pt = _Painter(size, (cx, cy), p["scale"], math.radians(p["tilt_deg"]))
    unit = p["scale"] * size  # pixels per face unit
    thin = max(2.0, 0.012 * size)  # glasses frames, necklace: at least 2 px
    a, b = p["a"], p["b"]
    style = p["hair_style"]

    if style in ("long", "wavy"):
        pt.poly(_hair_back(p, p["hair_len"], p["hair_flare"], style == "wavy"), L["hair"])
    elif style == "bob":
        pt.poly(_hair_back(p, p["bob_len"] * b, 0.03, False), L["hair"])

    # neck, clothes, necklace
    sy = b + p["shoulder_dy"]  # shoulder line
    nw, nld = p["neck_w"], p["neckline_d"]
    pt.poly([(-nw, 0.4 * b), (nw, 0.4 * b), (nw, sy + nld + 0.05), (-nw, sy + nld + 0.05)], L["neck"])
    sw, nlw = p["shoulder_w"], nw + p["neckline_w"]
    xs = np.linspace(-nlw, nlw, 15)
    neckline = np.stack([xs, sy + nld * (1 - (xs / nlw) ** 2)], axis=1)
    cloth = [(-sw - 0.3, 1.5), (-sw, sy + 0.08), (-sw + 0.06, sy + 0.01), (-nlw - 0.02, sy)]
    cloth += neckline.tolist() + [(nlw + 0.02, sy), (sw - 0.06, sy + 0.01), (sw, sy + 0.08), (sw + 0.3, 1.5)]
    pt.poly(cloth, L["cloth"])
    if p["necklace"]:
        xs = np.linspace(-nw * 0.98, nw * 0.98, 15)
        ys = sy - 0.01 + p["necklace_dip"] * nld * (1 - (xs / nw) ** 2)
        pt.line(np.stack([xs, ys], 1), L["neck_l"], thin)

    # ears and earrings (the face oval, drawn next, hides their inner half)
    ey = p["eye_y"] + p["ear_dy"]
    ex = a + 0.3 * p["ear_rx"]
    for side, label in ((1, L["l_ear"]), (-1, L["r_ear"])):  # l_ = person's left = image right
        pt.poly(_ellipse(side * ex, ey, p["ear_rx"], p["ear_ry"], n=24), label)
        if p["earrings"]:
            r = p["earring_r"]
            lobe_x, lobe_y = side * (ex + 0.2 * p["ear_rx"]), ey + p["ear_ry"] + 0.6 * r
            pt.poly(_ellipse(lobe_x, lobe_y, r, r, n=16), L["ear_r"])

    pt.poly(_face_outline(p), L["skin"])

    # nose
    nt, nb, nwid = p["eye_y"], p["eye_y"] + p["nose_len"], p["nose_w"]
    nose = [(-0.01, nt), (0.01, nt), (nwid * 0.8, nb - 0.015), (nwid, nb), (0.0, nb + 0.012),
            (-nwid, nb), (-nwid * 0.8, nb - 0.015)]
    pt.poly(nose, L["nose"])

    # brows
    by = p["eye_y"] - p["brow_gap"]
    x0, x1 = p["eye_dx"] - p["ew"] * p["brow_in"], p["eye_dx"] + p["ew"] * p["brow_out"]
    xs = np.linspace(x0, x1, 12)
    arch = p["brow_arch"] * np.sin(np.pi * (xs - x0) / (x1 - x0))
    taper = np.linspace(1.0, 0.5, 12) * p["brow_t"]
    top, bottom = by - arch - taper / 2, by - arch + taper / 2
    for side, label in ((1, L["l_brow"]), (-1, L["r_brow"])):
        pts = np.concatenate([np.stack([side * xs, top], 1), np.stack([side * xs[::-1], bottom[::-1]], 1)])
        pt.poly(pts, label)

    # glasses: two rims, a bridge and the temples; the eyes are drawn over them, as in CelebAMask-HQ
    if p["glasses"]:
        rx, ry = p["ew"] + p["glass_mx"] + thin / unit, p["eh"] + p["glass_my"] + thin / unit
        for side in (1, -1):
            rim = _ellipse(side * p["eye_dx"], p["eye_y"], rx, ry, n=32)
            pt.line(np.concatenate([rim, rim[:1]]), L["eye_g"], thin)
            temple = [(side * (p["eye_dx"] + rx), p["eye_y"] - 0.3 * ry), (side * a * 0.99, p["eye_y"] - 0.01)]
            pt.line(temple, L["eye_g"], thin)
        bridge_y = p["eye_y"] - 0.2 * ry
        pt.line([(-(p["eye_dx"] - rx), bridge_y), (p["eye_dx"] - rx, bridge_y)], L["eye_g"], thin)

    # eyes: almond shapes; closed ones a 1 px lid sagging a little (flat enough for one pixel per
    # column even at full tilt, which is what expression_of measures)
    t = np.linspace(-1, 1, 13)
    for side, label in ((1, L["l_eye"]), (-1, L["r_eye"])):
        ex_, ew, eh = side * p["eye_dx"], p["ew"], p["eh"]
        if p.get("expression") == "closed_eyes":
            pt.line(np.stack([ex_ + ew * t, p["eye_y"] + 0.4 * eh * (1 - t**2)], 1), label, 1)
            continue
        upper = np.stack([ex_ + ew * t, p["eye_y"] - eh * (1 - t**2)], 1)
        lower = np.stack([ex_ - ew * t, p["eye_y"] + 0.7 * eh * (1 - t**2)], 1)
        pt.poly(np.concatenate([upper, lower]), label)

    # lips and mouth; the mouth band keeps the two lips apart (see module docstring)
    my = p["mouth_y"]
    band = max(2.0, 0.01 * size) / unit / 2
    smile = p.get("smile", 0.0)
    open_h = p["mouth_o"] if p["mouth_open"] or smile else 0.0
    upper, lower, mouth = _lip_shapes(p, open_h)
    w = p["mw"] + 0.6 / unit
    bar = np.array([(-w, -band), (w, -band), (w, band), (-w, band)])
    if smile:
        # bend every mouth part by one parabola, the corners rising by `smile` (the band gets
        # points along its length so that it can bend)
        xs = np.linspace(-w, w, 25)
        bar = np.concatenate([np.stack([xs, np.full(25, -band)], 1), np.stack([xs[::-1], np.full(25, band)], 1)])
        upper, lower, mouth, bar = (_bend(s, smile, p["mw"]) for s in (upper, lower, mouth, bar))
    shift = np.array([0.0, my])
    pt.poly(upper + shift, L["u_lip"])
    pt.poly(lower + shift, L["l_lip"])
    pt.poly(bar + shift, L["mouth"])
    if open_h > 0:
        pt.poly(mouth + shift, L["mouth"])

    # hair in front, then the hat
    if style in ("short", "long", "wavy"):
        pt.poly(_hair_cap(p, p["hair_out_x"], p["hair_out_y"], p["hairline"], p["hair_side"] * b), L["hair"])
    elif style == "bob":
        # side locks reach below the ears and hide them
        low = ey + p["ear_ry"] + 0.02
        cap = _hair_cap(p, p["hair_out_x"] + 0.04, p["hair_out_y"], p["hairline"], low, side_in_x=a * 0.9)
        pt.poly(cap, L["hair"])
    elif style == "buzz":
        pt.poly(_hair_cap(p, 0.008, 0.015, 0.72, -0.3 * b), L["hair"])

    if p["hat"]:
        band_y = -p["hat_band"] * b
        crown_h = b - p["hat_band"] * b + p["hair_out_y"] + p["hat_h"]  # reaches above the hair
        if p["hat_style"] == "beanie":
            pt.poly(_dome(0.0, band_y, a + 0.035, crown_h), L["hat"])
            pt.poly(_rect(-a - 0.045, band_y - 0.04, a + 0.045, band_y + 0.02), L["hat"])
        else:
            pt.poly(_dome(0.0, band_y, a * 0.85, crown_h + 0.03), L["hat"])
            pt.poly(_ellipse(0.0, band_y, a + 0.12, 0.03, n=30), L["hat"])
    return pt.image


def _min_pixels(h: int, w: int) -> int:
    """Fewest pixels for a class to count as present when naming its colour."""
    return max(4, h * w // 1000)


def _visible_attributes(p: dict, labels: np.ndarray) -> dict:
    """The sample's attributes as an observer of the final image sees them."""
    counts = np.bincount(labels.ravel(), minlength=NUM_CLASSES)
    need = _min_pixels(*labels.shape)
    attrs = {}
    for key, (classes, _) in ATTRIBUTE_SOURCES.items():
        attrs[key] = p[key] if counts[list(classes)].sum() >= need else None
    if p["hair_style"] == "bald" or attrs["hair_color"] is None:
        attrs["hair_color"] = None
    attrs.update(
        gender=p["gender"],
        hair_style=p["hair_style"],
        glasses=bool(counts[L["eye_g"]] > 0),
        hat=bool(counts[L["hat"]] > 0),
        earrings=bool(counts[L["ear_r"]] > 0),
        necklace=bool(counts[L["neck_l"]] > 0),
        mouth_open=p["mouth_open"],
        tilt_deg=round(float(p["tilt_deg"]), 2),
    )
    if "expression" in p:  # only with expressions: the attributes of other faces stay as they were
        attrs["expression"] = p["expression"]
        if p["expression"] == "closed_eyes":
            attrs["eye_color"] = None  # the lids show no eye colour
    return attrs


def _colorize(label_image: Image.Image, p: dict) -> np.ndarray:
    """Label image (mode L) -> RGB uint8 [S, S, 3], one flat colour per class."""
    tone = p["skin_tone"]
    eye = LID_COLOR if p.get("expression") == "closed_eyes" else EYE_COLORS[p["eye_color"]]
    colours = {
        "background": BACKGROUND_COLORS[p["background_color"]], "skin": SKIN_TONES[tone],
        "nose": NOSE_SHADES[tone], "eye_g": GLASSES_COLOR, "l_eye": eye,
        "r_eye": eye, "l_brow": BROW_COLOR, "r_brow": BROW_COLOR,
        "l_ear": EAR_SHADES[tone], "r_ear": EAR_SHADES[tone], "mouth": MOUTH_COLOR,
        "u_lip": LIP_COLORS[p["lip_color"]], "l_lip": LIP_COLORS[p["lip_color"]],
        "hair": HAIR_COLORS[p["hair_color"]], "hat": HAT_COLORS[p["hat_color"]],
        "ear_r": EARRING_COLOR, "neck_l": NECKLACE_COLOR, "neck": NECK_SHADES[tone],
        "cloth": CLOTH_COLORS[p["cloth_color"]],
    }
    palette = [v for name in CLASSES for v in colours[name]]
    indexed = label_image.copy()
    indexed.putpalette(palette)  # PIL's palette lookup is ~3x faster than numpy indexing
    return np.array(indexed.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Captions

_STYLE_WORDS = {"short": "short", "long": "long", "wavy": "long wavy", "bob": "bob-cut", "buzz": "buzz-cut"}


def captions_for(attrs: dict, rng: np.random.Generator) -> list[str]:
    """Five captions in different phrasings; each names the hair colour (or says bald), and the
    expression where attrs has one that is not neutral. The first is the most complete one (the
    test split uses each image's first caption)."""
    female = attrs["gender"] == "female"
    noun, subj = ("woman", "She") if female else ("man", "He")
    hair, style = attrs["hair_color"], _STYLE_WORDS.get(attrs["hair_style"], "")
    eyes, lips, skin = attrs["eye_color"], attrs["lip_color"], attrs["skin_tone"]
    cloth, bg = attrs["cloth_color"], attrs["background_color"]
    extras = []
    if attrs["glasses"]:
        extras.append("glasses")
    if attrs["hat"] and attrs["hat_color"]:
        extras.append(f"a {attrs['hat_color']} hat")
    if attrs["earrings"]:
        extras.append("earrings")
    if attrs["necklace"]:
        extras.append("a necklace")

    def join(items):
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    wearing = join([f"a {cloth} shirt"] + extras)
    if hair is None:
        with_hair = short_hair = "a bald head"
        has_hair = "is bald"
    else:
        with_hair = f"{hair} {style} hair"
        has_hair, short_hair = f"has {hair} {style} hair", f"{hair} hair"
    hair_clause = "is bald" if hair is None else f"with {short_hair}"
    # Eyes or lips can be too small to be visible at low resolution: such attributes are not named.
    eyes_p = f"{eyes} eyes" if eyes else None
    lips_p = f"{lips} lips" if lips else None
    if lips is None:
        lip_phrase = f"has {skin} skin"
    else:
        lip_phrase = f"is wearing {lips} lipstick" if female and lips != "pink" else f"has {lips} lips"
    # A smile goes before the noun; an open mouth or closed eyes is one more "with" feature.
    expression = attrs.get("expression", "neutral")
    smiling = "smiling " if expression == "smiling" else ""
    feature = {"open_mouth": "an open mouth", "closed_eyes": "closed eyes"}.get(expression)
    trail = f"with {feature}" if feature else smiling.strip()  # after a sentence
    face = [p for p in (eyes_p, lips_p, feature) if p]
    look = [p for p in (eyes_p, feature) if p]

    first = (f"A {smiling}{noun} with {join([with_hair, *face, f'{skin} skin'])}, "
             f"wearing {wearing}, on a {bg} background.")
    others = [
        f"{subj} {has_hair} and {lip_phrase}{', ' + trail if trail else ''}.",
        f"A {smiling}{noun} with {join([short_hair, *look, wearing])}.",
        f"Portrait of a {smiling}person with {join([with_hair, *([feature] if feature else []), f'{skin} skin'])} "
        f"on a {bg} background.",
        f"This {smiling}{noun} has {join([f'{skin} skin', *look])}, {hair_clause}, and wears {wearing}.",
        ", ".join([short_hair.removeprefix("a "), *([smiling.strip()] if smiling else []), *face, f"{skin} skin",
                   f"{cloth} shirt", f"{bg} background", *extras]),
    ]
    order = rng.permutation(len(others))
    return [first] + [others[i][0].upper() + others[i][1:] for i in order]


# ---------------------------------------------------------------------------------------------
# Public API


def render(seed_or_rng, size: int = 256, expressions: bool = False, changes: Optional[dict] = None) -> Sample:
    """Draw one face. seed_or_rng: an int, a sequence such as (seed, index), or a Generator.
    expressions: give the face an expression (attributes["expression"], named in the captions);
    everything else about the face stays as it is without. changes: drawn parameters to replace
    (e.g. {"expression": "smiling"}, {"hair_color": "red"}, HAIR_PARAMS of another face): the same
    face with that one thing changed, an edit's exact target."""
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(seed_or_rng)
    p = _draw_params(rng)
    changes = dict(changes or {})
    forced = changes.pop("expression", None)
    if forced is not None and not expressions:
        raise ValueError("changes['expression'] needs expressions=True")
    unknown = sorted(set(changes) - set(p))
    if unknown:
        raise ValueError(f"unknown face parameters {unknown}")
    p.update(changes)
    if expressions:
        # Its own stream: a copy of the main one jumped far ahead (the main one is left as it is,
        # so the captions draw the same numbers as without expressions).
        p.update(_draw_expression(np.random.Generator(rng.bit_generator.jumped()), p, forced))
    label_image = _paint(p, size)
    labels = np.array(label_image, dtype=np.uint8)
    attrs = _visible_attributes(p, labels)
    image = _colorize(label_image, p)
    return Sample(image=image, labels=labels, attributes=attrs, captions=captions_for(attrs, rng), params=p)


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
    need = _min_pixels(*labels.shape)
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


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    # 4:4:4 chroma: the default 4:2:0 subsampling smears colour edges and costs thin parts their labels.
    def write(tmp):
        Image.fromarray(image, "RGB").save(tmp, format="JPEG", quality=95, subsampling=0)

    atomic_write(path, write)


def _save_text(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_dataset(
    out, num: int, size: int = 256, seed: int = 0, test_fraction: float = 0.1, progress: bool = True,
    expressions: bool = False,
) -> Path:
    """Write `num` samples in the MM-CelebA-HQ layout under `out` (see DESIGN §2):
    face/{i}.jpg, mask/{i}.png, text/{i}.txt, text.json, attributes.json, splits/{train,test}.txt.
    The last round(num * test_fraction) ids are the test split. Every file is written atomically.
    expressions: faces with expressions (see `render`), named in captions and attributes.json."""
    from tqdm import tqdm

    if num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out = Path(out)
    for sub in ("face", "mask", "text", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    texts, attrs = {}, {}
    for i in tqdm(range(num), desc="SynthFaces", unit="img", disable=not progress):
        s = render((seed, i), size, expressions)
        _save_jpeg(s.image, out / "face" / f"{i}.jpg")
        save_label_map(s.labels, out / "mask" / f"{i}.png")
        _save_text("\n".join(s.captions) + "\n", out / "text" / f"{i}.txt")
        texts[f"{i}.jpg"] = s.captions
        attrs[str(i)] = s.attributes

    _save_text(json.dumps(texts, indent=1) + "\n", out / "text.json")
    _save_text(json.dumps(attrs, indent=1) + "\n", out / "attributes.json")
    n_test = int(round(num * test_fraction))
    ids = [str(i) for i in range(num)]
    _save_text("".join(f"{i}\n" for i in ids[: num - n_test]), out / "splits" / "train.txt")
    _save_text("".join(f"{i}\n" for i in ids[num - n_test :]), out / "splits" / "test.txt")
    return out
