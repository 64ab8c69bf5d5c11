"""bench/identity.py (issue #31): identity retrieval, distance, cosine, copy-paste, expression and
validity per mode, on a tiny identity run (random LoRA, MoGLE and projector; a random SynthFaces
encoder) and a tiny identity data set; a run without identity refuses the identity modes in one line."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from face_mogle.data.synthfaces import write_dataset
from face_mogle.eval.identity_judge import identity_features, retrieval_top1
from face_mogle.identity import EncoderConfig, SynthFacesNet, save_encoder

from sampling_helpers import make_run

ROOT = Path(__file__).resolve().parents[1]
ENC = EncoderConfig(width=8, blocks=3, dim=16)
PEOPLE, PER, HELD_OUT = 8, 3, 6  # the last 6 of 8 identities are the test split
SIZE = 96  # the judge's smallest size here: at 64 px its reference renders lose eyes
FIGURES = ("top1", "judged", "judge_distance", "encoder_cosine", "encoder_faces", "prompt_color", "prompt_color_cases",
           "expression", "expression_cases", "face_validity", "validity_failures", "images", "seconds")


def bench():
    spec = importlib.util.spec_from_file_location("bench_identity", ROOT / "bench" / "identity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-identity")
    data = write_dataset(tmp / "data", None, SIZE, seed=0, test_fraction=HELD_OUT / PEOPLE, progress=False,
                         expressions=True, identities=PEOPLE, per_identity=PER)
    torch.manual_seed(0)
    save_encoder(SynthFacesNet(ENC), ENC, tmp / "encoder")
    run = make_run(tmp / "run", size=SIZE, overrides=[
        "data.parser=synthfaces", "model.identity.encoder=synthfaces", f"model.identity.weights={tmp / 'encoder'}",
        f"model.identity.embed_dim={ENC.dim}", "model.identity.num_tokens=2"])
    plain = make_run(tmp / "plain", size=SIZE)
    return tmp, data, run, plain


def judge_top1(data: Path, people: int) -> float:
    """The judge's own retrieval of the target renders among the references, first `people` held-out
    identities: identity j's renders are ids j*PER .. j*PER+PER-1, the reference the first, the target the second."""
    first = PEOPLE - HELD_OUT
    read = lambda i: np.asarray(Image.open(data / "face" / f"{i}.jpg").convert("RGB"))  # noqa: E731
    gallery = [identity_features(read(j * PER)) for j in range(first, first + people)]
    queries = [identity_features(read(j * PER + 1)) for j in range(first, first + people)]
    return retrieval_top1(queries, gallery, np.arange(people))


def in_range(r: dict) -> None:
    for key in ("top1", "judged", "encoder_faces", "prompt_color", "expression", "face_validity"):
        assert math.isnan(r[key]) or 0.0 <= r[key] <= 1.0, (key, r[key])
    assert math.isnan(r["judge_distance"]) or r["judge_distance"] >= 0
    assert math.isnan(r["encoder_cosine"]) or -1.0001 <= r["encoder_cosine"] <= 1.0001


def test_every_mode_on_an_identity_run(setup, tmp_path, capsys):
    _, data, run, _ = setup
    out = tmp_path / "id.json"
    assert bench().main(["--run", str(run), "--root", str(data), "--steps", "2", "--batch_size", "6",
                         "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["identities"] == HELD_OUT and got["steps"] == 2
    first = PEOPLE - HELD_OUT
    assert got["people"] == [{"identity": j, "reference": j * PER, "target": j * PER + 1}
                             for j in range(first, PEOPLE)]
    res = got["results"]
    assert list(res) == ["text+identity", "mask+text+identity", "text", "reference"]
    for mode, r in res.items():
        assert set(FIGURES) <= set(r), mode
        assert r["images"] == HELD_OUT and r["expression_cases"] == HELD_OUT
        in_range(r)
    # which caption colours differ from the reference's depends on the data alone, not on the images
    cases = {r["prompt_color_cases"] for r in res.values()}
    assert len(cases) == 1 and cases.pop() > 0
    ref = res["reference"]
    assert ref["top1"] == pytest.approx(judge_top1(data, HELD_OUT))
    assert ref["top1"] >= 0.5 and ref["judged"] == 1.0  # chance 1/6
    assert ref["prompt_color"] == 1.0  # a real render shows its own caption's colours
    assert ref["encoder_faces"] == 1.0 and not math.isnan(ref["encoder_cosine"])
    # the identity tokens change the image: same seeds, another judge distance
    assert res["text+identity"]["judge_distance"] != res["text"]["judge_distance"]
    table = capsys.readouterr().out
    assert "| mode | top-1 (chance 0.167)" in table
    assert all(f"| {m} |" in table for m in res)


def test_a_run_without_identity_measures_the_baseline_and_refuses_identity_in_one_line(setup, tmp_path):
    _, data, _, plain = setup
    with pytest.raises(SystemExit) as err:
        bench().main(["--run", str(plain), "--root", str(data), "--modes", "text,text+identity", "--steps", "2"])
    msg = str(err.value.code)
    assert "\n" not in msg and msg.startswith(f"error: --run {plain} has no identity") and "text+identity" in msg

    out = tmp_path / "base.json"
    assert bench().main(["--run", str(plain), "--root", str(data), "--modes", "text,reference", "--num", "3",
                         "--steps", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert list(res) == ["text", "reference"]
    assert res["reference"]["top1"] == pytest.approx(judge_top1(data, 3))
    for r in res.values():
        in_range(r)
        assert math.isnan(r["encoder_cosine"])  # no encoder in a run without identity


def test_data_without_identities_is_one_line(tmp_path):
    data = write_dataset(tmp_path / "plain", 4, 32, seed=0, test_fraction=0.5, progress=False)
    with pytest.raises(SystemExit) as err:
        bench().main(["--root", str(data), "--modes", "text"])
    msg = str(err.value.code)
    assert "\n" not in msg and "attributes.json" in msg and "--identities" in msg


def test_the_judge_refuses_faces_too_small_in_one_line():
    module = bench()
    with pytest.raises(module.BenchError, match="identity judge cannot measure faces at 64 px"):
        module.check_judge(64)
