"""Mask consistency as segmentation scores: parse each generated face back into a label map and
compare it with the mask it was generated from.

- parser "segformer": a SegformerForSemanticSegmentation face parser trained on CelebAMask-HQ (its
  19 classes in the same label order as our masks), from a local folder;
- parser "synthfaces": SynthFaces' exact colour parser (face_mogle.data.synthfaces.parse), for models
  trained on that procedural data, where a perfect generator scores 100.

Scores come from one 19 x 19 confusion matrix accumulated over all pixels of all images:
IoU_c = TP / (TP + FP + FN); mIoU = mean over the classes present in either map; pixel accuracy =
trace / total. Both in percent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from face_mogle.eval.errors import EvalError, one_line
from face_mogle.eval.images import batches
from face_mogle.eval.weights import FACE_PARSER, folder_identity, load_pretrained, require_hf_folder
from face_mogle.labels import CLASSES, NUM_CLASSES

PARSERS = ("segformer", "synthfaces")


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """[num_classes, num_classes] int64 counts; rows = true label, columns = predicted label."""
    truth = np.asarray(truth, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    if truth.shape != pred.shape:
        raise ValueError(f"label maps differ in size: {truth.shape} vs {pred.shape}")
    return np.bincount(truth * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray) -> dict:
    """mIoU and pixel accuracy (percent) and per-class IoU (None for classes in neither map)."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.where(present, union, 1), np.nan)
    return {
        "value": float(np.nanmean(iou) * 100) if present.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1) * 100),
        "per_class_iou": {name: (None if np.isnan(v) else float(v * 100)) for name, v in zip(CLASSES, iou)},
        "classes_present": int(present.sum()),
    }


def label_lookup(names: list, model_dir: Path) -> np.ndarray:
    """Map the parser's class indices to ours by class name ("skin" or "skin.png").

    Parsers trained on CelebAMask-HQ do not all keep its label order (an early revision of
    jonathandinu/face-parsing listed skin, nose, r_eye, ...), so the names decide, not the indices.
    """
    clean = [str(n).lower().strip().removesuffix(".png") for n in names]
    if sorted(clean) != sorted(CLASSES):
        raise EvalError(f"{FACE_PARSER.title} at {model_dir}: its labels {clean} are not the 19 CelebAMask-HQ "
                        f"classes {list(CLASSES)}")
    if clean != list(CLASSES):
        print(f"note: {model_dir} orders its classes differently; predictions are mapped by class name",
              file=sys.stderr)
    return np.array([CLASSES.index(n) for n in clean], dtype=np.uint8)


class SegformerParser:
    """SegFormer face parser: logits upsampled (bilinear) to the mask's size, then argmax."""

    def __init__(self, model_dir: Path, device: str):
        from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

        require_hf_folder(FACE_PARSER, model_dir)
        self.device = device
        self.model = load_pretrained(SegformerForSemanticSegmentation, FACE_PARSER, model_dir).to(device).eval()
        n = int(self.model.config.num_labels)
        if n != NUM_CLASSES:
            raise EvalError(f"{FACE_PARSER.title} at {model_dir} predicts {n} classes, expected the "
                            f"{NUM_CLASSES} CelebAMask-HQ classes")
        self.to_ours = label_lookup([self.model.config.id2label.get(i, "") for i in range(n)], model_dir)
        proc = load_pretrained(SegformerImageProcessor, FACE_PARSER, model_dir)
        size = proc.size
        self.hw = (int(size["height"]), int(size["width"]))
        self.mean, self.std = list(proc.image_mean), list(proc.image_std)
        self.identity = folder_identity(model_dir)

    def transform(self, img: Image.Image) -> torch.Tensor:
        if img.size != (self.hw[1], self.hw[0]):
            img = img.resize((self.hw[1], self.hw[0]), Image.BILINEAR)  # SegformerImageProcessor's resample
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
        logits = self.model(pixel_values=pixels.to(self.device)).logits
        out = []
        for lg, hw in zip(logits, shapes):
            up = F.interpolate(lg[None].float(), size=hw, mode="bilinear", align_corners=False)
            out.append(self.to_ours[up[0].argmax(0).cpu().numpy()])
        return out


class SynthFacesParser:
    """SynthFaces' exact colour parser. Images are resized with nearest neighbour only, so the
    colours it reads stay exact."""

    identity = {"parser": "face_mogle.data.synthetic.parse"}  # unchanged since the move: keeps cached scores valid

    def __init__(self):
        try:
            from face_mogle.data.synthfaces import parse
        except ImportError as e:
            raise EvalError(f"--parser synthfaces needs face_mogle.data.synthfaces.parse: {one_line(e)}") from None
        self.parse = parse

    @staticmethod
    def transform(img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)

    def __call__(self, pixels: torch.Tensor, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
        out = []
        for px, hw in zip(pixels, shapes):
            labels = np.asarray(self.parse(px.permute(1, 2, 0).numpy()), dtype=np.uint8)
            if labels.shape != hw:
                labels = np.asarray(Image.fromarray(labels, "L").resize((hw[1], hw[0]), Image.NEAREST))
            out.append(labels)
        return out


def load_parser(parser: str, model_dir: Path, device: str):
    if parser == "segformer":
        return SegformerParser(model_dir, device)
    if parser == "synthfaces":
        return SynthFacesParser()
    raise EvalError(f"--parser {parser}: choose one of {', '.join(PARSERS)}")


def load_masks(paths: list[Path], size: int | None) -> list[np.ndarray]:
    from face_mogle.data.masks import MaskError, load_label_map

    try:
        return [load_label_map(p, size=size) for p in paths]  # nearest-neighbour resize only
    except MaskError as e:
        raise EvalError(f"--masks: {one_line(e)}") from None


def run(fake: list[Path], masks: list[Path], parser: str, model_dir: Path, device: str, batch_size: int,
        size: int | None, num_workers: int) -> dict:
    parse = load_parser(parser, model_dir, device)
    resample = Image.NEAREST if parser == "synthfaces" else Image.BICUBIC
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    start = 0
    for (pixels,) in batches([(p,) for p in fake], size, parse.transform, batch_size, num_workers,
                             desc=f"mIoU ({parser})", resample=resample):
        truth = load_masks(masks[start:start + len(pixels)], size)
        start += len(pixels)
        for t, p in zip(truth, parse(pixels, [t.shape for t in truth])):
            cm += confusion_matrix(t, p)
    result = scores_from_confusion(cm)
    result.update({"count": len(fake), "parser": parser, "model": parse.identity,
                   "confusion_matrix": cm.tolist()})
    return result
