"""`train.loss_weighting: regions`: per-token loss weights from the label maps, and the trainer using them."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from face_mogle.config import ConfigError, load_config
from face_mogle.data.masks import load_label_map
from face_mogle.data.synthetic import write_dataset
from face_mogle.encoding import pack
from face_mogle.labels import NUM_CLASSES
from face_mogle.training import region_weights
from face_mogle.training.region_weights import class_weights, pixel_weights, token_weights, weighted_flow_matching_loss

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, 12, 64, seed=1, progress=False)
    return root


def maps(data, ids):
    return {i: torch.from_numpy(load_label_map(data / "mask" / f"{i}.png", SIZE).astype(np.int64)) for i in ids}


def test_token_weights_equal_a_reference_in_packed_token_order(data):
    ids = [0, 3, 5]
    got = token_weights(data, ids, SIZE, token_pixels=8, progress=False)
    labels = maps(data, ids)
    counts = torch.bincount(torch.stack(list(labels.values())).flatten(), minlength=NUM_CLASSES)
    per_class = class_weights(counts)
    # reference: pixel weights → mean over each 4×4 latent cell → FLUX's 2×2 packing → mean per token
    ref = {}
    for i, m in labels.items():
        w = pixel_weights(m[None], per_class)[:, None]
        ref[i] = pack(F.avg_pool2d(w, 4)).mean(-1)[0]
    mean = torch.cat(list(ref.values())).mean()
    assert set(got) == set(ids)
    for i in ids:
        assert got[i].shape == (16,)  # (32 / 8)² tokens
        torch.testing.assert_close(got[i], ref[i] / mean)
    assert torch.cat(list(got.values())).mean().item() == pytest.approx(1.0, rel=1e-6)


def test_rare_classes_and_edges_weigh_more():
    m = torch.zeros(1, 16, 16, dtype=torch.long)
    m[:, 2:14, 2:14] = 1  # skin
    m[:, 6:8, 4:6] = 4  # a 2×2 eye
    per_class = class_weights(torch.bincount(m.flatten(), minlength=NUM_CLASSES))
    w = pixel_weights(m, per_class)[0]
    # interior pixels: (max frequency / frequency)^½, the eye capped at CAP; an edge pixel counts twice
    # (skin 140 pixels, background 112, eye 4; the eye's pixels all lie on its edge)
    assert w[9, 9].item() == pytest.approx(1.0) and w[0, 0].item() == pytest.approx((140 / 112) ** 0.5)
    assert w[6, 4].item() == pytest.approx(2 * min(region_weights.CAP, (140 / 4) ** 0.5))
    assert (w[1, 8] / w[0, 0]).item() == pytest.approx(2.0)  # background pixel next to the skin
    tokens = F.avg_pool2d(w[None, None], 8).flatten()
    assert tokens[0] > tokens[3]  # the token holding the eye outweighs a mostly-background one


def test_weighted_loss_reference_and_uniform_weights():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    w = torch.rand(2, 5, generator=g)
    ref = sum(w[b, t] * ((pred[b, t] - target[b, t]) ** 2).sum() for b in range(2) for t in range(5)) / 30
    torch.testing.assert_close(weighted_flow_matching_loss(pred, target, w), ref)
    torch.testing.assert_close(weighted_flow_matching_loss(pred, target, torch.ones(2, 5)), F.mse_loss(pred, target))


def cfg_for(data, runs, **extra):
    overrides = [
        f"data.root={data}", f"train.runs_dir={runs}", f"data.size={SIZE}", f"data.condition_size={SIZE}",
        "data.train_split=0-7", "train.batch_size=2", "max_sequence_length=48", "train.sample_interval=0", "name=t",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(ROOT / "configs" / "tiny.yaml", overrides)


def test_config_default_is_the_papers_and_unknown_values_are_refused(data, tmp_path):
    assert cfg_for(data, tmp_path).train.loss_weighting == "none"
    assert load_config(ROOT / "configs" / "face-mogle.yaml").train.loss_weighting == "none"
    with pytest.raises(ConfigError, match="train.loss_weighting"):
        cfg_for(data, tmp_path, **{"train.loss_weighting": "eyes"})


def test_trainer_weighs_each_sample_by_its_own_face(data, tmp_path, monkeypatch):
    from face_mogle.training import trainer as trainer_module
    from face_mogle.training.trainer import Trainer

    tr = Trainer(cfg_for(data, tmp_path, **{"train.loss_weighting": "regions", "train.max_steps": 1}))
    assert sorted(tr.token_weights) == list(range(8))
    torch.testing.assert_close(tr.token_weights[4], token_weights(data, list(range(8)), SIZE, 8, progress=False)[4])
    seen = {}

    def spy(pred, target, weights):
        seen.update(pred=pred, target=target, weights=weights)
        return weighted_flow_matching_loss(pred, target, weights)

    monkeypatch.setattr(trainer_module, "weighted_flow_matching_loss", spy)
    batch = next(iter(tr.loader))
    with torch.no_grad():
        weighted = tr._loss(batch, 0, 0).item()
    assert torch.equal(seen["weights"], torch.stack([tr.token_weights[int(i)] for i in batch["id"]]))
    assert seen["weights"].shape == seen["pred"].shape[:2]
    plain = F.mse_loss(seen["pred"], seen["target"]).item()
    tr.token_weights = None  # the same step, unweighted: the same draws, another loss
    with torch.no_grad():
        assert tr._loss(batch, 0, 0).item() == pytest.approx(plain, rel=1e-5)
    assert weighted != pytest.approx(plain, rel=1e-3)
    losses = Trainer(cfg_for(data, tmp_path / "b", **{"train.loss_weighting": "regions", "train.max_steps": 2})).train()
    assert len(losses) == 2 and all(np.isfinite(losses))
