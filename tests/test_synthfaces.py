"""SynthFaces: determinism, class coverage, captions, exact parsing back, data set layout, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from face_mogle.data import synthetic as sf
from face_mogle.labels import CLASSES, NUM_CLASSES

ROOT = Path(__file__).resolve().parents[1]
L = {name: i for i, name in enumerate(CLASSES)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """50 samples at 128², written by write_dataset (so parsed from the saved JPEGs)."""
    return sf.write_dataset(tmp_path_factory.mktemp("synth"), 50, 128, seed=7, progress=False)


def read_rgb(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def read_mask(path):
    with Image.open(path) as img:
        return np.asarray(img)


def test_colour_table_is_separable():
    assert sf.min_class_distance() >= sf.MIN_CLASS_DISTANCE == 45.0
    for key, (classes, named) in sf.ATTRIBUTE_SOURCES.items():
        colours = np.array(list(named.values()), dtype=float)
        d = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
        assert d[~np.eye(len(colours), dtype=bool)].min() >= sf.MIN_CLASS_DISTANCE, key


def test_render_is_deterministic():
    a, b = sf.render((3, 11), 128), sf.render((3, 11), 128)
    assert a.image.dtype == np.uint8 and a.image.shape == (128, 128, 3)
    assert a.labels.dtype == np.uint8 and a.labels.shape == (128, 128)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.captions == b.captions and a.attributes == b.attributes
    c = sf.render((4, 11), 128)
    assert not np.array_equal(a.labels, c.labels) and a.captions != c.captions
    # the same face at another size: same attributes and captions, scaled drawing
    big = sf.render((3, 11), 256)
    assert big.captions == a.captions
    assert np.mean(big.labels[::2, ::2] == a.labels) > 0.95


def test_all_classes_occur_and_mask_matches_image():
    seen = np.zeros(NUM_CLASSES, dtype=np.int64)
    for i in range(200):
        s = sf.render((0, i), 128)
        seen += np.bincount(s.labels.ravel(), minlength=NUM_CLASSES)
        # every pixel of a class has one colour, the one the attributes name
        for key, (classes, named) in sf.ATTRIBUTE_SOURCES.items():
            mask = np.isin(s.labels, classes)
            if s.attributes[key] is not None:
                assert (s.image[mask] == named[s.attributes[key]]).all(), key
    missing = [CLASSES[c] for c in range(NUM_CLASSES) if seen[c] == 0]
    assert not missing


def test_left_is_image_right_and_upper_lip_is_above():
    for i in range(30):
        s = sf.render((1, i), 128)
        ys, xs = np.mgrid[0:128, 0:128]
        for left, right in (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")):
            lm, rm = s.labels == L[left], s.labels == L[right]
            if lm.any() and rm.any():
                assert xs[lm].mean() > xs[rm].mean(), (i, left)
        assert ys[s.labels == L["u_lip"]].mean() < ys[s.labels == L["l_lip"]].mean()


def test_captions_name_the_colours():
    for i in range(40):
        s = sf.render((2, i), 128)
        assert len(set(s.captions)) >= 3
        hair = s.attributes["hair_color"]
        word = "bald" if hair is None else hair
        assert sum(word in c.lower() for c in s.captions) >= 3, s.captions
        first = s.captions[0].lower()  # the test split uses the first caption: the complete one
        for key in ("eye_color", "lip_color", "skin_tone", "cloth_color", "background_color"):
            assert s.attributes[key] in first, (key, first)
        assert ("glasses" in first) == s.attributes["glasses"]


def test_parse_recovers_saved_images_exactly(saved):
    truth, pred, hits, total = [], [], 0, 0
    attrs = json.loads((saved / "attributes.json").read_text())
    for i in range(50):
        image = read_rgb(saved / "face" / f"{i}.jpg")
        labels = sf.parse(image)
        truth.append(read_mask(saved / "mask" / f"{i}.png"))
        pred.append(labels)
        found = sf.attributes(image, labels)
        for key in sf.COLOR_KEYS:
            total += 1
            hits += found[key] == attrs[str(i)][key]
    assert sf.mean_iou(pred, truth) >= 0.99
    assert hits == total
    # a clean render parses back without a single wrong pixel
    s = sf.render((9, 0), 128)
    np.testing.assert_array_equal(sf.parse(s.image), s.labels)


def test_parse_degrades_gracefully(saved):
    rng = np.random.default_rng(0)
    truth, noisy, blurred = [], [], []
    for i in range(20):
        image = read_rgb(saved / "face" / f"{i}.jpg")
        truth.append(read_mask(saved / "mask" / f"{i}.png"))
        noise = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        noisy.append(sf.parse(noise))
        blurred.append(sf.parse(np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.6)))))
    assert sf.mean_iou(noisy, truth) >= 0.9
    assert sf.mean_iou(blurred, truth) >= 0.75


def test_mean_iou():
    t = np.array([[0, 0], [1, 1]])
    assert sf.mean_iou([t], [t]) == 1.0
    p = np.array([[0, 1], [1, 1]])  # class 0: 1/2, class 1: 2/3
    assert sf.mean_iou([p], [t]) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_write_dataset_layout(tmp_path):
    out = sf.write_dataset(tmp_path / "a", 10, 64, seed=5, test_fraction=0.2, progress=False)
    assert out == tmp_path / "a"
    for i in range(10):
        with Image.open(out / "face" / f"{i}.jpg") as img:
            assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"
        with Image.open(out / "mask" / f"{i}.png") as img:
            assert img.mode == "L" and img.size == (64, 64)
            assert np.asarray(img).max() < NUM_CLASSES
    texts = json.loads((out / "text.json").read_text())
    assert list(texts) == [f"{i}.jpg" for i in range(10)]
    for i in range(10):
        assert (out / "text" / f"{i}.txt").read_text().splitlines() == texts[f"{i}.jpg"]
    attrs = json.loads((out / "attributes.json").read_text())
    assert sorted(attrs, key=int) == [str(i) for i in range(10)] and "hair_color" in attrs["0"]
    assert (out / "splits" / "train.txt").read_text().split() == [str(i) for i in range(8)]
    assert (out / "splits" / "test.txt").read_text().split() == ["8", "9"]
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.endswith(".tmp")]
    assert leftovers == []

    # sample i depends on (seed, i) only: a smaller set shares its files byte for byte
    sub = sf.write_dataset(tmp_path / "b", 4, 64, seed=5, test_fraction=0.0, progress=False)
    for i in range(4):
        for rel in (f"face/{i}.jpg", f"mask/{i}.png", f"text/{i}.txt"):
            assert (sub / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert (sub / "splits" / "test.txt").read_text() == ""
    with pytest.raises(ValueError, match="num"):
        sf.write_dataset(tmp_path / "c", 0, 64)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "script" / "make_synthfaces.py"), *map(str, args)],
        capture_output=True, text=True, timeout=120,
    )


def test_cli(tmp_path):
    out = tmp_path / "synthfaces"
    res = run_cli("--out", out, "--num", 20, "--size", 64, "--seed", 3, "--test_fraction", 0.25, "--quiet")
    assert res.returncode == 0, res.stderr
    assert len(list((out / "face").glob("*.jpg"))) == 20
    assert len(list((out / "mask").glob("*.png"))) == 20
    assert (out / "splits" / "test.txt").read_text().split() == [str(i) for i in range(15, 20)]
    assert "20" in res.stdout

    afile = tmp_path / "a_file"
    afile.write_text("x")
    for args, needle in (
        (("--out", out, "--num", 0), "--num must be positive"),
        (("--out", out, "--num", -3), "--num must be positive"),
        (("--out", out, "--size", 32), "--size must be at least 64"),
        (("--out", afile, "--num", 2), "exists and is not a directory"),
        (("--out", out, "--test_fraction", 1.5), "--test_fraction"),
        (("--out", out, "--num", 2), "already holds a data set"),  # never silently over an existing set
    ):
        res = run_cli(*args)
        assert res.returncode == 2, args
        errors = [line for line in res.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and needle in errors[0], res.stderr
    assert len(list((out / "face").glob("*.jpg"))) == 20  # the refused runs changed nothing
    res = run_cli("--out", out, "--num", 2, "--size", 64, "--quiet", "--overwrite")
    assert res.returncode == 0 and len(json.loads((out / "text.json").read_text())) == 2
    assert "MM-CelebA-HQ" in run_cli("--help").stdout


@pytest.mark.parametrize("size", [32, 64])
def test_captions_never_name_invisible_attributes(size):
    from face_mogle.data.synthetic import render

    for i in range(120):
        sample = render((0, i), size)
        assert not any("None" in c for c in sample.captions), sample.captions
        if sample.attributes["lip_color"] is None:
            assert not any(" lips" in c or "lipstick" in c for c in sample.captions)


def test_caption_color_hits_judge_only_what_the_caption_names():
    from face_mogle.data.synthetic import caption_color_hits, parse, render

    s = render((0, 3), 128)  # bald: no hair colour to judge; pink lips
    labels = parse(s.image)
    hits = caption_color_hits(s.image, labels, s.attributes, "He is bald, with pink lips.")
    assert hits == {k: True for k in ("eye_color", "lip_color", "skin_tone", "cloth_color", "background_color")}
    assert "lip_color" not in caption_color_hits(s.image, labels, s.attributes, "He is bald.")
    assert caption_color_hits(s.image, labels, dict(s.attributes, skin_tone="light"), "x")["skin_tone"] is False
