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
