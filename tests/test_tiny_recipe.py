"""The tiny demo recipe's own pieces: the VAE stage and the controllability benchmark's scorer."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from face_mogle.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synthfaces"), 10, 64, seed=3, test_fraction=0.4, progress=False)


def load_bench():
    spec = importlib.util.spec_from_file_location("controllability", ROOT / "bench" / "controllability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vae_stage_writes_a_loadable_backbone_and_learns(faces, tmp_path, capsys):
    from face_mogle.models.builder import TinySpec, load_backbone
    from face_mogle.training.vae import main, train_vae

    spec = TinySpec(vae_channels=[8, 8], t5_vocab="words")
    stats = train_vae(faces, tmp_path / "bb", "splits/train.txt", 64, 32, 40, 4, 3e-3, 1e-6, spec, 0)
    assert stats["rec_last"] < stats["rec_first"]
    assert 0.0 <= stats["recon_miou"] <= 1.0 and stats["images"] == 6
    bb = load_backbone(tmp_path / "bb")
    # the measured latent statistics are in the saved config, as FLUX's VAE carries its own
    assert bb.vae.config.shift_factor == pytest.approx(stats["shift_factor"])
    assert bb.vae.config.scaling_factor == pytest.approx(stats["scaling_factor"])
    assert bb.vae_scale_factor == 2 and bb.tokenizer_2("blond hair").input_ids[-1] == bb.tokenizer_2.eos_token_id
    # the command line refuses a crop that does not fit, in one line
    with pytest.raises(SystemExit):
        main(["--data", str(faces), "--out", str(tmp_path / "x"), "--size", "64", "--crop", "96"])
    assert "--crop" in capsys.readouterr().err


def test_controllability_scorer_is_exact_on_real_faces(faces):
    from PIL import Image

    bench = load_bench()
    from face_mogle.data.synthetic import CAPTION_COLOR_KEYS

    ids = [6, 7, 8, 9]
    truth = bench.load_truth(faces, ids, 64)
    real = [np.asarray(Image.open(faces / "face" / f"{i}.jpg").convert("RGB")) for i in ids]
    perfect = bench.score(truth, real, 0.0)
    assert perfect["miou"] > 0.98 and perfect["attribute_accuracy"] == 1.0
    assert set(perfect["per_attribute"]) <= set(CAPTION_COLOR_KEYS) and "hair_color" in perfect["per_attribute"]
    # each face scored against another face's mask and colours loses on both counts
    swapped = bench.score(truth, real[1:] + real[:1], 0.0)
    assert swapped["miou"] < perfect["miou"] - 0.2
    assert swapped["attribute_accuracy"] < 1.0
    assert truth["prompts"] == [json.loads((faces / "text.json").read_text())[f"{i}.jpg"][0] for i in ids]


def test_controllability_bench_runs_on_a_run_folder(faces, tiny_run):
    from face_mogle.pipeline import FaceMoGLEPipeline

    bench = load_bench()
    pipe = FaceMoGLEPipeline.from_run(tiny_run, device="cpu")
    ids = [6, 7]
    rows = bench.reference_rows(pipe, faces, ids, batch_size=2)
    assert set(rows) == {"VAE round trip", "2× down/up", "4× down/up"}
    # blur costs mIoU: 4× resampling scores below 2×
    assert rows["4× down/up"]["miou"] < rows["2× down/up"]["miou"]
    res = bench.evaluate(pipe, faces, ids, ["mask+text", "text"], steps=2, batch_size=2, seed=0)
    for mode in ("mask+text", "text"):
        assert res[mode]["images"] == 2 and 0.0 <= res[mode]["miou"] <= 1.0


def test_reliance_swaps_conditions_between_faces(faces, tiny_run, tmp_path):
    import shutil

    import torch

    from face_mogle.pipeline import FaceMoGLEPipeline

    class ReadsBoth(torch.nn.Module):
        """A stand-in model whose prediction moves with the global mask map, the T5 sequence and the
        pooled CLIP vector (a real tiny model reads them too weakly for a sharp test)."""

        def __init__(self):
            super().__init__()
            self.mogle = torch.nn.Linear(1, 1)  # the bench casts mask latents to MoGLE's dtype

        def forward(self, x_t, t, masks, t5, pooled, txt_ids, img_ids, guidance):
            return masks[:, 0] + t5[:, :, :1].mean(1, keepdim=True) + pooled[:, None, :1]

    bench = load_bench()
    pipe = FaceMoGLEPipeline.from_run(tiny_run, device="cpu")
    pipe.model = ReadsBoth()
    ids = [6, 7, 8]

    def per_face(root):
        return [bench.reliance(pipe, root, [i], batch_size=4, seed=0, t_grid=(0.3, 0.7)) for i in ids]

    one = per_face(faces)
    # a lone face has no other face to swap with: all three losses are its own
    assert one[0]["own conditions"] == one[0]["captions swapped"] == one[0]["masks swapped"] > 0
    # 3 faces in batches of 2 → one batch of 3 (never a lone face); noise is fixed per face, so the
    # own-condition loss is the mean of the single-face ones
    three = bench.reliance(pipe, faces, ids, batch_size=2, seed=0, t_grid=(0.3, 0.7))
    assert three["images"] == 3
    assert three["own conditions"] == pytest.approx(np.mean([r["own conditions"] for r in one]), rel=1e-5)
    # reference: a copy of the data where each face has the previous face's mask (or first caption)
    # scores, with its own conditions, what the bench scores with swapped ones
    for kind, swapped in (("mask", "masks swapped"), ("text", "captions swapped")):
        root = tmp_path / kind
        shutil.copytree(faces, root)
        if kind == "mask":
            for k, i in enumerate(ids):
                shutil.copy(faces / "mask" / f"{ids[k - 1]}.png", root / "mask" / f"{i}.png")
        else:
            text = json.loads((faces / "text.json").read_text())
            text.update({f"{i}.jpg": text[f"{ids[k - 1]}.jpg"] for k, i in enumerate(ids)})
            (root / "text.json").write_text(json.dumps(text))
        reference = np.mean([r["own conditions"] for r in per_face(root)])
        assert three[swapped] == pytest.approx(reference, rel=1e-5)
        assert abs(three[swapped] / three["own conditions"] - 1) > 1e-4  # float32 error is ~1e-7


# ---------------------------------------------------------------------------------------------
# The VAE's loss weights and the text stage


def test_vae_pixel_weights_favour_rare_classes_and_edges():
    import torch

    from face_mogle.training.region_weights import pixel_weights

    masks = torch.zeros(2, 16, 16, dtype=torch.uint8)
    masks[:, 4:12, 4:12] = 1  # skin: 64 pixels each
    masks[:, 7, 7] = 4  # one eye pixel each
    w = pixel_weights(masks)
    assert w.shape == masks.shape
    # interior pixels: rarer class → higher weight, as (freq_max / freq)^½
    assert w[0, 0, 0] < w[0, 5, 10] and w[0, 5, 10] < w[0, 7, 7]
    assert (w[0, 5, 10] / w[0, 0, 0]).item() == pytest.approx((192 / 63) ** 0.5, rel=1e-5)
    # a background pixel on the skin's edge weighs twice an interior one
    assert (w[0, 3, 8] / w[0, 0, 0]).item() == pytest.approx(2.0)


def test_word_tags_bind_colours_to_their_part(faces):
    from face_mogle.training.text_encoders import caption_colors, word_tags

    words = "she has blue eyes , a red shirt and black long wavy hair on a gray background .".split()
    tags = dict(zip(range(len(words)), word_tags(words)))
    assert tags[2] == tags[3] == "eye_color:blue" and tags[6] == tags[7] == "cloth_color:red"
    assert tags[9] == tags[12] == "hair_color:black" and tags[15] == tags[16] == "background_color:gray"
    assert tags[0] == tags[10] == tags[11] == "none"
    assert word_tags(["navy", "eyes"]) == ["none", "none"]  # not a colour eyes can have
    assert word_tags(["blue", "shirt"]) == ["none", "none"]
    # every colour every caption of the data set names is its true attribute (attributes.json)
    truth = json.loads((faces / "attributes.json").read_text())
    named = 0
    for name, captions in json.loads((faces / "text.json").read_text()).items():
        for caption in captions:
            for key, color in caption_colors(caption).items():
                assert truth[name.removesuffix(".jpg")][key] == color, (caption, key)
                named += 1
    assert named > 100


def test_word_level_clip_tokenizer_keeps_captions_whole(tmp_path):
    from face_mogle.models.builder import T5_WORDS, build_clip_tokenizer

    tok = build_clip_tokenizer(tmp_path / "w", "words")
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in T5_WORDS)
    caption = ("A woman with black long wavy hair, brown eyes, red lips and light skin, wearing a black shirt, "
               "glasses, a yellow hat, earrings and a necklace, on a purple background.")
    ids = tok(caption).input_ids
    assert len(ids) < 77 and tok.convert_ids_to_tokens(ids)[-3:] == ["background</w>", ".</w>", "<|endoftext|>"]
    assert len(build_clip_tokenizer(tmp_path / "b", "bytes")(caption).input_ids) > 77  # the byte-level one cuts it
    # a word outside the list still spells out (no unknown token)
    pieces = tok.convert_ids_to_tokens(tok("zebra", add_special_tokens=False).input_ids)
    assert "".join(pieces).replace("</w>", "") == "zebra"


def test_text_stage_binds_colour_words_and_writes_a_backbone(faces, tmp_path):
    from face_mogle.encoding import encode_prompts
    from face_mogle.models.builder import TinySpec, build_tiny_backbone, load_backbone
    from face_mogle.training.text_encoders import SHARED_COLORS, main, role_similarity, train_text_encoders

    # text encoders as wide as the demo's (64); the input's character-level tokenizers are replaced
    spec = TinySpec(t5_vocab="words", clip_vocab="words", t5_hidden=64, clip_hidden=64)
    build_tiny_backbone(TinySpec(t5_hidden=64, clip_hidden=64)).save(tmp_path / "in")
    stats = train_text_encoders(faces, tmp_path / "in", tmp_path / "out", "splits/train.txt", steps=500,
                                batch_size=32, lr=3e-3, max_length=48, drop_text_prob=0.1, seed=0, spec=spec)
    before, after = stats["role_similarity_before"], stats["role_similarity"]
    assert set(before) == set(after) == set(SHARED_COLORS)
    # random encoders: the same colour word is nearly the same vector in every role; trained: not
    assert min(before.values()) > 0.95
    # (6 faces and 500 steps; the recipe's stage, on 4,500 faces, is held to < 0.5 in test_shipped_model)
    assert np.mean(list(after.values())) < 0.6 and max(after.values()) < 0.95
    assert stats["tag_accuracy"] > 0.9 and stats["pooled_color_accuracy"] > 0.9
    assert stats["loss_last"][0] < stats["loss_first"][0] / 4 and stats["loss_last"][3] < stats["loss_first"][3] / 2
    # the written backbone carries the trained encoders and word-level tokenizers
    bb = load_backbone(tmp_path / "out")
    assert role_similarity(bb, 48) == pytest.approx(after, abs=1e-5)
    assert bb.tokenizer.convert_ids_to_tokens(bb.tokenizer("purple background").input_ids)[1:3] == ["purple</w>", "background</w>"]
    assert json.loads((tmp_path / "out" / "text_pretraining.json").read_text())["steps"] == 500
    # the pooled vectors of two captions that differ only in the background colour differ
    _, pooled = encode_prompts(bb, ["A man on a blue background.", "A man on a green background."], 48)
    assert (pooled[0] - pooled[1]).norm() > 0.1 * pooled[0].norm()
    # the input backbone is never the output
    with pytest.raises(SystemExit):
        main(["--data", str(faces), "--backbone", str(tmp_path / "in"), "--out", str(tmp_path / "in")])


def test_recolor_changes_only_the_named_attribute():
    bench = load_bench()
    caption = "A man with black short hair, blue eyes and light skin, wearing a black shirt, on a blue background."
    assert bench.recolor(caption, "background_color", "gray") == caption.replace("blue background", "gray background")
    assert bench.recolor(caption, "cloth_color", "navy") == caption.replace("black shirt", "navy shirt")
    assert bench.recolor(caption, "hair_color", "red") == caption.replace("black short", "red short")
    assert bench.recolor("He is bald.", "hair_color", "red") is None


def test_prompt_swap_counts_obeyed_colours(faces):
    from types import SimpleNamespace

    from PIL import Image

    from face_mogle.data.masks import load_label_map
    from face_mogle.data.synthetic import ATTRIBUTE_SOURCES
    from face_mogle.training.text_encoders import caption_colors

    bench = load_bench()
    ids = [6, 7]

    class Painter:
        """A stand-in sampler: the face of the id its seed names, with the colours the prompt asks for
        painted on (obeys) or left as they are (ignores the prompt)."""

        cfg = SimpleNamespace(sample=SimpleNamespace(size=64))
        run_dir = "painter"

        def __init__(self, obey):
            self.obey = obey

        def __call__(self, prompts, masks, seeds, steps, batch_size, on_step=None):
            images = []
            for prompt, seed in zip(prompts, seeds):
                i = seed % 1_000_003
                arr = np.asarray(Image.open(faces / "face" / f"{i}.jpg").convert("RGB")).copy()
                labels = load_label_map(faces / "mask" / f"{i}.png", 64)
                for key, color in (caption_colors(prompt) if self.obey else {}).items():
                    classes, named = ATTRIBUTE_SOURCES[key]
                    arr[np.isin(labels, classes)] = named[color]
                images.append(Image.fromarray(arr))
            return SimpleNamespace(images=images)

    obeys = bench.prompt_swap(Painter(True), faces, ids, steps=None, batch_size=4, seed=0, keys=("background_color",))
    ignores = bench.prompt_swap(Painter(False), faces, ids, steps=None, batch_size=4, seed=0, keys=("background_color",))
    r = obeys["background_color"]
    assert (r["accuracy"], r["distinct"], r["colors"], r["faces"], r["images"]) == (1.0, 5.0, 5, 2, 10)
    r = ignores["background_color"]
    assert r["distinct"] == 1.0 and r["accuracy"] == pytest.approx(0.2)  # each face's own colour, 1 of 5
