"""SynthFaces identities: sets made without them are unchanged (checksum regression reference), renders
of one identity share its parameters and nothing else, whole identities in the test split, the CLI."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from face_mogle.data import synthfaces as sf
from face_mogle.data.synthfaces.identity import IDENTITY_PARAMS, identity_params

ROOT = Path(__file__).resolve().parents[1]
# The regression reference: sha256 of every file write_dataset(out, 6, 64, seed=0) wrote, without and
# with expressions, recorded with the generator as it was before identities were added.
CHECKSUMS = json.loads((ROOT / "tests" / "fixtures" / "synthfaces_sha256.json").read_text())
# Drawn per render, never per person (continuous, so two renders never share them by chance).
PER_RENDER = ("tilt_deg", "scale", "shift", "hair_out_x", "hair_out_y", "hairline", "neck_w", "shoulder_w",
              "wave_phase")


def checksums(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("expressions", [False, True])
def test_sets_without_identities_are_bit_identical(tmp_path, expressions):
    out = sf.write_dataset(tmp_path / "s", 6, 64, seed=0, progress=False, expressions=expressions)
    assert checksums(out) == CHECKSUMS["expressions" if expressions else "plain"]


def test_identity_params_are_their_own_draw():
    a, b = identity_params(0, 3), identity_params(0, 3)
    assert a == b and set(a) == set(IDENTITY_PARAMS)
    assert identity_params(0, 4) != a and identity_params(1, 3) != a
    assert a["gender"] in ("female", "male") and a["skin_tone"] in sf.SKIN_TONES and a["eye_color"] in sf.EYE_COLORS
    with pytest.raises(ValueError, match="identity index"):
        identity_params(0, -1)


def test_renders_of_an_identity_share_its_parameters_only():
    k = 4
    for j in range(10):
        person = identity_params(0, j)
        renders = [sf.render((0, j * k + r), 64, expressions=True, identity=person) for r in range(k)]
        for s in renders:
            assert {p: s.params[p] for p in IDENTITY_PARAMS} == person
            assert s.attributes["gender"] == person["gender"] and s.attributes["skin_tone"] == person["skin_tone"]
        for name in PER_RENDER:
            values = [json.dumps(s.params[name]) for s in renders]
            assert len(set(values)) == k, (j, name, values)
    # the same sample without identity keeps its own face: identity is a replacement, not a new stream
    plain = sf.render((0, 0), 64)
    other = sf.render((0, 0), 64, identity=identity_params(0, 0))
    assert plain.params["tilt_deg"] == other.params["tilt_deg"] and plain.params["a"] != other.params["a"]
    with pytest.raises(ValueError, match="unknown face parameters in identity"):
        sf.render((0, 0), 64, identity={"beard": 1})


def test_hair_style_follows_the_identitys_gender():
    styles = {"female": [], "male": []}
    for j in range(150):
        person = identity_params(2, j)
        styles[person["gender"]] += [sf.render((2, 3 * j + r), 32, identity=person).params["hair_style"]
                                     for r in range(3)]
    # the generator's style odds: bob 0.25 for women, 0.02 for men; buzz 0.03 for women, 0.25 for men
    share = {g: {s: v.count(s) / len(v) for s in ("bob", "buzz")} for g, v in styles.items()}
    assert share["female"]["bob"] > 0.15 and share["male"]["bob"] < 0.08, share
    assert share["male"]["buzz"] > 0.15 and share["female"]["buzz"] < 0.08, share


def test_write_dataset_with_identities(tmp_path):
    out = sf.write_dataset(tmp_path / "id", None, 64, seed=4, test_fraction=0.4, progress=False,
                           expressions=True, identities=5, per_identity=3)
    attrs = json.loads((out / "attributes.json").read_text())
    assert [attrs[str(i)]["identity"] for i in range(15)] == [i // 3 for i in range(15)]
    assert all(a["expression"] in sf.EXPRESSIONS for a in attrs.values())
    # 0.4 of 5 identities = 2 whole identities held out: ids 9..14
    assert (out / "splits" / "test.txt").read_text().split() == [str(i) for i in range(9, 15)]
    assert (out / "splits" / "train.txt").read_text().split() == [str(i) for i in range(9)]
    train_ids = {attrs[i]["identity"] for i in (out / "splits" / "train.txt").read_text().split()}
    test_ids = {attrs[i]["identity"] for i in (out / "splits" / "test.txt").read_text().split()}
    assert train_ids == {0, 1, 2} and test_ids == {3, 4}
    # the files are render k of identity j drawn from (seed, j * K + k)
    from PIL import Image

    s = sf.render((4, 7), 64, expressions=True, identity=identity_params(4, 2))
    with Image.open(out / "mask" / "7.png") as img:
        np.testing.assert_array_equal(np.asarray(img), s.labels)
    assert (out / "text" / "7.txt").read_text().splitlines() == s.captions
    for kwargs, needle in (({"identities": 2}, "go together"), ({"identities": 2, "per_identity": 0}, "positive"),
                           ({"identities": 2, "per_identity": 2, "num": 5}, r"identities \* per_identity = 4")):
        args = {"num": None, **kwargs}
        with pytest.raises(ValueError, match=needle):
            sf.write_dataset(tmp_path / "bad", args.pop("num"), 64, progress=False, **args)


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "script" / "make_synthfaces.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_identities(tmp_path):
    out = tmp_path / "ids"
    res = run_cli("--out", out, "--identities", 4, "--per_identity", 2, "--size", 64, "--expressions",
                  "--test_fraction", 0.25, "--quiet")
    assert res.returncode == 0, res.stderr
    attrs = json.loads((out / "attributes.json").read_text())
    assert len(attrs) == 8 and [attrs[str(i)]["identity"] for i in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (out / "splits" / "test.txt").read_text().split() == ["6", "7"]
    assert "8 SynthFaces images with expressions of 4 identities x 2" in res.stdout and "6 train, 2 test" in res.stdout
    for args, needle in (
        (("--identities", 4, "--per_identity", 2, "--num", 9), "--num 9 conflicts with --identities 4 x --per_identity 2"),
        (("--identities", 4), "--identities and --per_identity go together"),
        (("--per_identity", 2), "--identities and --per_identity go together"),
        (("--identities", 0, "--per_identity", 2), "must be positive"),
    ):
        res = run_cli("--out", tmp_path / "new", *args)
        assert res.returncode == 2, args
        errors = [line for line in res.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and needle in errors[0], res.stderr
    assert not (tmp_path / "new").exists()
    # --num equal to the product is accepted
    res = run_cli("--out", tmp_path / "eq", "--identities", 2, "--per_identity", 2, "--num", 4, "--size", 64, "--quiet")
    assert res.returncode == 0, res.stderr
