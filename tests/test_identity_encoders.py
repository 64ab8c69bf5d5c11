"""Identity encoders (issue #31 item 3, and the encoder half of item 9): landmarks and alignment from a
face parse, the ArcFace ONNX loader (on tiny models exported here), the SynthFaces CNN's
contrastive training, saving and loading, and the one-line errors."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from PIL import Image

from face_mogle.config import ConfigError, load_config
from face_mogle.data.masks import save_label_map
from face_mogle.data.synthfaces import render
from face_mogle.identity import (
    ARCFACE_TEMPLATE, ArcFaceEncoder, align_matrix, EncoderConfig, FaceSet, IdentityError, TrainSettings, aligned_crop,
    landmarks, load_identity_encoder, load_synthfaces_encoder, retrieval_top1, similarity, supcon_loss, template,
    train_encoder,
)
from face_mogle.identity.train_encoder import main as train_main
from face_mogle.labels import CLASSES

L = {name: i for i, name in enumerate(CLASSES)}
# What a person keeps from render to render: face geometry, skin tone, eye colour, gender. Renders
# that share these (and differ in everything else) stand in for one identity.
IDENTITY_PARAMS = ("gender", "skin_tone", "eye_color", "a", "b", "chin", "eye_y", "eye_dx", "ew", "eh", "brow_gap",
                   "brow_in", "brow_out", "brow_t", "brow_arch", "nose_len", "nose_w", "mouth_y", "mw", "hu", "hl",
                   "ear_dy", "ear_rx", "ear_ry")
SMALL = EncoderConfig(crop=32, width=8, blocks=3, dim=32)


def identity_renders(identities: int, per_identity: int, size: int = 96, seed: int = 0, expression=None) -> FaceSet:
    images, labels, idents = [], [], []
    for ident in range(identities):
        person = render((seed, 1000 + ident), size).params
        changes = {k: person[k] for k in IDENTITY_PARAMS}
        if expression is not None:
            changes["expression"] = expression
        for r in range(per_identity):
            s = render((seed, ident, r), size, expressions=True, changes=changes)
            images.append(Image.fromarray(s.image))
            labels.append(s.labels)
            idents.append(ident)
    return FaceSet(images, labels, np.array(idents), [f"face {i}" for i in range(len(images))])


# ---------------------------------------------------------------------------------------------
# Landmarks and alignment


def disc(lab, centre, r, value):
    yy, xx = np.mgrid[: lab.shape[0], : lab.shape[1]]
    lab[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= r * r] = value


def synthetic_face(size=112) -> np.ndarray:
    """Eyes, nose tip band and mouth corners placed on the ArcFace template's points (112 x 112)."""
    lab = np.zeros((size, size), np.uint8)
    disc(lab, (56, 66), 40, L["skin"])
    disc(lab, (38, 52), 3, L["r_eye"])  # the person's right eye is on the image's left
    disc(lab, (74, 52), 3, L["l_eye"])
    lab[52:75, 54:59] = L["nose"]  # rows 52..74: the lowest fifth, rows 70..74, centres on (56, 72)
    lab[90:95, 40:73] = L["u_lip"]  # 32 wide: corners are columns 40..43 and 69..72, rows 90..94
    return lab


def test_landmarks_of_a_synthetic_face_sit_on_the_template():
    found = landmarks(synthetic_face())
    expected = np.array([[38, 52], [74, 52], [56, 72], [41.5, 92], [70.5, 92]])
    np.testing.assert_allclose(found, expected, atol=1e-9)
    assert np.abs(found - ARCFACE_TEMPLATE).max() < 1.0  # within a pixel of the template


def test_similarity_of_the_template_onto_itself_is_the_identity():
    np.testing.assert_allclose(similarity(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    a = math.radians(20)
    m = np.array([[2 * math.cos(a), -2 * math.sin(a), 30.0], [2 * math.sin(a), 2 * math.cos(a), -7.0]])
    moved = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(similarity(ARCFACE_TEMPLATE, moved), m, atol=1e-9)
    np.testing.assert_allclose(template(112), ARCFACE_TEMPLATE)


def test_a_tilted_scaled_face_is_put_back_on_the_template():
    """The synthetic face drawn tilted by 15 degrees, twice as big, shifted, in a 256 image: its
    landmarks follow the transform and the aligned crop's landmarks are on the template again."""
    a = math.radians(15)
    m = np.array([[2 * math.cos(a), -2 * math.sin(a), 20.0], [2 * math.sin(a), 2 * math.cos(a), 10.0]])
    from face_mogle.identity import warp

    big = np.asarray(warp(Image.fromarray(synthetic_face(), "L"), m, 256, Image.NEAREST))
    drawn = landmarks(synthetic_face()) @ m[:, :2].T + m[:, 2]
    found = landmarks(big)
    # eyes and nose are centroids (exact up to pixel rounding); the mouth corners are extremes,
    # which move by up to the band's half-width under a tilt
    assert np.abs(found[:3] - drawn[:3]).max() < 1.0
    assert np.abs(found[3:] - drawn[3:]).max() < 4.0
    crop, crop_labels = aligned_crop(Image.fromarray(big).convert("RGB"), big, 112)
    assert crop.size == (112, 112) and crop_labels.shape == (112, 112)
    assert np.abs(landmarks(crop_labels)[:3] - ARCFACE_TEMPLATE[:3]).max() < 1.5


def test_a_synthfaces_render_aligns_whatever_its_pose():
    """Renders of one identity (one expression) in other tilts, scales and shifts: in their crops the
    eyes, nose and mouth land on the same places, and where the alignment says (at 112)."""
    faces = identity_renders(3, 3, size=128, expression="neutral")
    for ident in range(3):
        points = []
        for k in np.flatnonzero(faces.identities == ident):
            img, lab = faces.images[k], faces.labels[k]
            m = align_matrix(lab, 112)
            _, crop_labels = aligned_crop(img, lab, 112)
            points.append(landmarks(crop_labels))
            assert np.abs(points[-1][:3] - (landmarks(lab)[:3] @ m[:, :2].T + m[:, 2])).max() < 2.0
        spread = np.ptp(np.array(points), axis=0)  # the pose is gone
        assert spread[:3].max() < 2.0 and spread[3:].max() < 3.0


def test_no_face_is_a_one_line_error(tmp_path):
    with pytest.raises(IdentityError, match=r"ref\.png: no face found \(the face parse has no skin, left eye, right eye, nose, mouth\)"):
        landmarks(np.zeros((64, 64), np.uint8), "ref.png")
    lab = synthetic_face()
    lab[lab == L["l_eye"]] = L["skin"]
    with pytest.raises(IdentityError, match=r"no face found \(the face parse has no left eye\)"):
        landmarks(lab)
    # through the encoder: a plain picture with no face in it, read by the SynthFaces parser
    path = tmp_path / "wall.png"
    Image.new("RGB", (64, 64), (120, 140, 160)).save(path)
    enc = load_identity_encoder("arcface", export_arcface(tmp_path / "m.onnx"), parser="synthfaces")
    with pytest.raises(IdentityError) as err:
        enc.embed([path])
    assert str(path) in str(err.value) and "no face found" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# ArcFace: the real loading code on tiny ONNX models exported here


class TinyRecognizer(torch.nn.Module):
    def __init__(self, dim=512, rank=2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)  # 112 → 14
        self.fc = torch.nn.Linear(4 * 14 * 14, dim)
        self.rank = rank

    def forward(self, x):
        y = self.fc(self.conv(x).flatten(1))
        return y if self.rank == 2 else y[:, None]


def export_arcface(path, size=112, dim=512, rank=2, dynamic=True):
    net = TinyRecognizer(dim, rank).eval()
    if size != 112:  # a foreign model: another input size
        net.fc = torch.nn.Linear(4 * (size // 8) ** 2, dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation note
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(path), input_names=["input.1"], output_names=["emb"],
                          dynamic_axes={"input.1": {0: "n"}, "emb": {0: "n"}} if dynamic else None, dynamo=False)
    return path


def test_arcface_runs_an_onnx_model_on_normalised_rgb_crops(tmp_path):
    path = export_arcface(tmp_path / "glintr100.onnx")
    enc = ArcFaceEncoder(path)
    assert enc.dim == 512
    rng = np.random.default_rng(0)
    crops = [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(3)]
    emb = enc.encode(crops)
    assert emb.shape == (3, 512) and emb.dtype == torch.float32
    np.testing.assert_allclose(emb.norm(dim=1).numpy(), 1.0, atol=1e-5)
    # the same as the torch net on (x - 127.5) / 127.5, RGB, channels first, then L2-normalised
    x = torch.from_numpy(np.stack([np.asarray(c, np.float32) for c in crops])).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = torch.nn.functional.normalize(TinyRecognizer()((x - 127.5) / 127.5), dim=1)
    np.testing.assert_allclose(emb.numpy(), want.numpy(), atol=1e-5)
    # a model exported with batch 1 runs crop by crop, with the same result
    fixed = ArcFaceEncoder(export_arcface(tmp_path / "w600k_r50.onnx", dynamic=False))
    np.testing.assert_allclose(fixed.encode(crops).numpy(), emb.numpy(), atol=1e-6)


def test_arcface_identity_encoder_parses_aligns_and_encodes(tmp_path):
    path = export_arcface(tmp_path / "glintr100.onnx")
    enc = load_identity_encoder("arcface", path, parser="synthfaces")
    faces = identity_renders(1, 2, size=128)
    emb = enc.embed(faces.images)
    assert emb.shape == (2, 512) and enc.dim == 512 and enc.crop_size == 112
    crops = [aligned_crop(img, lab, 112)[0] for img, lab in zip(faces.images, faces.labels)]
    np.testing.assert_allclose(emb.numpy(), ArcFaceEncoder(path).encode(crops).numpy(), atol=1e-6)


def test_missing_arcface_file_says_what_to_put_where(tmp_path):
    path = tmp_path / "identity" / "glintr100.onnx"
    with pytest.raises(IdentityError) as err:
        load_identity_encoder("arcface", path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "not found" in msg
    assert "glintr100.onnx" in msg and "antelopev2" in msg and "w600k_r50.onnx" in msg and "buffalo_l" in msg


@pytest.mark.parametrize("kind", ["size", "rank", "garbage"])
def test_foreign_onnx_file_is_one_line_with_shapes(tmp_path, kind):
    path = tmp_path / f"{kind}.onnx"
    if kind == "size":
        export_arcface(path, size=64)
    elif kind == "rank":
        export_arcface(path, rank=3)
    else:
        path.write_bytes(b"this is not a model")
    with pytest.raises(IdentityError) as err:
        ArcFaceEncoder(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)) and "expected" in msg
    if kind == "size":
        assert "input Nx3x64x64" in msg and "expected input Nx3x112x112, output NxD" in msg
    elif kind == "rank":
        assert "output Nx1x512" in msg
    else:
        assert "not a loadable ONNX model" in msg


# ---------------------------------------------------------------------------------------------
# The SynthFaces CNN


def test_supcon_loss_has_its_closed_form():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # each anchor: one positive at cosine 1, two negatives at 0 → -log(e^(1/T) / (e^(1/T) + 2))
    for t in (1.0, 0.5):
        want = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
        assert supcon_loss(z, torch.tensor([0, 0, 1, 1]), t).item() == pytest.approx(want, rel=1e-5)
        # the identities crossed: the positive is now at cosine 0, a negative at 1
        crossed = -math.log(1 / (math.exp(1 / t) + 2))
        assert supcon_loss(z, torch.tensor([0, 1, 0, 1]), t).item() == pytest.approx(crossed, rel=1e-5)


@pytest.fixture(scope="module")
def trained():
    faces = identity_renders(6, 4)
    settings = TrainSettings(steps=40, identities_per_batch=6, renders_per_identity=4, lr=3e-3, seed=0)
    encoder, losses = train_encoder(faces, SMALL, settings)
    return faces, encoder, losses


def test_contrastive_training_lowers_the_loss(trained):
    faces, encoder, losses = trained
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert first > 2.5  # about log(23): 24 renders, nothing learnt yet
    assert last < 0.75 * first
    crops = [aligned_crop(img, lab, SMALL.crop) for img, lab in zip(faces.images, faces.labels)]
    emb = encoder.encode([c for c, _ in crops], [lab for _, lab in crops])
    assert emb.shape == (24, 32)
    np.testing.assert_allclose(emb.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert retrieval_top1(emb, faces.identities) >= 0.6  # its training faces; chance is 1/6


def test_saved_and_loaded_encoder_gives_identical_embeddings(trained, tmp_path):
    faces, encoder, _ = trained
    folder = encoder.save(tmp_path / "enc")
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", "encoder.safetensors"]  # no temp files left
    meta = json.loads((folder / "encoder.json").read_text())
    assert meta["config"] == {"crop": 32, "width": 8, "blocks": 3, "dim": 32, "face_only": True}
    assert meta["info"]["steps"] == 40 and meta["info"]["train_identities"] == 6
    loaded = load_identity_encoder("synthfaces", folder)  # the SynthFaces parser finds the faces
    crops = [aligned_crop(img, lab, SMALL.crop) for img, lab in zip(faces.images, faces.labels)]
    want = encoder.encode([c for c, _ in crops], [lab for _, lab in crops])
    assert torch.equal(loaded.embed(faces.images), want)
    assert torch.equal(load_synthfaces_encoder(folder / "encoder.safetensors").encode(
        [c for c, _ in crops], [lab for _, lab in crops]), want)
    # the shipped copy stores float16 (half the bytes): its weights are the rounded ones, and the
    # embeddings barely move
    half = encoder.save(tmp_path / "half", dtype=torch.float16)
    stored = load_file(half / "encoder.safetensors")
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert (half / "encoder.safetensors").stat().st_size < 0.6 * (folder / "encoder.safetensors").stat().st_size
    loaded = load_synthfaces_encoder(half)
    for k, v in loaded.net.state_dict().items():
        assert v.dtype == encoder.net.state_dict()[k].dtype
        assert torch.equal(v, stored[k].to(v.dtype)), k
    got = loaded.encode([c for c, _ in crops], [lab for _, lab in crops])
    assert not torch.equal(got, want) and (got * want).sum(1).min() > 0.999


def test_broken_encoder_folders_are_one_line(trained, tmp_path):
    _, encoder, _ = trained
    with pytest.raises(IdentityError, match=r"no SynthFaces identity encoder there .*train_encoder"):
        load_identity_encoder("synthfaces", tmp_path / "nothing")
    folder = encoder.save(tmp_path / "enc")
    meta = json.loads((folder / "encoder.json").read_text())
    meta["config"]["dim"] = 64
    (folder / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(IdentityError, match=r"encoder\.safetensors: weights do not fit .*head\.weight"):
        load_synthfaces_encoder(folder)
    (folder / "encoder.json").write_text("{")
    with pytest.raises(IdentityError, match=r"encoder\.json: not a SynthFaces identity encoder config"):
        load_synthfaces_encoder(folder)
    with pytest.raises(IdentityError, match=r"identity encoder 'clip': choose one of synthfaces, arcface"):
        load_identity_encoder("clip")
    assert load_identity_encoder(None) is None


def write_set(root, faces, identities=True):
    (root / "face").mkdir(parents=True)
    (root / "mask").mkdir()
    attrs = {}
    for i, (img, lab, ident) in enumerate(zip(faces.images, faces.labels, faces.identities)):
        img.save(root / "face" / f"{i}.jpg", quality=95, subsampling=0)
        save_label_map(lab, root / "mask" / f"{i}.png")
        attrs[str(i)] = {"identity": int(ident)} if identities else {"hair_color": "red"}
    (root / "attributes.json").write_text(json.dumps(attrs))


def test_train_encoder_command(tmp_path, capsys):
    faces = identity_renders(4, 3)
    write_set(tmp_path / "set", faces)
    rc = train_main(["--root", str(tmp_path / "set"), "--out", str(tmp_path / "enc"), "--steps", "3", "--quiet",
                     "--crop", "32", "--dim", "16", "--identities_per_batch", "4", "--renders_per_identity", "3"])
    assert rc == 0
    assert "trained 3 steps on 12 faces of 4 identities" in capsys.readouterr().out
    enc = load_synthfaces_encoder(tmp_path / "enc")
    assert enc.dim == 16 and enc.crop_size == 32

    write_set(tmp_path / "plain", faces, identities=False)
    assert train_main(["--root", str(tmp_path / "plain"), "--out", str(tmp_path / "enc2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "plain: its faces have no identities" in err and "--identities N" in err
    assert not (tmp_path / "enc2").exists()
    with pytest.raises(SystemExit):
        train_main(["--help"])
    assert "--root" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Config


def test_identity_config_keys():
    cfg = load_config(None)
    assert (cfg.model.identity.encoder, cfg.model.identity.weights, cfg.model.identity.num_tokens) == (None, None, 4)
    cfg = load_config(None, ["model.identity.encoder=arcface", "model.identity.weights=checkpoints/identity/w600k_r50.onnx",
                             "model.identity.num_tokens=8"])
    assert (cfg.model.identity.encoder, cfg.model.identity.num_tokens) == ("arcface", 8)
    with pytest.raises(ConfigError, match=r"'model.identity.encoder' must be null \(no identity\) or one of synthfaces, arcface; got 'clip'"):
        load_config(None, ["model.identity.encoder=clip"])
    with pytest.raises(ConfigError, match=r"'model.identity.num_tokens' must be in 1..64, got 0"):
        load_config(None, ["model.identity.num_tokens=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model.identity.tokens' \(did you mean 'num_tokens'\?\)"):
        load_config(None, ["model.identity.tokens=4"])
