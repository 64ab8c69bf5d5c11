"""Identity conditioning (issue #31): who the face is, as an embedding of a reference face.

One idea per module: `align` (landmarks from a face parse → the ArcFace-template crop), `arcface`
(a local ONNX face-recognition model), `synthfaces_encoder` (a small CNN trained contrastively on
SynthFaces identities), `encoder` (parse → align → encode, and the factory for
model.identity.encoder), `train_encoder` (the training command), `errors`.
"""

from face_mogle.identity.align import (
    ARCFACE_TEMPLATE, FACE_CLASSES, TEMPLATE_SIZE, align_matrix, aligned_crop, landmarks, similarity, template, warp,
)
from face_mogle.identity.arcface import DEFAULT_ARCFACE, ArcFaceEncoder
from face_mogle.identity.encoder import DEFAULT_PARSER, DEFAULT_WEIGHTS, ENCODERS, IdentityEncoder, load_identity_encoder
from face_mogle.identity.errors import IdentityError
from face_mogle.identity.synthfaces_encoder import (
    DEFAULT_SYNTHFACES, EncoderConfig, FaceSet, SynthFacesEncoder, SynthFacesNet, TrainSettings,
    load_synthfaces_encoder, retrieval_top1, save_encoder, supcon_loss, train_encoder,
)

__all__ = [
    "ARCFACE_TEMPLATE", "DEFAULT_ARCFACE", "DEFAULT_PARSER", "DEFAULT_SYNTHFACES", "DEFAULT_WEIGHTS", "ENCODERS",
    "FACE_CLASSES", "TEMPLATE_SIZE", "ArcFaceEncoder", "EncoderConfig", "FaceSet", "IdentityEncoder", "IdentityError",
    "SynthFacesEncoder", "SynthFacesNet", "TrainSettings", "align_matrix", "aligned_crop", "landmarks",
    "load_identity_encoder", "load_synthfaces_encoder", "retrieval_top1", "save_encoder", "similarity",
    "supcon_loss", "template", "train_encoder", "warp",
]
