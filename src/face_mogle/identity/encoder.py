"""The identity encoder a run uses: a reference face → parse → aligned crop → embedding [N, D].

`load_identity_encoder(kind, weights, parser=...)` builds it from `model.identity.encoder`
(synthfaces | arcface) and `model.identity.weights`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from face_mogle.identity.align import aligned_crop
from face_mogle.identity.arcface import DEFAULT_ARCFACE, ArcFaceEncoder
from face_mogle.identity.errors import IdentityError
from face_mogle.identity.synthfaces_encoder import DEFAULT_SYNTHFACES, load_synthfaces_encoder
from face_mogle.image_files import MAX_INPUT_PIXELS, ImageFileError, read_rgb

ENCODERS = ("synthfaces", "arcface")
DEFAULT_WEIGHTS = {"synthfaces": DEFAULT_SYNTHFACES, "arcface": DEFAULT_ARCFACE}
# The parser that finds the face: SynthFaces renders are read exactly by their colour parser; real
# photos need the SegFormer face parser (checkpoints/eval/face-parsing).
DEFAULT_PARSER = {"synthfaces": "synthfaces", "arcface": "segformer"}


class IdentityEncoder:
    """`embed(images)` → L2-normalised identity embeddings [N, dim]; `crops(images)` shows what the
    backend sees. An image in which no face is found is an IdentityError naming it."""

    def __init__(self, kind: str, backend: Any, parser: str, weights_dir: str | os.PathLike = "checkpoints/eval",
                 device: Optional[str] = None, max_pixels: int = MAX_INPUT_PIXELS):
        self.kind, self.backend, self.parser_name = kind, backend, parser
        self.weights_dir, self.device, self.max_pixels = weights_dir, device or "cpu", max_pixels
        self._parser = None

    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def crop_size(self) -> int:
        return getattr(self.backend, "crop_size", 112)

    def _parse(self, image: Image.Image) -> np.ndarray:
        if self._parser is None:  # loaded on first use, once
            from face_mogle.eval.errors import EvalError
            from face_mogle.eval.miou import load_parser
            from face_mogle.eval.weights import FACE_PARSER, default_path

            try:
                self._parser = load_parser(self.parser_name, default_path(self.weights_dir, FACE_PARSER), self.device)
            except EvalError as err:
                raise IdentityError(f"the {self.kind} identity encoder needs a face parser to find the face: "
                                    f"{' '.join(str(err).split())}") from None
        return self._parser(self._parser.transform(image)[None], [(image.height, image.width)])[0]

    def read(self, image: Any) -> tuple[Image.Image, str]:
        name = str(image) if isinstance(image, (str, os.PathLike)) else getattr(image, "filename", "") or "<image>"
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise IdentityError(f"a reference face array must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
            return Image.fromarray(image, "RGB"), "<array>"
        try:
            return read_rgb(image, self.max_pixels), name
        except ImageFileError as err:
            raise IdentityError(f"reference face {err}") from None

    def crops(self, images: Sequence[Any], labels: Optional[Sequence[np.ndarray]] = None) -> list[tuple[Image.Image, np.ndarray]]:
        """(aligned crop, its label map) per image; `labels`: the faces' own label maps (else parsed)."""
        out = []
        for k, image in enumerate(images):
            img, name = self.read(image)
            lab = self._parse(img) if labels is None else np.asarray(labels[k], dtype=np.uint8)
            out.append(aligned_crop(img, lab, self.crop_size, name))
        return out

    def embed(self, images: Sequence[Any], labels: Optional[Sequence[np.ndarray]] = None) -> torch.Tensor:
        pairs = self.crops(images, labels)
        crops = [c for c, _ in pairs]
        if self.kind == "arcface":
            return self.backend.encode(crops)
        return self.backend.encode(crops, [lab for _, lab in pairs])


def load_identity_encoder(kind: Optional[str], weights: Optional[str | os.PathLike] = None, parser: Optional[str] = None,
                          weights_dir: str | os.PathLike = "checkpoints/eval", device: Optional[str] = None,
                          providers: Optional[Sequence[str]] = None) -> Optional[IdentityEncoder]:
    """The encoder named by model.identity.encoder (None: no identity, returns None). `weights`:
    model.identity.weights (None: the default place for that kind); `parser`: the face parser
    (None: synthfaces for the SynthFaces encoder, segformer for ArcFace)."""
    if kind is None:
        return None
    if kind not in ENCODERS:
        raise IdentityError(f"identity encoder {kind!r}: choose one of {', '.join(ENCODERS)}")
    path = Path(weights if weights is not None else DEFAULT_WEIGHTS[kind])
    if kind == "arcface":
        backend = ArcFaceEncoder(path, providers)
    else:
        backend = load_synthfaces_encoder(path, device or "cpu")
    return IdentityEncoder(kind, backend, parser or DEFAULT_PARSER[kind], weights_dir, device)
