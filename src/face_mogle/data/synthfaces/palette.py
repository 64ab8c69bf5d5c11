"""SynthFaces colours: one flat colour per class, the table the parser matches against.

Colour rule: every colour of one class is at least MIN_CLASS_DISTANCE (RGB, Euclidean) from every
colour of every other class, so the parser recovers the classes of an image by nearest colour alone.
"""

from __future__ import annotations

import numpy as np

from face_mogle.labels import CLASSES

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



def min_pixels(h: int, w: int) -> int:
    """Fewest pixels for a class to count as present when naming its colour."""
    return max(4, h * w // 1000)
