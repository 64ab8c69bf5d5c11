"""Editing a real face: the edit area, the source's path outside it, the ODE inversion, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from face_mogle.editing import dilate, edit_area, feather, latent_area
from face_mogle.encoding import unpack
from face_mogle.labels import CLASSES
from face_mogle.pipeline import SamplingError
from sampling_helpers import SIZE, draw_mask

ROOT = Path(__file__).resolve().parents[1]


def face(i: int, size: int = SIZE) -> np.ndarray:
    """A face-like RGB image: the palette-free colours of draw_mask's regions plus a gradient."""
    lab = draw_mask(i, size)
    rng = np.random.default_rng(i)
    colours = rng.integers(0, 256, (len(CLASSES), 3))
    yy = np.mgrid[:size, :size][0][..., None]
    return np.clip(colours[lab] + yy // 2, 0, 255).astype(np.uint8)


def hair_swapped(i: int, size: int = SIZE) -> np.ndarray:
    """draw_mask(i, SIZE) with the hair grown into the background band above the head."""
    lab = draw_mask(i, size).copy()
    lab[: size // 4][lab[: size // 4] == 0] = CLASSES.index("hair")
    return lab


def test_edit_area_is_the_changed_labels_plus_named_regions():
    src = draw_mask(0, SIZE)
    tgt = hair_swapped(0)
    area = edit_area(src, tgt)
    assert np.array_equal(area, src != tgt) and area.any()
    hair = CLASSES.index("hair")
    with_hair = edit_area(src, tgt, [hair])
    assert np.array_equal(with_hair, (src != tgt) | (src == hair) | (tgt == hair))
    assert not edit_area(src, src).any()  # nothing changed, nothing named: nothing (edit() refuses it)


def test_dilate_and_feather():
    a = np.zeros((16, 16), bool)
    a[8, 8] = True
    assert dilate(a, 2).sum() == 25 and dilate(a, 0).sum() == 1
    alpha = feather(a, 2)
    assert alpha[8, 8] == 1.0 and alpha[0, 0] == 0.0 and 0 < alpha[8, 10] < 1


def test_latent_area_lands_on_the_right_tokens(tiny_backbone):
    """The blend mask, packed like the latents, unpacks to the area's latent pixels (pack order)."""
    size, f = 32, tiny_backbone.vae_scale_factor
    area = np.zeros((size, size), bool)
    area[: size // 2, size // 2:] = True  # top-right quadrant
    mask = latent_area(area, f, tiny_backbone.latent_channels)
    back = unpack(mask, size, f)[0, 0]
    expected = torch.zeros(size // f, size // f)
    expected[: size // f // 2, size // f // 2:] = 1
    assert torch.equal(back, expected)


@pytest.mark.parametrize("inversion", ["noise", "ode"])
def test_latents_outside_the_edit_area_end_at_the_source(pipe, monkeypatch, inversion):
    """Outside the (dilated) edit area the final latents are the face's own, x0, exactly."""
    from face_mogle.encoding import encode_images

    seen = []
    decode = pipe.decode
    monkeypatch.setattr(pipe, "decode", lambda latents, size: seen.append(latents.clone()) or decode(latents, size))
    img, src, tgt = face(1), draw_mask(1, SIZE), hair_swapped(1)
    pipe.edit(img, tgt, "She has red hair.", src, strength=1.0, inversion=inversion, margin=2, paste_back=False, seeds=3)
    x0 = encode_images(pipe.backbone.vae, torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    keep = latent_area(dilate(src != tgt, 2), pipe.backbone.vae_scale_factor, pipe.backbone.latent_channels)
    out = seen[0]
    assert torch.equal(out[keep == 0], x0[keep == 0])
    assert not torch.allclose(out[keep == 1], x0[keep == 1], atol=1e-3)  # the edit area did change


def test_paste_back_keeps_the_input_pixels_outside(pipe):
    img, src, tgt = face(2), draw_mask(2, SIZE), hair_swapped(2)
    out = pipe.edit(img, tgt, "", src, margin=2, paste_back=True, seeds=0)
    outside = ~dilate(out.areas[0], 2)
    assert outside.any()
    assert np.array_equal(np.asarray(out.images[0])[outside], img[outside])
    assert np.array_equal(out.areas[0], src != tgt)


def test_ode_inversion_converges_to_the_source(tiny_run):
    """Inverting the flow ODE and running it forwards under the same conditions returns the face;
    the Euler error shrinks with the step count (a wrong sign or time would not)."""
    from face_mogle.encoding import encode_images
    from face_mogle.pipeline import FaceMoGLEPipeline

    pipe = FaceMoGLEPipeline.from_run(tiny_run, device="cpu", overrides=["sample.guidance=1.0"])
    img, lab = face(3), draw_mask(3, SIZE)
    x0 = encode_images(pipe.backbone.vae, torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    errors = []
    for steps in (2, 8, 32):
        seen = []
        decode = pipe.decode
        pipe.decode = lambda latents, size: seen.append(latents.clone()) or decode(latents, size)
        pipe.edit(img, lab, "A face.", lab, strength=1.0, inversion="ode", paste_back=False, steps=steps, regions=CLASSES)
        del pipe.decode
        errors.append(float((seen[0] - x0).abs().mean() / x0.abs().mean()))
    # Euler is first order: 4x the steps, about a quarter of the error
    assert errors[0] > 2.5 * errors[1] > 2.5 * 2.5 * errors[2], errors
    assert errors[2] < 0.15, errors


def test_batch_equals_single_edits(pipe):
    imgs = [face(i) for i in range(3)]
    srcs = [draw_mask(i, SIZE) for i in range(3)]
    tgts = [hair_swapped(i) for i in range(3)]
    prompts = ["She has red hair.", "", "He has black hair."]
    batch = pipe.edit(imgs, tgts, prompts, srcs, seeds=[5, 6, 7], batch_size=3, inversion="ode")
    for i in range(3):
        one = pipe.edit(imgs[i], tgts[i], prompts[i], srcs[i], seeds=[5 + i], batch_size=1, inversion="ode")
        assert np.abs(np.asarray(one.images[0]).astype(int) - np.asarray(batch.images[i]).astype(int)).max() <= 1


def test_text_edit_with_regions_changes_only_that_region(pipe):
    img, lab = face(4), draw_mask(4, SIZE)
    out = pipe.edit(img, lab, "She has red hair.", lab, source_prompts="She has black hair.", regions=["hair"],
                    margin=1, seeds=0)
    hair = lab == CLASSES.index("hair")
    assert np.array_equal(out.areas[0], hair)
    outside = ~dilate(hair, 2)
    assert np.array_equal(np.asarray(out.images[0])[outside], img[outside])
    assert out.settings["regions"] == [["hair"]]
    # one region list per image
    two = pipe.edit([img, img], lab, "She has red hair.", lab, source_prompts="She has black hair.", regions=[["hair"], ["cloth", "neck"]], margin=1, seeds=0)
    assert np.array_equal(two.areas[1], np.isin(lab, [CLASSES.index("cloth"), CLASSES.index("neck")]))
    assert np.abs(np.asarray(two.images[0]).astype(int) - np.asarray(out.images[0]).astype(int)).max() <= 1


def test_an_edit_that_changes_nothing_is_refused(pipe):
    img, lab = face(0), draw_mask(0, SIZE)
    with pytest.raises(SamplingError, match="nothing to edit: the edited mask equals the source mask"):
        pipe.edit(img, lab, "She has red hair.", lab)  # once: the whole face regenerated
    absent = next(c for c in CLASSES if not (lab == CLASSES.index(c)).any())
    with pytest.raises(SamplingError, match="nothing to edit in edit 2"):
        pipe.edit([img, img], [hair_swapped(0), lab], "", lab, regions=[[], [absent]])


def test_the_edit_comes_back_at_the_inputs_own_size(pipe):
    """A face larger than the model's size: the result has the face's size, and outside the edit area
    it is the face's own full-resolution pixels (only the edit area is upsampled)."""
    big = np.asarray(Image.fromarray(face(2)).resize((SIZE * 3, SIZE * 3), Image.NEAREST))
    big = np.clip(big.astype(int) + np.arange(SIZE * 3)[None, :, None] % 3, 0, 255).astype(np.uint8)  # detail
    src, tgt = draw_mask(2, SIZE), hair_swapped(2)
    out = pipe.edit(big, tgt, "", src, margin=2, seeds=0)
    assert out.images[0].size == (SIZE * 3, SIZE * 3) and out.settings["output_sizes"] == [SIZE * 3]
    area = np.repeat(np.repeat(src != tgt, 3, 0), 3, 1)
    outside = ~dilate(area, 2 * 3)
    assert outside.any() and np.array_equal(np.asarray(out.images[0])[outside], big[outside])
    assert not np.array_equal(np.asarray(out.images[0])[area], big[area])
    raw = pipe.edit(big, tgt, "", src, margin=2, seeds=0, paste_back=False)
    assert raw.images[0].size == (SIZE * 3, SIZE * 3)


def test_bad_edit_inputs(pipe):
    img, lab = face(0), draw_mask(0, SIZE)
    with pytest.raises(SamplingError, match="square"):
        pipe.edit(np.zeros((32, 48, 3), np.uint8), lab, "", lab)
    with pytest.raises(SamplingError, match="unknown region 'beard'"):
        pipe.edit(img, lab, "", lab, regions=["beard"])
    with pytest.raises(SamplingError, match="strength"):
        pipe.edit(img, lab, "", lab, strength=0)
    with pytest.raises(SamplingError, match="inversion"):
        pipe.edit(img, lab, "", lab, inversion="ddim")
    with pytest.raises(SamplingError, match="2 masks for 3 edits"):
        pipe.edit([img] * 3, [lab, lab], "", lab)
    with pytest.raises(SamplingError, match="source mask"):
        pipe.edit(img, lab, "", None)
    with pytest.raises(SamplingError, match="not found"):
        pipe.edit("no/such/face.png", lab, "", lab)


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "inference.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_cli_edits_and_records_the_edit(tiny_run, tmp_path):
    from face_mogle.data.masks import save_label_map

    Image.fromarray(face(5)).save(tmp_path / "face.png")
    save_label_map(draw_mask(5, SIZE), tmp_path / "mask.png")
    save_label_map(hair_swapped(5), tmp_path / "edited.png")
    r = cli("--run", tiny_run, "--image", tmp_path / "face.png", "--source_mask", tmp_path / "mask.png",
            "--mask", tmp_path / "edited.png", "--prompt", "She has red hair.", "--output", tmp_path / "out.png",
            "--device", "cpu", "--inversion", "noise", "--strength", "0.5", "--margin", "1")
    assert r.returncode == 0, r.stderr
    out = Image.open(tmp_path / "out.png")
    assert out.size == (SIZE, SIZE)
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["mode"] == "edit" and record["inversion"] == "noise" and record["strength"] == 0.5
    assert record["margin"] == 1 and record["paste_back"] is True
    assert record["edited_fraction"] == round(float((draw_mask(5, SIZE) != hair_swapped(5)).mean()), 4)
    outside = ~dilate(draw_mask(5, SIZE) != hair_swapped(5), 2)
    assert np.array_equal(np.asarray(out)[outside], face(5)[outside])


def test_cli_edit_errors_are_one_line(tiny_run, tmp_path):
    from face_mogle.data.masks import save_label_map

    Image.fromarray(face(6)).save(tmp_path / "face.png")
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "wide.png")
    save_label_map(draw_mask(6, SIZE), tmp_path / "mask.png")
    base = ["--run", tiny_run, "--device", "cpu", "--output", tmp_path / "o.png"]
    cases = [
        (["--image", tmp_path / "wide.png", "--source_mask", tmp_path / "mask.png"], "must be square"),
        (["--source_mask", tmp_path / "mask.png", "--mask", tmp_path / "mask.png"], "--source_mask is an editing option"),
        (["--image", tmp_path / "face.png", "--source_mask", tmp_path / "mask.png", "--regions", "beard"], "unknown class 'beard'"),
        (["--image", tmp_path / "face.png", "--source_mask", tmp_path / "mask.png", "--strength", "1.5"], "--strength must be in (0, 1]"),
        # the noise inversion never reads a source prompt: refused, not silently ignored
        (["--image", tmp_path / "face.png", "--source_mask", tmp_path / "mask.png", "--source_prompt", "A face."],
         "--source_prompt is read only by --inversion ode"),
        # no --source_mask and no parser weights: say what to pass
        (["--image", tmp_path / "face.png", "--weights_dir", tmp_path / "none"], "pass the face's own mask with --source_mask"),
    ]
    for extra, message in cases:
        r = cli(*base, *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (extra, r.stderr)


def test_cli_names_the_unread_words_of_the_source_prompt(tiny_run, tmp_path):
    """--inversion ode reads --source_prompt: words its encoder drops are named and recorded, like the
    prompt's; the noise inversion records no source prompt (it reads none)."""
    from face_mogle.data.masks import save_label_map

    Image.fromarray(face(7)).save(tmp_path / "face.png")
    save_label_map(draw_mask(7, SIZE), tmp_path / "mask.png")
    base = ["--run", tiny_run, "--image", tmp_path / "face.png", "--source_mask", tmp_path / "mask.png",
            "--regions", "hair", "--prompt", "She has red hair.", "--device", "cpu", "--steps", "2"]
    r = cli(*base, "--inversion", "ode", "--source_prompt", "She has \u4e2d\u6587 hair.", "--output", tmp_path / "ode.png")
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "ode.json").read_text())
    assert record["source_prompt"] == "She has \u4e2d\u6587 hair." and record["inversion"] == "ode"
    assert record["unread_words"] == [] and record["source_unread_words"] == ["\u4e2d\u6587"]
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "'\u4e2d\u6587' of --source_prompt" in warnings[0], r.stderr
    r = cli(*base, "--output", tmp_path / "noise.png")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    record = json.loads((tmp_path / "noise.json").read_text())
    assert record["inversion"] == "noise" and record["source_prompt"] is None and record["source_unread_words"] == []


def test_cli_parses_the_source_mask_with_the_runs_parser(tiny_run, tmp_path):
    """No --parser: a run trained on SynthFaces (data.parser: synthfaces, as the shipped model's
    config says) parses the face with SynthFaces' exact parser."""
    from face_mogle.data.masks import load_label_map
    from face_mogle.data.synthetic import parse, render

    s = render((0, 7), SIZE * 2)
    Image.fromarray(s.image).save(tmp_path / "face.png")
    r = cli("--run", tiny_run, "--image", tmp_path / "face.png", "--prompt", "A face.",
            "--regions", "hair", "--output", tmp_path / "out.png", "--device", "cpu", "--size", SIZE * 2,
            "--set", f"sample.max_size={SIZE * 2}", "--set", "data.parser=synthfaces")
    assert r.returncode == 0, r.stderr
    parsed = load_label_map(tmp_path / "out_source_mask.png")
    assert np.array_equal(parsed, parse(s.image))
    assert json.loads((tmp_path / "out.json").read_text())["source_mask"].startswith("parsed by synthfaces")


def test_cli_help_states_the_library_defaults():
    """inference.py names the editing defaults in --help without importing torch: keep them equal."""
    from face_mogle import editing

    r = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--help"], capture_output=True, text=True)
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert f"(default: {editing.DEFAULT_STRENGTH})" in text
    assert f"(default: {editing.DEFAULT_INVERSION})" in text
    assert f"(default: {editing.DEFAULT_MARGIN})" in text
    assert editing.DEFAULT_PASTE_BACK and "--no_paste_back" in text


def test_cli_reads_a_phone_photo_upright_and_refuses_a_declared_giant(tiny_run, tmp_path):
    from face_mogle.data.masks import save_label_map
    from test_image_files import declared_png

    big = SIZE * 2
    upright = np.asarray(Image.fromarray(face(5)).resize((big, big), Image.NEAREST))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown upright
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", quality=100,
                                                                       subsampling=0, exif=exif)
    save_label_map(draw_mask(5, SIZE), tmp_path / "mask.png")
    save_label_map(hair_swapped(5), tmp_path / "edited.png")
    r = cli("--run", tiny_run, "--image", tmp_path / "phone.jpg", "--source_mask", tmp_path / "mask.png",
            "--mask", tmp_path / "edited.png", "--output", tmp_path / "out.png", "--device", "cpu", "--steps", "2",
            "--margin", "1")
    assert r.returncode == 0, r.stderr
    out = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    assert out.shape == (big, big, 3) and f"{big}x{big} (generated at {SIZE})" in r.stdout
    outside = ~dilate(np.repeat(np.repeat(draw_mask(5, SIZE) != hair_swapped(5), 2, 0), 2, 1), 4)
    assert np.abs(out[outside] - upright[outside]).max() < 16  # upright: the JPEG's own error only
    assert json.loads((tmp_path / "out.json").read_text())["output_size"] == big
    declared_png(tmp_path / "giant.png", 10000, 10000)
    r = cli("--run", tiny_run, "--image", tmp_path / "giant.png", "--source_mask", tmp_path / "mask.png",
            "--output", tmp_path / "o.png", "--device", "cpu")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "giant.png: declares 10000x10000 pixels, more than the 16777216 allowed" in r.stderr
    wide = tmp_path / "wide.png"
    save_label_map(np.zeros((SIZE, SIZE + 8), np.uint8), wide)
    r = cli("--run", tiny_run, "--mask", wide, "--prompt", "x", "--output", tmp_path / "o.png", "--device", "cpu")
    assert r.returncode == 2 and "must be square" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
