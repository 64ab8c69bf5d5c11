"""SynthFaces rendering: every random choice of a face, its label map (PIL polygons, no
antialiasing, so labels are exact) and its flat colours.

Sample i of a set is a pure function of (seed, i): its generator is np.random.default_rng([seed, i]).
Expressions (opt-in, `render(..., expressions=True)`) are drawn from a stream of their own, so a face
keeps every other choice it has without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from face_mogle.data.synthfaces.captions import captions_for
from face_mogle.data.synthfaces.palette import (
    ATTRIBUTE_SOURCES, BACKGROUND_COLORS, BROW_COLOR, CLOTH_COLORS, EAR_SHADES, EARRING_COLOR, EYE_COLORS,
    GLASSES_COLOR, HAIR_COLORS, HAT_COLORS, L, LIP_COLORS, MOUTH_COLOR, NECK_SHADES, NECKLACE_COLOR,
    NOSE_SHADES, SKIN_TONES, min_pixels,
)
from face_mogle.labels import CLASSES, NUM_CLASSES


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


def _draw_params(rng: np.random.Generator, gender: Optional[str] = None) -> dict:
    """Every random choice of one face, drawn in a fixed order so the face does not depend on
    the output size. gender: given (an identity's), it replaces the drawn one before the choices
    that depend on it; the stream draws the same numbers either way."""
    u = rng.uniform
    drawn = "female" if rng.random() < 0.5 else "male"
    if gender not in (None, "female", "male"):
        raise ValueError(f"gender must be 'female' or 'male', got {gender!r}")
    gender = gender or drawn
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


def _visible_attributes(p: dict, labels: np.ndarray) -> dict:
    """The sample's attributes as an observer of the final image sees them."""
    counts = np.bincount(labels.ravel(), minlength=NUM_CLASSES)
    need = min_pixels(*labels.shape)
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


def render(seed_or_rng, size: int = 256, expressions: bool = False, changes: Optional[dict] = None,
           identity: Optional[dict] = None) -> Sample:
    """Draw one face. seed_or_rng: an int, a sequence such as (seed, index), or a Generator.
    expressions: give the face an expression (attributes["expression"], named in the captions);
    everything else about the face stays as it is without. changes: drawn parameters to replace
    (e.g. {"expression": "smiling"}, {"hair_color": "red"}, HAIR_PARAMS of another face): the same
    face with that one thing changed, an edit's exact target. identity: a person's parameters (see
    `identity.identity_params`) in place of the drawn ones; their gender is in place before the
    gender-dependent choices are made (a `changes` gender, an edit, leaves those choices as drawn)."""
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(seed_or_rng)
    identity = dict(identity or {})
    p = _draw_params(rng, identity.get("gender"))
    stray = sorted(set(identity) - set(p))
    if stray:
        raise ValueError(f"unknown face parameters in identity: {stray}")
    p.update(identity)
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

