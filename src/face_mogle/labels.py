"""The 19 CelebAMask-HQ face classes, in label order, and their colour palette."""

from __future__ import annotations

import numpy as np

# Label value == index. Order is CelebAMask-HQ's, which MM-CelebA-HQ masks use.
CLASSES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow",
    "l_ear", "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l",
    "neck", "cloth",
)
NUM_CLASSES = len(CLASSES)  # 19
NUM_MAPS = NUM_CLASSES + 1  # one global map + one local map per class

# The colour palette CelebAMask-HQ uses to paint its label maps (RGB, one row per class).
PALETTE = np.array(
    [
        [0, 0, 0], [204, 0, 0], [76, 153, 0], [204, 204, 0], [51, 51, 255],
        [204, 0, 204], [0, 255, 255], [255, 204, 204], [102, 51, 0], [255, 0, 0],
        [102, 204, 0], [255, 255, 0], [0, 0, 153], [0, 0, 204], [255, 51, 153],
        [0, 204, 204], [0, 51, 0], [255, 153, 51], [0, 204, 0],
    ],
    dtype=np.uint8,
)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label map [H, W] (values 0..18) -> RGB image [H, W, 3] in the palette."""
    return PALETTE[np.asarray(labels, dtype=np.int64)]
