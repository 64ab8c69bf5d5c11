"""Stage 1b of the tiny demo recipe: pre-train the tiny text encoders on SynthFaces captions.

    python -m face_mogle.training.text_encoders --data data/synthfaces-128 \\
        --backbone checkpoints/tiny-stages/backbone-vae --out checkpoints/tiny-stages/backbone-text

FLUX gives every text token the same position id, so the DiT reads a caption as a bag of T5
vectors: which part a colour word describes ("blue eyes" or "blue background") must already be in
the word's vector. A pretrained T5 gives that; a random tiny T5 does not (cosine ≈ 1 between the two
"blue"s), and the DiT then cannot learn text. So the recipe pre-trains its text encoders, as FLUX's
were, and freezes them:

- T5 (relative-position attention, so it can see the next word): every token is tagged with the
  attribute and colour it speaks of — a colour word and the noun it describes ("blue", "eyes") get
  `eye_color:blue`, every other word `none`. A tagged token's vector is pulled (cosine) towards a
  fixed random prototype of its tag, so "blue eyes" and "blue background" become different vectors,
  not just linearly separable ones (the diagnosis that made the tiny DiT learn colours used one fixed
  vector per attribute and colour); every untagged word must still say which word it is (a word
  head), so nothing else the caption says ("glasses", "bald", "woman") is lost. A fifth of the
  captions are short lists of "colour noun" phrases, as users type them.
- CLIP's pooled vector (the DiT's global conditioning through adaLN) must name every colour the
  caption gives, per attribute (or "not named"). With word-level CLIP tokens a caption fits the
  77-token window whole (byte-level tokens cut a quarter of the captions before the background).

Both encoders read captions exactly as FluxPipeline feeds them (padded to the window, no attention
mask). They start from fresh encoders and tokenizers of the tiny spec (word-level T5 and CLIP
tokens), whatever the input backbone holds; the backbone is written with them, ready for the base
DiT stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.dataset import DataError, read_captions, read_split
from ..data.synthfaces import ATTRIBUTE_SOURCES
from ..models.builder import TINY_DEMO_SPEC, BackboneError, TinySpec, build_tiny_backbone, load_backbone

# The noun each colour attribute is named by in a caption; a colour word describes the first of
# these nouns that follows it ("black long wavy hair", "blue background", "red lipstick").
NOUNS = {"hair": "hair_color", "eyes": "eye_color", "lips": "lip_color", "lipstick": "lip_color",
         "skin": "skin_tone", "shirt": "cloth_color", "background": "background_color", "hat": "hat_color"}
COLORS = {key: list(named) for key, (_, named) in ATTRIBUTE_SOURCES.items()}
ATTRIBUTE_NOUN = {key: noun for noun, key in reversed(list(NOUNS.items()))}  # one noun per attribute
TAGS = ["none"] + [f"{key}:{color}" for key, colors in COLORS.items() for color in colors]
COLOR_WORDS = {color for colors in COLORS.values() for color in colors}
# Colour words that name several attributes: the ones a context-free encoder confuses.
SHARED_COLORS = sorted(c for c in COLOR_WORDS if sum(c in colors for colors in COLORS.values()) > 1)


def word_tags(words: list[str]) -> list[str]:
    """The tag of each (lower-cased) word: `key:colour` for a colour word and for the noun it
    describes, when that colour is one the attribute can have; `none` otherwise."""
    tags = ["none"] * len(words)
    for i, word in enumerate(words):
        if word not in COLOR_WORDS:
            continue
        for j in range(i + 1, len(words)):
            if words[j] in NOUNS:
                key = NOUNS[words[j]]
                if word in COLORS[key]:
                    tags[i] = tags[j] = f"{key}:{word}"
                break
            if words[j] in COLOR_WORDS or words[j] in (",", "."):
                break  # another colour or the end of the phrase comes first: this one names nothing
    return tags


def caption_colors(caption: str) -> dict:
    """{attribute: colour} for every colour the caption names (from its word tags)."""
    words = re.findall(r"\w+|[^\w\s]+", caption.lower())
    return dict(tag.split(":") for tag in word_tags(words) if tag != "none")


class TextHeads(torch.nn.Module):
    """The pre-training heads (discarded afterwards): T5 token → tag and word id, plus fixed tag
    prototypes; CLIP pooled → each attribute's colour (index 0 = not named)."""

    def __init__(self, t5_dim: int, vocab: int, clip_dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("prototypes", F.normalize(torch.randn(len(TAGS), t5_dim, generator=g), dim=-1))
        self.tag = torch.nn.Linear(t5_dim, len(TAGS))
        self.word = torch.nn.Linear(t5_dim, vocab)
        self.colors = torch.nn.ModuleDict({k: torch.nn.Linear(clip_dim, 1 + len(c)) for k, c in COLORS.items()})


def phrase_list(g: torch.Generator) -> str:
    """A user-style prompt: 1–4 random "colour noun" phrases, e.g. "black hair, purple background"."""
    keys = list(COLORS)
    pick = torch.randperm(len(keys), generator=g)[: int(torch.randint(1, 5, (1,), generator=g))].tolist()
    phrases = []
    for k in pick:
        colors = COLORS[keys[k]]
        phrases.append(f"{colors[int(torch.randint(len(colors), (1,), generator=g))]} {ATTRIBUTE_NOUN[keys[k]]}")
    return ", ".join(phrases)


def _t5_batch(tokenizer, captions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, L] as FluxPipeline pads them, and each token's tag index [B, L] (-100 on padding)."""
    enc = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    ids = enc.input_ids
    tags = torch.full_like(ids, -100)
    for b, row in enumerate(ids.tolist()):
        words = tokenizer.convert_ids_to_tokens(row)
        for k, tag in enumerate(word_tags(words)):
            if row[k] != tokenizer.pad_token_id:
                tags[b, k] = TAGS.index(tag)
    return ids, tags


def _clip_batch(tokenizer, captions: list[str]) -> tuple[torch.Tensor, dict]:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    named = [caption_colors(c) for c in captions]
    targets = {k: torch.tensor([1 + COLORS[k].index(n[k]) if k in n else 0 for n in named]) for k in COLORS}
    return ids, targets


@torch.no_grad()
def role_similarity(backbone, max_length: int) -> dict:
    """For each colour word that names several attributes: the largest cosine between its T5 vectors
    in two roles ("blue eyes" vs "blue background"), as FluxPipeline encodes them. A context-free
    encoder gives ≈ 1; an encoder that binds words to attributes, much less."""
    from ..encoding import encode_prompts

    out = {}
    for color in SHARED_COLORS:
        phrases = [f"{color} {ATTRIBUTE_NOUN[key]}" for key, colors in COLORS.items() if color in colors]
        t5, _ = encode_prompts(backbone, phrases, max_length)
        v = F.normalize(t5[:, 0].float(), dim=-1)  # the colour word is the first token (T5 has no BOS)
        sim = v @ v.T
        out[color] = float(sim[~torch.eye(len(phrases), dtype=torch.bool)].max())
    return out


def train_text_encoders(data: Path, backbone_dir: Path, out: Path, split: str, steps: int, batch_size: int,
                        lr: float, max_length: int, drop_text_prob: float, seed: int,
                        spec: TinySpec = TINY_DEMO_SPEC) -> dict:
    from tqdm.auto import tqdm

    if spec.t5_vocab != "words":
        raise ValueError("the text stage tags words: it needs a spec with t5_vocab='words'")
    backbone = load_backbone(backbone_dir)
    fresh = build_tiny_backbone(spec)
    if backbone.transformer.config.joint_attention_dim != spec.t5_hidden:
        raise BackboneError(f"{backbone_dir}: its transformer reads {backbone.transformer.config.joint_attention_dim}-wide "
                            f"T5 vectors, the spec's T5 is {spec.t5_hidden} wide")
    for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        setattr(backbone, name, getattr(fresh, name))
    t5_tok, clip_tok = backbone.tokenizer_2, backbone.tokenizer
    ids = read_split(data, split)
    by_id = read_captions(data, ids)
    captions = [c for i in ids for c in by_id[i]]
    before = role_similarity(backbone, max_length)

    torch.manual_seed(seed)
    t5, clip = backbone.text_encoder_2.train().requires_grad_(True), backbone.text_encoder.train().requires_grad_(True)
    heads = TextHeads(t5.config.d_model, len(t5_tok), clip.config.hidden_size, seed)
    params = [*t5.parameters(), *clip.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(steps), desc="train text encoders", dynamic_ncols=True)
    for step in bar:
        pick = torch.randint(len(captions), (batch_size,), generator=g).tolist()
        u = torch.rand(batch_size, generator=g).tolist()
        # empty as caption dropout feeds them, a user-style phrase list, or a data set caption
        batch = ["" if x < drop_text_prob else phrase_list(g) if x < drop_text_prob + 0.2 else captions[k]
                 for k, x in zip(pick, u)]
        t5_ids, tags = _t5_batch(t5_tok, batch, max_length)
        hidden = t5(t5_ids).last_hidden_state
        tag_loss = F.cross_entropy(heads.tag(hidden).flatten(0, 1), tags.flatten(), ignore_index=-100)
        tagged = tags > 0
        proto_loss = (1 - F.cosine_similarity(hidden[tagged], heads.prototypes[tags[tagged]], dim=-1)).mean() \
            if tagged.any() else hidden.sum() * 0  # a batch of empty captions has no colour word
        # word identity only where no colour tag speaks for it: a colour word's vector is free to be
        # all about its (attribute, colour), the rest keep what they say
        words = t5_ids.masked_fill(tags != 0, -100)
        word_loss = F.cross_entropy(heads.word(hidden).flatten(0, 1), words.flatten(), ignore_index=-100)
        clip_ids, targets = _clip_batch(clip_tok, batch)
        pooled = clip(clip_ids).pooler_output
        color_loss = sum(F.cross_entropy(heads.colors[k](pooled), targets[k]) for k in COLORS) / len(COLORS)
        loss = tag_loss + proto_loss + word_loss + color_loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"text encoder loss became {loss.item()} at step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append((tag_loss.item(), word_loss.item(), color_loss.item(), proto_loss.item()))
        bar.set_postfix(tag=f"{tag_loss.item():.3f}", proto=f"{proto_loss.item():.3f}", pooled=f"{color_loss.item():.3f}")
    t5.eval().requires_grad_(False)
    clip.eval().requires_grad_(False)
    stats = _accuracy(backbone, heads, captions[:2000] if len(captions) > 2000 else captions, max_length)
    stats.update(steps=steps, captions=len(captions), role_similarity_before=before,
                 role_similarity=role_similarity(backbone, max_length),
                 loss_first=[sum(h[k] for h in history[:max(1, steps // 10)]) / max(1, steps // 10) for k in range(4)],
                 loss_last=[sum(h[k] for h in history[-max(1, steps // 10):]) / max(1, steps // 10) for k in range(4)])

    backbone.save_atomically(out, {"text_pretraining.json": json.dumps(stats, indent=1) + "\n"})
    return stats


@torch.no_grad()
def _accuracy(backbone, heads: TextHeads, captions: list[str], max_length: int) -> dict:
    """Tag accuracy on colour-word/noun tokens and pooled colour accuracy on named attributes."""
    t5_ids, tags = _t5_batch(backbone.tokenizer_2, captions, max_length)
    pred = heads.tag(backbone.text_encoder_2(t5_ids).last_hidden_state).argmax(-1)
    colored = tags > 0
    clip_ids, targets = _clip_batch(backbone.tokenizer, captions)
    pooled = backbone.text_encoder(clip_ids).pooler_output
    right = total = 0
    for k in COLORS:
        named = targets[k] > 0
        right += int((heads.colors[k](pooled).argmax(-1)[named] == targets[k][named]).sum())
        total += int(named.sum())
    return {"tag_accuracy": float((pred[colored] == tags[colored]).float().mean()),
            "pooled_color_accuracy": right / max(total, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="SynthFaces root (captions in text.json or text/)")
    p.add_argument("--backbone", required=True, help="backbone folder whose text encoders to train (the VAE stage's)")
    p.add_argument("--out", required=True, help="backbone folder to write, with the trained text encoders")
    p.add_argument("--split", default="splits/train.txt", help="training ids: START-END or an id-list file")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max_length", type=int, default=48,
                   help="T5 window, as the DiT stages' max_sequence_length (captions are padded to it)")
    p.add_argument("--drop_text_prob", type=float, default=0.1, help="share of empty captions, as in DiT training")
    p.add_argument("--spec", choices=["demo", "test"], default="demo",
                   help="text encoder sizes: 'demo' (the shipped tiny model) or 'test' (the unit-test preset, word tokens)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.max_length < 8:
        p.error("--steps and --batch_size must be >= 1, --max_length >= 8")
    data, out = Path(args.data), Path(args.out)
    if Path(args.backbone).resolve() == out.resolve():
        p.error("--out must differ from --backbone (the input backbone is kept)")
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = TINY_DEMO_SPEC if args.spec == "demo" else TinySpec(t5_vocab="words", clip_vocab="words")
    spec = dataclasses.replace(spec, seed=args.seed)
    start = time.perf_counter()
    try:
        s = train_text_encoders(data, Path(args.backbone), out, args.split, args.steps, args.batch_size, args.lr,
                                args.max_length, args.drop_text_prob, args.seed, spec)
    except (DataError, BackboneError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sim = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.items())  # noqa: E731
    print(f"text encoders: tag loss {s['loss_first'][0]:.3f} → {s['loss_last'][0]:.3f}, pooled colour loss "
          f"{s['loss_first'][2]:.3f} → {s['loss_last'][2]:.3f}; tag accuracy {s['tag_accuracy']:.3f}, pooled colour "
          f"accuracy {s['pooled_color_accuracy']:.3f}; same colour in two roles, cosine before: {sim(s['role_similarity_before'])}; "
          f"after: {sim(s['role_similarity'])}; {time.perf_counter() - start:.0f} s; backbone written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
