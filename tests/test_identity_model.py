"""Identity tokens in the model (issue #31): a reference embedding → K tokens in the condition or the
text stream. With no identity given a run samples exactly as without the identity projector; an
identity changes the image; batches mixing faces with and without identity equal their parts."""

import shutil

import numpy as np
import pytest
import torch

from face_mogle.config import load_config, save_config
from face_mogle.identity.errors import IdentityError
from face_mogle.models.builder import load_backbone
from face_mogle.models.face_mogle import IDENTITY_FILE, FaceMoGLE
from face_mogle.models.identity_tokens import identity_ids
from face_mogle.pipeline import FaceMoGLEPipeline

from sampling_helpers import draw_mask, make_run

DIM = 16
IDENTITY = ["model.identity.encoder=synthfaces", f"model.identity.embed_dim={DIM}", "model.identity.num_tokens=3"]


def same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same LoRA + MoGLE weights with and without an identity projector (entry: condition, text)."""
    root = tmp_path_factory.mktemp("identity-runs")
    plain = make_run(root / "plain")
    out = {"plain": plain}
    for entry in ("condition", "text"):
        run = make_run(root / entry, overrides=[*IDENTITY, f"model.identity.entry={entry}"])
        for name in ("pytorch_lora_weights.safetensors", "mogle.safetensors"):  # the plain run's weights
            shutil.copy(plain / name, run / name)
        out[entry] = run
    return out


def embeds(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(DIM, generator=g) for _ in range(n)]


@pytest.mark.parametrize("entry", ["condition", "text"])
def test_no_identity_is_bit_identical_and_an_identity_changes_the_face(runs, entry):
    plain = FaceMoGLEPipeline.from_run(runs["plain"])
    pipe = FaceMoGLEPipeline.from_run(runs[entry])
    masks = [draw_mask(0, 32), None]
    kw = dict(seeds=[3, 4], cfg_scale=2.0, text_cfg_scale=3.0)
    want = plain(["a face", "b face"], masks, **kw)
    assert same(pipe(["a face", "b face"], masks, **kw), want)
    with_id = pipe(["a face", "b face"], masks, identities=embeds(2), **kw)
    for a, b in zip(with_id.images, want.images):
        assert np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() > 0.1
    assert with_id.settings["modes"] == ["mask+text+identity", "text-only+identity"]
    # another identity, another face
    other = pipe(["a face", "b face"], masks, identities=embeds(2, seed=1), **kw)
    assert not same(other, with_id)


def test_a_mixed_batch_equals_its_parts(runs):
    pipe = FaceMoGLEPipeline.from_run(runs["condition"])
    e = embeds(3)
    prompts, masks, seeds = ["a", "b", "c"], [draw_mask(1, 32), None, draw_mask(2, 32)], [5, 6, 7]
    mixed = pipe(prompts, masks, seeds=seeds, identities=[e[0], None, e[2]], batch_size=3)
    alone = [pipe(prompts[i], masks[i], seeds=seeds[i], identities=[e[i]] if i != 1 else None).images[0]
             for i in range(3)]
    for a, b in zip(mixed.images, alone):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_training_forward_with_identity_dropout_equals_the_parts_and_trains_the_projector():
    cfg = load_config(None, ["pretrained=tiny", *IDENTITY])
    model = FaceMoGLE(load_backbone("tiny").transformer, cfg.model)
    model.freeze_base()
    tr = model.transformer
    b, n, c = 3, 16, tr.config.in_channels
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(b, n, c, generator=g)
    t = torch.rand(b, generator=g)
    masks = torch.randn(b, cfg.model.num_experts, n, c, generator=g)
    t5 = torch.randn(b, 8, tr.config.joint_attention_dim, generator=g)
    pooled = torch.randn(b, tr.config.pooled_projection_dim, generator=g)
    txt_ids, img_ids = torch.zeros(8, 3), torch.randn(n, 3, generator=g)
    ident = torch.stack(embeds(3))
    keep = torch.tensor([True, False, True])
    gd = torch.ones(b)
    out = model(noisy, t, masks, t5, pooled, txt_ids, img_ids, gd, identity=ident, identity_keep=keep)
    with torch.no_grad():
        kept = model(noisy[keep], t[keep], masks[keep], t5[keep], pooled[keep], txt_ids, img_ids, gd[keep],
                     identity=ident[keep])
        dropped = model(noisy[~keep], t[~keep], masks[~keep], t5[~keep], pooled[~keep], txt_ids, img_ids, gd[~keep])
    torch.testing.assert_close(out[keep].detach(), kept, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[~keep].detach(), dropped, rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.identity.parameters())
    assert {id(p) for p in model.identity.parameters()} <= {id(p) for p in model.trainable_parameters()}


def test_identity_ids_sit_apart_from_the_grid_and_the_text():
    ids = identity_ids(4)
    assert ids.shape == (4, 3) and (ids[:, 0] == 1).all() and (ids[:, 1:] == 0).all()  # text and image: axis 0 is 0


def test_bad_identities_are_one_line(runs, tmp_path):
    plain = FaceMoGLEPipeline.from_run(runs["plain"])
    with pytest.raises(IdentityError, match="trained without identity"):
        plain("a", None, identities=embeds(1))
    pipe = FaceMoGLEPipeline.from_run(runs["condition"])
    with pytest.raises(IdentityError, match=f"must have {DIM} values .* got shape \\[7\\]"):
        pipe("a", None, identities=[torch.randn(7)])
    # the projector's weights are part of the run: a run folder without them is refused at load
    broken = tmp_path / "broken"
    shutil.copytree(runs["condition"], broken)
    (broken / IDENTITY_FILE).unlink()
    with pytest.raises(Exception, match="identity projector weights not found"):
        FaceMoGLEPipeline.from_run(broken)
    cfg = load_config(broken / "config.yaml", ["model.identity.num_tokens=5"])
    save_config(cfg, broken / "config.yaml")
    shutil.copy(runs["condition"] / IDENTITY_FILE, broken / IDENTITY_FILE)
    with pytest.raises(Exception, match="does not match model.identity"):
        FaceMoGLEPipeline.from_run(broken)
