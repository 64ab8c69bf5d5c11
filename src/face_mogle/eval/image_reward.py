"""ImageReward (Xu et al.): a BLIP-based human-preference score of each image for its caption.

Optional: it needs the `image-reward` package (import name `ImageReward`) and, in one local folder,
ImageReward.pt, med_config.json and the bert-base-uncased tokenizer (the package would otherwise
fetch all three from the hub). When any is missing the metric is reported as skipped with one line
saying how to enable it; the other metrics still run.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path

import torch

from face_mogle.eval.errors import EvalError, one_line
from face_mogle.eval.images import batches
from face_mogle.eval.weights import IMAGE_REWARD, file_identity, quiet_transformers

WEIGHTS_FILE = "ImageReward.pt"
MED_CONFIG = "med_config.json"
BERT_FOLDER = "bert-base-uncased"
MAX_TEXT_TOKENS = 35  # what ImageReward.score() uses


def unavailable_reason(model_dir: Path) -> str | None:
    """None when ImageReward can run, else a one-line 'skipped' message saying how to enable it."""
    if importlib.util.find_spec("ImageReward") is None:
        problem = "the image-reward package is not installed"
    elif not (model_dir / WEIGHTS_FILE).is_file():
        problem = f"{model_dir / WEIGHTS_FILE} is missing"
    elif not (model_dir / MED_CONFIG).is_file():
        problem = f"{model_dir / MED_CONFIG} is missing"
    elif not (model_dir / BERT_FOLDER).is_dir():
        problem = f"{model_dir / BERT_FOLDER}/ is missing"
    else:
        return None
    return (f"ImageReward skipped: {problem}; to enable it, pip install image-reward and place "
            f"{IMAGE_REWARD.source} in {model_dir}")


@contextmanager
def _local_bert_tokenizer(folder: Path):
    """ImageReward's BLIP asks BertTokenizer for 'bert-base-uncased' by hub name; serve it locally."""
    from transformers import BertTokenizer

    had_own = "from_pretrained" in BertTokenizer.__dict__
    own = BertTokenizer.__dict__.get("from_pretrained")
    inherited = BertTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        if str(name) == BERT_FOLDER:
            name, kwargs["local_files_only"] = str(folder), True
        return inherited(cls, name, *args, **kwargs)

    BertTokenizer.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        if had_own:
            BertTokenizer.from_pretrained = own
        else:
            del BertTokenizer.from_pretrained


def load_reward_model(model_dir: Path, device: str):
    quiet_transformers()
    try:
        from ImageReward.ImageReward import ImageReward as RewardModel

        with _local_bert_tokenizer(model_dir / BERT_FOLDER):
            model = RewardModel(med_config=str(model_dir / MED_CONFIG), device=device)
        state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=False)  # as ImageReward.load does
    except Exception as e:
        raise EvalError(f"could not load {IMAGE_REWARD.title} from {model_dir}: {one_line(e)}") from None
    return model.to(device).eval()


@torch.no_grad()
def rewards(model, pixels: torch.Tensor, prompts: list[str], device: str) -> torch.Tensor:
    """ImageReward.score() for a batch: BLIP image embeddings cross-attended by the caption, the
    CLS feature through the reward MLP, standardised with the model's mean/std. -> [B]"""
    blip = model.blip
    text = blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS,
                          return_tensors="pt").to(device)
    image_embeds = blip.visual_encoder(pixels.to(device))
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    out = blip.text_encoder(text.input_ids, attention_mask=text.attention_mask,
                            encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                            return_dict=True)
    r = model.mlp(out.last_hidden_state[:, 0, :].float())
    return ((r - model.mean) / model.std).reshape(-1).cpu()


def run(fake: list[Path], captions: list[str], model_dir: Path, device: str, batch_size: int,
        size: int | None, num_workers: int) -> dict:
    reason = unavailable_reason(model_dir)
    if reason:
        return {"skipped": reason}
    model = load_reward_model(model_dir, device)
    scores, start = [], 0
    for (pixels,) in batches([(p,) for p in fake], size, model.preprocess, batch_size, num_workers,
                             desc="ImageReward"):
        scores.append(rewards(model, pixels, captions[start:start + len(pixels)], device))
        start += len(pixels)
    s = torch.cat(scores).double()
    return {"value": float(s.mean()), "count": len(s),
            "model": {"path": str(model_dir.resolve()), "weights": file_identity(model_dir / WEIGHTS_FILE)}}
