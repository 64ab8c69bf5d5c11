"""Training with identity (issue #31): each face conditioned on another image of the same person, the
projector learning beside LoRA and MoGLE, and the finished run sampling from a reference face."""

from pathlib import Path

import numpy as np
import pytest
import torch

from face_mogle.config import load_config
from face_mogle.identity import EncoderConfig, SynthFacesNet, save_encoder
from face_mogle.training.identity_pairs import IdentityPairs

ROOT = Path(__file__).resolve().parents[1]
ENC = EncoderConfig(width=8, blocks=3, dim=24)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from face_mogle.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("ids")
    write_dataset(root / "data", None, 64, seed=0, test_fraction=0.25, progress=False, identities=4, per_identity=3)
    torch.manual_seed(0)
    save_encoder(SynthFacesNet(ENC), ENC, root / "encoder")
    return root


def test_references_are_other_images_of_the_same_person():
    person = {0: 7, 1: 7, 2: 7, 3: 8, 4: 8, 5: 9}  # person 9 has a single image: no other reference
    emb = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 4)  # row k holds k
    pairs = IdentityPairs(list(range(6)), person, emb, seed=0, drop_prob=0.25)
    kept = 0
    for step in range(50):
        ident, keep = pairs.batch([0, 1, 2, 3, 4, 5], step, 0, 0)
        ref = ident[:, 0].long().tolist()
        for target, r, k in zip(range(6), ref, keep.tolist()):
            if k:
                assert r != target and person[r] == person[target]
        assert not keep[5]
        kept += int(keep[:5].sum())
    assert 0.6 < kept / 250 < 0.9  # drop_prob 0.25 of those that have a reference
    a, b = pairs.batch([0, 3], 11, 1, 0), pairs.batch([0, 3], 11, 1, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # a resume repeats the references


def test_an_identity_stage_trains_the_projector_and_the_run_samples_from_a_face(data, tmp_path):
    from accelerate.state import AcceleratorState

    from face_mogle.pipeline import FaceMoGLEPipeline
    from face_mogle.training.trainer import Trainer, TrainingError

    AcceleratorState._reset_state(reset_partial_state=True)
    base = [f"data.root={data / 'data'}", f"train.runs_dir={tmp_path / 'runs'}", "data.size=32", "data.condition_size=32",
            "train.batch_size=4", "max_sequence_length=48", "train.sample_interval=0", "name=id",
            "train.optimizer.type=adamw", "train.optimizer.lr=0.01", 'train.mixed_precision="no"',
            "train.save_interval=100", "data.parser=synthfaces", "model.identity.encoder=synthfaces",
            f"model.identity.weights={data / 'encoder'}", f"model.identity.embed_dim={ENC.dim}",
            "data.drop_identity_prob=0.25", "train.max_steps=6"]
    trainer = Trainer(load_config(ROOT / "configs" / "tiny.yaml", base))
    model = trainer.acc.unwrap_model(trainer.model)
    before = {n: p.detach().clone() for n, p in model.identity.named_parameters()}
    assert trainer.identity_pairs.embeddings.shape == (9, ENC.dim)  # the 9 training images (3 people x 3)
    trainer.train()
    assert all(not torch.equal(p.detach(), before[n]) for n, p in model.identity.named_parameters())
    run = tmp_path / "runs" / "id"
    assert (run / "identity.safetensors").is_file()

    pipe = FaceMoGLEPipeline.from_run(run)
    face = data / "data" / "face" / "0.jpg"
    out = pipe(["a face", "a face"], None, seeds=[1, 1], identities=[face, None], steps=2)
    assert out.settings["modes"] == ["text-only+identity", "text-only"]
    assert not np.array_equal(np.asarray(out.images[0]), np.asarray(out.images[1]))

    # a later stage starts from this run's LoRA and MoGLE (train.init_from), with a fresh projector
    from face_mogle.models.transformer import lora_state_dict

    AcceleratorState._reset_state(reset_partial_state=True)
    again = Trainer(load_config(ROOT / "configs" / "tiny.yaml", base + ["name=id3", f"train.init_from={run}"]))
    m2 = again.acc.unwrap_model(again.model)
    want = lora_state_dict(pipe.model.transformer)
    assert all(torch.equal(v, want[k]) for k, v in lora_state_dict(m2.transformer).items())
    assert all(torch.equal(a, b) for a, b in zip(m2.mogle.state_dict().values(), pipe.model.mogle.state_dict().values()))
    assert not torch.equal(m2.identity.norm.weight, pipe.model.identity.norm.weight) or not torch.equal(
        m2.identity.proj[0].weight, pipe.model.identity.proj[0].weight)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(TrainingError, match="train.init_from .*missing"):
        Trainer(load_config(ROOT / "configs" / "tiny.yaml", base + ["name=id4", f"train.init_from={tmp_path}"]))

    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(TrainingError, match=f"embed_dim is 512, but the synthfaces encoder .* makes {ENC.dim}-d"):
        Trainer(load_config(ROOT / "configs" / "tiny.yaml", base + ["model.identity.embed_dim=512", "name=id2"]))
    AcceleratorState._reset_state(reset_partial_state=True)
