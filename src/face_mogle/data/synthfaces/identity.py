"""SynthFaces identities: which drawn parameters make a person, and each identity's own draw.

A person keeps the geometry of their face (shape, eyes, brows, nose, mouth, ears), their skin tone and
eye colour, and their gender; everything else (hair style and colour, clothes, background, accessories,
lip colour, expression, tilt, scale, shift, mouth opening) is drawn afresh for every render.

Identity j of a set with seed `seed` is drawn by `_draw_params` itself (so identities follow exactly the
distribution of ordinary faces) from a stream of its own, np.random.default_rng((seed, IDENTITY_STREAM, j)),
which no render's (seed, i) stream can equal. Render k of identity j is the ordinary sample
i = j * per_identity + k with these parameters put in its place (`render(..., identity=...)`).
"""

from __future__ import annotations

import numpy as np

from face_mogle.data.synthfaces.render import _draw_params

IDENTITY_PARAMS = (
    # gender: a person keeps it; render applies it before the gender-dependent draws (hair style,
    # lip colour, earrings, necklace), so those stay as likely for the person as for any face of that gender
    "gender", "skin_tone", "eye_color",
    "a", "b", "chin",  # face shape
    "eye_y", "eye_dx", "ew", "eh",  # eyes
    "brow_gap", "brow_in", "brow_out", "brow_t", "brow_arch",  # brows
    "nose_len", "nose_w",  # nose
    "mouth_y", "mw", "hu", "hl",  # mouth and lips (the opening is expression, not identity)
    "ear_dy", "ear_rx", "ear_ry",  # ears
)
# The identity stream's middle word: a three-word seed, unlike any render's (seed, i).
IDENTITY_STREAM = 31


def identity_params(seed: int, j: int) -> dict:
    """Identity j's parameters ({name: value} for IDENTITY_PARAMS) in a set with this seed."""
    if j < 0:
        raise ValueError(f"identity index must be >= 0, got {j}")
    p = _draw_params(np.random.default_rng((seed, IDENTITY_STREAM, j)))
    return {k: p[k] for k in IDENTITY_PARAMS}
