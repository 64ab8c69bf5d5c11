"""A local ONNX face-recognition model (ArcFace family) run with onnxruntime.

Models such as insightface's antelopev2 `glintr100.onnx` or buffalo_l `w600k_r50.onnx` take aligned
112 x 112 RGB crops normalised as (x - 127.5) / 127.5 and give a 512-d embedding. Nothing is
downloaded: the file must be on disk (see DEFAULT_ARCFACE and README "Identity encoders").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from face_mogle.identity.align import TEMPLATE_SIZE
from face_mogle.identity.errors import IdentityError

DEFAULT_ARCFACE = "checkpoints/identity/glintr100.onnx"
WHERE_TO_GET = ("put an ArcFace ONNX model there: glintr100.onnx from insightface's antelopev2 pack or "
                "w600k_r50.onnx from its buffalo_l pack (unzip the pack, copy that one file)")


def _dims(shape) -> str:
    return "x".join(str(d) if isinstance(d, int) else "N" for d in shape)


def _fixed(d) -> bool:
    return isinstance(d, int) and d > 0


class ArcFaceEncoder:
    """`encode(crops)` → L2-normalised embeddings [N, dim] of aligned 112 x 112 RGB crops."""

    def __init__(self, onnx_path: str | os.PathLike = DEFAULT_ARCFACE, providers: Optional[Sequence[str]] = None):
        path = Path(onnx_path)
        if not path.is_file():
            raise IdentityError(f"{path}: ArcFace model not found; {WHERE_TO_GET}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise IdentityError(f"{path}: the arcface encoder needs onnxruntime: pip install onnxruntime") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as err:  # onnxruntime raises its own types for a file that is not a model
            detail = " ".join(str(err).split())[:160]
            raise IdentityError(f"{path}: not a loadable ONNX model ({detail}); expected a face-recognition "
                                f"model with input Nx3x{TEMPLATE_SIZE}x{TEMPLATE_SIZE} and output NxD") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape_in = list(inputs[0].shape) if len(inputs) == 1 else []
        shape_out = list(outputs[0].shape) if outputs else []
        # the batch axis may be symbolic or 1; channels and size are the crop's. A symbolic size is
        # taken to accept 112.
        ok_in = (len(inputs) == 1 and len(shape_in) == 4 and shape_in[1] == 3
                 and all(not _fixed(d) or d == TEMPLATE_SIZE for d in shape_in[2:]))
        ok_out = len(shape_out) == 2 and (not _fixed(shape_out[1]) or shape_out[1] > 0)
        if not (ok_in and ok_out):
            found_in = ", ".join(_dims(i.shape) for i in inputs) or "none"
            found_out = ", ".join(_dims(o.shape) for o in outputs) or "none"
            raise IdentityError(f"{path}: not a face-recognition model of the ArcFace layout: input {found_in}, "
                                f"output {found_out}; expected input Nx3x{TEMPLATE_SIZE}x{TEMPLATE_SIZE}, output NxD")
        self.path = path
        self.input_name = inputs[0].name
        self.batch_one = shape_in[0] == 1  # a model exported with batch 1 runs crop by crop
        self.dim = shape_out[1] if _fixed(shape_out[1]) else self._run(np.zeros((1, 3, TEMPLATE_SIZE, TEMPLATE_SIZE), np.float32)).shape[1]

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            if self.batch_one:
                return np.concatenate([self.session.run(None, {self.input_name: x[i : i + 1]})[0] for i in range(len(x))])
            return self.session.run(None, {self.input_name: x})[0]
        except Exception as err:
            raise IdentityError(f"{getattr(self, 'path', '<model>')}: the ONNX model failed on a "
                                f"{_dims(x.shape)} batch ({' '.join(str(err).split())[:160]})") from None

    @staticmethod
    def preprocess(crops: Sequence[Image.Image]) -> np.ndarray:
        """Aligned crops (PIL, any size: resized to 112) → float32 [N, 3, 112, 112] in [-1, 1]."""
        arrays = []
        for c in crops:
            c = c.convert("RGB")
            if c.size != (TEMPLATE_SIZE, TEMPLATE_SIZE):
                c = c.resize((TEMPLATE_SIZE, TEMPLATE_SIZE), Image.BILINEAR)
            arrays.append(np.asarray(c, dtype=np.float32))
        x = (np.stack(arrays) - 127.5) / 127.5
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def encode(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        if not crops:
            return torch.zeros(0, self.dim)
        out = self._run(self.preprocess(crops)).astype(np.float32)
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise IdentityError(f"{self.path}: the ONNX model gave embeddings of shape {list(out.shape)}, "
                                f"expected [{len(crops)}, {self.dim}]")
        emb = torch.from_numpy(out)
        return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
