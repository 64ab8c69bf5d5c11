"""SynthFaces: a procedural face data set in the MM-CelebA-HQ layout (DESIGN §6).

Every face is drawn as a label map first and then coloured with one flat colour per class. Colours
the mask does not fix (hair, eyes, lips, skin, cloth, background, hat) vary per sample and are named
in the captions; because every colour is known, `parse` reads a generated image back exactly.

One module per role: `palette` (the colours), `render` (drawing a face), `identity` (which parameters
make a person), `captions`, `parser` (image -> label map, colours, expression) and `writer` (a data set
on disk). Images are saved as
JPEG quality 95 with 4:4:4 chroma (4:2:0 would smear colour edges).
"""

from face_mogle.data.synthfaces.captions import captions_for
from face_mogle.data.synthfaces.palette import (
    ATTRIBUTE_SOURCES, BACKGROUND_COLORS, BROW_COLOR, CLOTH_COLORS, COLOR_KEYS, EAR_SHADES, EARRING_COLOR,
    EYE_COLORS, GLASSES_COLOR, HAIR_COLORS, HAT_COLORS, LIP_COLORS, MIN_CLASS_DISTANCE, MOUTH_COLOR, NECK_SHADES,
    NECKLACE_COLOR, NOSE_SHADES, SKIN_TONES, TABLE_LABEL, TABLE_RGB, L, min_class_distance,
)
from face_mogle.data.synthfaces.identity import IDENTITY_PARAMS, IDENTITY_STREAM, identity_params
from face_mogle.data.synthfaces.parser import (
    CAPTION_COLOR_KEYS, CLOSED_EYE_PX, FAR_DISTANCE, SMILE_BEND, UNSURE_MARGIN, attributes, caption_color_hits,
    expression_of, mean_iou, parse,
)
from face_mogle.data.synthfaces.render import EXPRESSIONS, HAIR_PARAMS, HAIR_STYLES, LID_COLOR, Sample, render
from face_mogle.data.synthfaces.writer import write_dataset

__all__ = [
    "ATTRIBUTE_SOURCES", "BACKGROUND_COLORS", "BROW_COLOR", "CAPTION_COLOR_KEYS", "CLOSED_EYE_PX", "CLOTH_COLORS",
    "COLOR_KEYS", "EAR_SHADES", "EARRING_COLOR", "EXPRESSIONS", "EYE_COLORS", "FAR_DISTANCE", "GLASSES_COLOR",
    "HAIR_COLORS", "HAIR_PARAMS", "HAIR_STYLES", "HAT_COLORS", "IDENTITY_PARAMS", "IDENTITY_STREAM", "L", "LID_COLOR", "LIP_COLORS", "MIN_CLASS_DISTANCE",
    "MOUTH_COLOR", "NECK_SHADES", "NECKLACE_COLOR", "NOSE_SHADES", "SKIN_TONES", "SMILE_BEND", "TABLE_LABEL",
    "TABLE_RGB", "UNSURE_MARGIN", "Sample", "attributes", "caption_color_hits", "captions_for", "expression_of", "identity_params",
    "mean_iou", "min_class_distance", "parse", "render", "write_dataset",
]
