"""Identity in the commands (issue #31 items 6 and 9): inference.py --identity FACE and test.py
--identity_root DIR on a tiny run with identity tokens and its own SynthFaces encoder; real reference
faces (SynthFaces renders) go through parse → align → encode; bad input is one line."""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from face_mogle.generate_split import GenerationError, generate_split, image_seed
from face_mogle.identity.errors import IdentityError
from face_mogle.pipeline import FaceMoGLEPipeline
from sampling_helpers import SIZE, draw_mask, make_identity_run, save_reference_face
from test_cli_sampling import ROOT, assert_one_line_error, load_script, run_cli

IDS = [7, 8, 9]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The identity run, reference faces (renders), a grey picture with no face, a mask, a data root."""
    root = tmp_path_factory.mktemp("identity-cli")
    run = make_identity_run(root / "id")
    refs = root / "refs"
    refs.mkdir()
    for k, i in enumerate(IDS):
        save_reference_face(refs / f"{i}.png", seed=10 + k)
    grey = root / "grey.png"
    Image.new("RGB", (96, 96), (128, 128, 128)).save(grey)
    mask = root / "mask.png"
    Image.fromarray(draw_mask(0, 64), "L").save(mask)
    data = root / "data"
    (data / "mask").mkdir(parents=True)
    for i in IDS:
        Image.fromarray(draw_mask(i, 64), "L").save(data / "mask" / f"{i}.png")
    (data / "text.json").write_text(json.dumps({f"{i}.jpg": [f"Face {i} has red hair."] for i in IDS}))
    return dict(run=run, refs=refs, ref=refs / f"{IDS[0]}.png", grey=grey, mask=mask, data=data,
                encoder=(root / "id" / "encoder").resolve())


@pytest.fixture(scope="module")
def id_pipe(files):
    return FaceMoGLEPipeline.from_run(files["run"])


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# inference.py --identity


def test_inference_with_identity_writes_the_image_and_records_the_reference(files, id_pipe, tmp_path, capsys):
    script = load_script("inference")
    base = ["--run", str(files["run"]), "--seed", "4", "--steps", "2", "--size", str(SIZE)]
    # with a prompt, no mask: text + identity
    out = tmp_path / "prompted.png"  # (a text.json beside it would make the folder look like a data set)
    assert script.main([*base, "--prompt", "a face", "--identity", str(files["ref"]), "--output", str(out)]) == 0
    assert "text-only+identity" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["identity"] == str(files["ref"]) and meta["identity_encoder"] == "synthfaces"
    assert meta["identity_weights"] == str(files["encoder"]) and meta["mode"] == "text-only+identity"
    # the very image the pipeline makes with that reference face
    want = id_pipe("a face", None, seeds=[4], steps=2, size=SIZE, identities=[str(files["ref"])]).images[0]
    assert np.array_equal(pixels(out), np.asarray(want, dtype=np.float64))
    # the same command without --identity: another face (the identity tokens act)
    plain = tmp_path / "plain.png"
    assert script.main([*base, "--prompt", "a face", "--output", str(plain)]) == 0
    meta = json.loads(plain.with_suffix(".json").read_text())
    assert meta["identity"] is None and meta["identity_encoder"] is None and meta["mode"] == "text-only"
    assert np.abs(pixels(out) - pixels(plain)).mean() > 0.1
    # with a mask and a prompt; and the identity alone (no prompt, no mask)
    out = tmp_path / "masked.png"
    assert script.main([*base, "--prompt", "a face", "--mask", str(files["mask"]), "--identity", str(files["ref"]),
                        "--output", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["mode"] == "mask+text+identity"
    out = tmp_path / "alone.png"
    assert script.main([*base, "--identity", str(files["ref"]), "--output", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["mode"] == "unconditional+identity"
    assert Image.open(out).size == (SIZE, SIZE)


def test_inference_identity_errors_are_one_line(files, tiny_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "o.png"
    # a run trained without identity: refused before the model loads (a real process: no traceback)
    res = run_cli(ROOT / "inference.py", "--run", tiny_run, "--prompt", "x", "--identity", files["ref"], "--output", out)
    assert res.returncode == 2
    assert_one_line_error(res.stderr, "--identity", "trained without identity", str(tiny_run))
    script = load_script("inference")
    run = str(files["run"])
    for args, needles in [
        (["--identity", str(tmp_path / "nobody.png")], ("--identity", "nobody.png: image file not found")),
        (["--identity", str(files["grey"])], ("grey.png: no face found",)),  # found by the encoder, after loading
        (["--identity", str(files["ref"]), "--image", str(files["ref"]), "--mask", str(files["mask"])],
         ("--identity", "does not apply to an edit")),
        (["--identity", str(files["ref"]), "--output", str(files["ref"])], ("is the input --identity",)),
    ]:
        capsys.readouterr()
        args = [*args, "--output", str(out)] if "--output" not in args else args
        assert script.main(["--run", run, "--prompt", "x", "--steps", "1", *args]) == 2, args
        assert_one_line_error(capsys.readouterr().err, *needles)
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert Image.open(files["ref"]).size == (96, 96)  # the reference intact


def test_inference_help_names_identity():
    res = run_cli(ROOT / "inference.py", "--help", timeout=60)
    text = " ".join(res.stdout.split())
    assert res.returncode == 0 and "--identity FACE" in text and "Only runs trained with identity" in text


# ---------------------------------------------------------------------------------------------
# test.py --identity_root


def test_test_py_generates_given_people(files, id_pipe, tmp_path, capsys):
    script = load_script("test")
    base = ["--run", str(files["run"]), "--root", str(files["data"]), "--split", "all", "--quiet", "--seed", "2",
            "--batch_size", "2"]
    out = tmp_path / "people"
    assert script.main([*base, "--output_dir", str(out), "--identity_root", str(files["refs"])]) == 0
    assert sorted(p.name for p in (out / "face").iterdir()) == [f"{i}.jpg" for i in IDS]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity_root"] == str(files["refs"].resolve()) and manifest["identity_encoder"] == "synthfaces"
    assert manifest["done"] == IDS and sorted(manifest["files"]) == sorted(
        [f"face/{i}.jpg" for i in IDS] + [f"text/{i}.txt" for i in IDS])
    # each id is made with its own reference: the bytes of the pipeline's image of (caption, mask, seed, face)
    for i in (IDS[0], IDS[2]):
        img = id_pipe(f"Face {i} has red hair.", str(files["data"] / "mask" / f"{i}.png"), seeds=[image_seed(2, i)],
                      identities=[str(files["refs"] / f"{i}.png")]).images[0]
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=95)
        assert (out / "face" / f"{i}.jpg").read_bytes() == buffer.getvalue()

    # resuming with another identity root, or none, is refused like any other setting change
    other = tmp_path / "other-refs"
    shutil.copytree(files["refs"], other)
    capsys.readouterr()
    assert script.main([*base, "--output_dir", str(out), "--identity_root", str(other)]) == 2
    assert_one_line_error(capsys.readouterr().err, "other settings", "identity_root", "other-refs")
    assert script.main([*base, "--output_dir", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, "other settings", "identity_root", "None")
    # the same root: nothing to do
    assert script.main([*base, "--output_dir", str(out), "--identity_root", str(files["refs"])]) == 0
    assert "3 already in" in capsys.readouterr().out


def test_test_py_identity_errors_come_before_any_work(files, id_pipe, pipe, tmp_path, capsys):  # noqa: F811
    kw = dict(batch_size=2, seed=2, progress=False, log=lambda *a: None)
    # ids without a reference: all named at once, nothing written
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(files["refs"] / f"{IDS[1]}.png", partial / f"{IDS[1]}.png")
    (partial / "notes.txt").write_text("not a face")
    out = tmp_path / "out"
    with pytest.raises(GenerationError, match=rf"no reference face for 2 of the 3 ids to generate, e\.g\. {IDS[0]}, {IDS[2]} "):
        generate_split(id_pipe, files["data"], "all", out, identity_root=partial, **kw)
    assert not out.exists()
    with pytest.raises(GenerationError, match="folder not found"):
        generate_split(id_pipe, files["data"], "all", out, identity_root=tmp_path / "nowhere", **kw)
    # two references for one id
    double = tmp_path / "double"
    shutil.copytree(files["refs"], double)
    shutil.copy(files["refs"] / f"{IDS[1]}.png", double / f"{IDS[1]}.jpg")
    with pytest.raises(GenerationError, match=rf"more than one reference face, e\.g\. {IDS[1]}\.jpg, {IDS[1]}\.png"):
        generate_split(id_pipe, files["data"], "all", out, identity_root=double, **kw)
    # a run without identity
    with pytest.raises(GenerationError, match="trained without identity"):
        generate_split(pipe, files["data"], "all", out, identity_root=files["refs"], **kw)
    assert not out.exists()
    # a reference with no face: stopped before the first image, naming the file
    faceless = tmp_path / "faceless"
    shutil.copytree(files["refs"], faceless)
    shutil.copy(files["grey"], faceless / f"{IDS[2]}.png")
    with pytest.raises(IdentityError, match=rf"{IDS[2]}\.png: no face found"):
        generate_split(id_pipe, files["data"], "all", out, identity_root=faceless, **kw)
    assert list((out / "face").iterdir()) == []
    # through test.py: one line
    capsys.readouterr()
    assert load_script("test").main(["--run", str(files["run"]), "--root", str(files["data"]), "--split", "all",
                                     "--output_dir", str(tmp_path / "o2"), "--identity_root", str(double), "--quiet"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--identity_root", "more than one reference face")


def test_test_py_help_names_identity_root():
    res = run_cli(ROOT / "test.py", "--help", timeout=60)
    text = " ".join(res.stdout.split())
    assert res.returncode == 0 and "--identity_root DIR" in text and "DIR/{id}.png" in text and "another DIR is refused" in text
