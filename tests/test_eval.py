"""The evaluation suite: each metric against an independent re-computation, the CLI's one-line
errors, and an end-to-end run over tiny random models (offline, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from face_mogle.eval import clip_score, cmmd, dino, fid, miou
from face_mogle.eval.clipnet import ClipNet, OpenAIClipTransform
from face_mogle.eval.images import load_rgb
from face_mogle.eval.weights import CLIP_B16, LEGACY_FILE
from face_mogle.labels import NUM_CLASSES

N_IMAGES = 16
ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
# Offline, and any HTTP(S) request would go to a dead proxy: a download attempt cannot succeed.
DEAD_PROXY = "http://127.0.0.1:9"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
       "http_proxy": DEAD_PROXY, "https_proxy": DEAD_PROXY, "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY,
       "no_proxy": "", "NO_PROXY": ""}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from face_mogle.eval.tiny_models import build_tiny_eval_models

    out = tmp_path_factory.mktemp("eval-weights")
    build_tiny_eval_models(out)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from face_mogle.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synthfaces")
    write_dataset(root, N_IMAGES, size=SIZE, seed=0, progress=False)
    return root


def run_cli(*args: str, module: str = "face_mogle.eval") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str | None = None) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    if expected is not None:
        assert lines[0] == f"error: {expected}"
    return lines[0]


# ----------------------------------------------------------------------------- FID / KID

def frechet_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Independent Fréchet distance: Tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), no scipy."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_fid_matches_eigen_formula():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 48))
    fake = rng.normal(size=(250, 48)) @ rng.normal(size=(48, 48)) * 0.3 + 0.5
    assert fid.fid_from_features(real, fake) == pytest.approx(frechet_numpy(fake, real), rel=1e-6)


def test_fid_with_fewer_images_than_dims_matches_cleanfid_and_eigen_formula():
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(20, 64)), rng.normal(size=(25, 64)) * 0.5 + 0.3
    got = fid.fid_from_features(real, fake)  # singular covariances: the low-rank path
    assert got == pytest.approx(frechet_numpy(fake, real), rel=1e-6)
    reference = frechet_distance(fake.mean(0), np.cov(fake, rowvar=False), real.mean(0), np.cov(real, rowvar=False))
    assert got == pytest.approx(reference, rel=1e-4)  # scipy's sqrtm is itself inexact on singular input


@pytest.mark.parametrize("n", [200, 20])  # full-rank (clean-fid's sqrtm) and low-rank path
def test_fid_of_a_set_with_itself_is_zero(n):
    x = np.random.default_rng(1).normal(size=(n, 32)) * 3
    assert abs(fid.fid_from_features(x, x)) < 1e-6 * np.trace(np.cov(x, rowvar=False))


def test_kid_matches_unbiased_polynomial_mmd():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 16)), rng.normal(size=(40, 16)) + 0.2
    d, m = x.shape[1], len(x)
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    # With <= 1000 images every "random subset" is the whole set, so clean-fid's value is exact.
    state = np.random.get_state()
    assert fid.kid_from_features(x, y, seed=5) == pytest.approx(expected, rel=1e-9)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global numpy RNG left as it was


def test_legacy_pytorch_inception_loads_from_a_local_file(tmp_path, monkeypatch):
    import urllib.request

    import cleanfid.inception_pytorch as inception_pytorch

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)

    # A random pytorch-fid weight file: let clean-fid build its network and hand back its own state.
    def own_state(url, *a, **k):
        return {k: v.clone() for k, v in sys._getframe(1).f_locals["inception"].state_dict().items()}

    monkeypatch.setattr(inception_pytorch, "load_state_dict_from_url", own_state)
    state = inception_pytorch.fid_inception_v3().state_dict()
    monkeypatch.undo()
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    torch.save(state, tmp_path / LEGACY_FILE)

    model = fid.load_inception(tmp_path, "legacy_pytorch", "cpu")
    with torch.no_grad():  # small input: the network is fully convolutional, and slow on a CPU at 299²
        feats = model(torch.rand(2, 3, 80, 80) * 255)
    assert feats.shape == (2, 2048)
    assert inception_pytorch.load_state_dict_from_url is not own_state  # the patch is undone


# ----------------------------------------------------------------------------- CMMD

def cmmd_numpy(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    k = lambda a, b: np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))  # noqa: E731
    return float(1000 * (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()))


def test_cmmd_matches_formula_and_is_zero_on_itself():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(20, 8)) + 1.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    assert cmmd.mmd(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(cmmd_numpy(x, y), rel=1e-9)
    assert abs(cmmd.mmd(torch.from_numpy(x), torch.from_numpy(x))) < 1e-9


# ----------------------------------------------------------------------------- DINO

def test_structure_distance_matches_numpy():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(3, 10, 6)), rng.normal(size=(3, 10, 6))

    def sim(k):
        kn = k / np.linalg.norm(k, axis=-1, keepdims=True)
        return kn @ kn.transpose(0, 2, 1)

    expected = ((sim(a) - sim(b)) ** 2).mean(axis=(1, 2))
    got = dino.structure_distance(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert dino.structure_distance(torch.from_numpy(a), torch.from_numpy(a)).abs().max() < 1e-6


def test_dino_hook_captures_the_last_layers_keys(weights):
    model = dino.load_dino(weights / "dino-vitb8", "cpu")
    extract = dino.KeyExtractor(model, "cpu")
    pixels = torch.rand(2, 3, 48, 48)  # not the model's 32: position embeddings are interpolated
    keys = extract(pixels)
    with torch.no_grad():
        hidden = model(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        last = model.layers[-1]
        expected = last.attention.k_proj(last.layernorm_before(hidden[-2]))
    assert keys.shape == (2, 1 + (48 // 8) ** 2, model.config.hidden_size)
    torch.testing.assert_close(keys, expected)


# ----------------------------------------------------------------------------- CLIP score

def test_openai_clip_transform_matches_torchvision(weights, data):
    from torchvision import transforms as T

    net = ClipNet(CLIP_B16, weights / "clip-vit-base-patch16", "cpu")
    img = load_rgb(data / "face" / "0.jpg").resize((50, 40))  # non-square: resize short side, crop
    reference = T.Compose([T.Resize(net.short, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(net.crop),
                           T.ToTensor(), T.Normalize(net.mean, net.std)])
    torch.testing.assert_close(OpenAIClipTransform(net)(img), reference(img))


def test_clip_score_matches_clip_model_forward(weights, data):
    net = ClipNet(CLIP_B16, weights / "clip-vit-base-patch16", "cpu")
    paths = [data / "face" / f"{i}.jpg" for i in range(4)]
    texts = [(data / "text" / f"{i}.txt").read_text().splitlines()[0] for i in range(4)]
    res = clip_score.run(paths, texts, weights / "clip-vit-base-patch16", "cpu", batch_size=3, size=SIZE,
                         num_workers=0)

    # Independently: CLIPModel's own forward gives normalised image_embeds / text_embeds.
    pixels = torch.stack([OpenAIClipTransform(net)(load_rgb(p, SIZE)) for p in paths])
    enc = net.load_tokenizer()(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = net.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
    cos = (out.image_embeds * out.text_embeds).sum(-1).double()
    assert res["unclipped"] == pytest.approx(float((100 * cos).mean()), abs=1e-4)
    assert res["value"] == pytest.approx(float((100 * cos).clamp(min=0).mean()), abs=1e-4)
    assert res["count"] == 4


# ----------------------------------------------------------------------------- mIoU

def iou_numpy(truth: list[np.ndarray], pred: list[np.ndarray]) -> tuple[float, float]:
    t, p = np.concatenate([a.ravel() for a in truth]), np.concatenate([a.ravel() for a in pred])
    ious = []
    for c in range(NUM_CLASSES):
        union = np.logical_or(t == c, p == c).sum()
        if union:
            ious.append(np.logical_and(t == c, p == c).sum() / union)
    return float(np.mean(ious) * 100), float((t == p).mean() * 100)


def test_miou_from_confusion_matrix_matches_per_class_iou():
    rng = np.random.default_rng(5)
    truth = [rng.integers(0, 12, size=(20, 20)) for _ in range(3)]  # classes 12..18 absent from truth
    pred = [np.where(rng.random((20, 20)) < 0.7, t, rng.integers(0, 15, size=(20, 20))) for t in truth]
    cm = sum(miou.confusion_matrix(t, p) for t, p in zip(truth, pred))
    scores = miou.scores_from_confusion(cm)
    expected_miou, expected_acc = iou_numpy(truth, pred)
    assert scores["value"] == pytest.approx(expected_miou, rel=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(expected_acc, rel=1e-12)
    assert scores["per_class_iou"]["cloth"] is None  # in neither map: not averaged


def test_miou_synthfaces_parser_matches_direct_parse(data):
    from face_mogle.data.masks import load_label_map
    from face_mogle.data.synthetic import parse

    ids = range(5)
    fake = [data / "face" / f"{i}.jpg" for i in ids]
    masks = [data / "mask" / f"{i}.png" for i in ids]
    res = miou.run(fake, masks, "synthfaces", Path("unused"), "cpu", batch_size=2, size=SIZE, num_workers=0)
    truth = [load_label_map(m) for m in masks]
    pred = [parse(np.asarray(Image.open(f).convert("RGB"))) for f in fake]
    expected_miou, expected_acc = iou_numpy(truth, pred)
    assert res["value"] == pytest.approx(expected_miou)
    assert res["pixel_accuracy"] == pytest.approx(expected_acc)
    assert res["value"] > 80  # the real faces parse back to (nearly) their own masks


def test_face_parser_labels_are_matched_by_name(tmp_path):
    from face_mogle.eval.errors import EvalError
    from face_mogle.labels import CLASSES

    order = [CLASSES[i] for i in np.random.default_rng(8).permutation(NUM_CLASSES)]
    lookup = miou.label_lookup([f"{n}.png" for n in order], tmp_path)  # parser index -> our label
    assert [CLASSES[v] for v in lookup] == order
    assert np.array_equal(miou.label_lookup(list(CLASSES), tmp_path), np.arange(NUM_CLASSES))
    with pytest.raises(EvalError, match="not the 19 CelebAMask-HQ classes"):
        miou.label_lookup(["face"] + list(CLASSES[1:]), tmp_path)


# ----------------------------------------------------------------------------- CLI errors

def make_images(folder: Path, ids, size: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(np.full((size, size, 3), 30 * (int(i) % 8), np.uint8)).save(folder / f"{i}.png")


def test_cli_no_pairs_is_one_line(tmp_path):
    make_images(tmp_path / "fake", range(4))
    make_images(tmp_path / "real", range(10, 14))
    proc = run_cli("--fake", str(tmp_path / "fake"), "--real", str(tmp_path / "real"), "--metrics", "fid",
                   "--out", str(tmp_path / "r.json"))
    line = assert_one_line_error(proc)
    assert line.startswith("error: no ids pair: --fake has 4 images (e.g. 0, 1, 2, ...")
    assert "--real has 4 (e.g. 10, 11, 12, ..." in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("metric, expected", [
    ("clip", "CLIP ViT-B/16 not found at {wd}/clip-vit-base-patch16: place the openai/clip-vit-base-patch16 "
             "folder (transformers format) there"),
    ("cmmd", "CLIP ViT-L/14-336 not found at {wd}/clip-vit-large-patch14-336: place the "
             "openai/clip-vit-large-patch14-336 folder (transformers format) there"),
    ("dino", "DINO ViT-B/8 not found at {wd}/dino-vitb8: place the facebook/dino-vitb8 folder "
             "(transformers format) there"),
    ("fid", "Inception (clean-fid) not found at {wd}/inception/inception-2015-12-05.pt: place "
            "inception-2015-12-05.pt from https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
            "metrics/inception-2015-12-05.pt there"),
])
def test_cli_missing_weights_is_one_line(tmp_path, metric, expected):
    make_images(tmp_path / "fake", range(3))
    make_images(tmp_path / "real", range(3))
    (tmp_path / "text").mkdir()
    for i in range(3):
        (tmp_path / "text" / f"{i}.txt").write_text("a face\n")
    wd = tmp_path / "weights"
    proc = run_cli("--fake", str(tmp_path / "fake"), "--real", str(tmp_path / "real"), "--text",
                   str(tmp_path / "text"), "--metrics", metric, "--weights_dir", str(wd),
                   "--out", str(tmp_path / "r.json"))
    assert_one_line_error(proc, expected.format(wd=wd))


def test_cli_bad_inputs_are_one_line(tmp_path):
    make_images(tmp_path / "fake", range(2))
    out = str(tmp_path / "r.json")
    assert_one_line_error(run_cli("--fake", str(tmp_path / "nope"), "--out", out, "--metrics", "clip"),
                          f"--fake {tmp_path / 'nope'}: no such directory")
    assert_one_line_error(run_cli("--fake", str(tmp_path / "fake"), "--out", out, "--metrics", "fid"),
                          "fid needs --real DIR")
    line = assert_one_line_error(run_cli("--fake", str(tmp_path / "fake"), "--out", out, "--metrics", "fid,bogus"))
    assert "unknown metric(s) bogus" in line
    line = assert_one_line_error(run_cli("--fake", str(tmp_path / "fake"), "--out", out, "--batch_size", "0"))
    assert "must be >= 1" in line
    assert_one_line_error(run_cli("--out", out))  # --fake missing
    blocker = tmp_path / "file"
    blocker.write_text("x")  # --out under a file: refused before any metric is computed
    line = assert_one_line_error(run_cli("--fake", str(tmp_path / "fake"), "--real", str(tmp_path / "fake"),
                                         "--out", str(blocker / "r.json"), "--metrics", "fid"))
    assert f"cannot write {blocker / 'r.json'}" in line


def test_cli_out_never_lands_on_an_input_or_in_a_data_set(tmp_path):
    make_images(tmp_path / "fake", range(2))
    make_images(tmp_path / "real", range(2))
    image = tmp_path / "real" / "1.png"
    before = image.read_bytes()
    line = assert_one_line_error(run_cli("--fake", str(tmp_path / "fake"), "--real", str(tmp_path / "real"),
                                         "--metrics", "fid", "--out", str(image)))
    assert f"--out {image} is the input --real {image}" in line and image.read_bytes() == before
    data = tmp_path / "data"  # a data set root (it holds mask/): --out there would sit among its files
    make_images(data / "face", range(2))
    (data / "mask").mkdir()
    line = assert_one_line_error(run_cli("--fake", str(tmp_path / "fake"), "--real", str(data), "--metrics", "fid",
                                         "--out", str(data / "text.json")))
    assert "would write into the data set" in line and not (data / "text.json").exists()


def test_pairing_by_id_reports_missing_ids(tmp_path):
    from face_mogle.eval.errors import EvalError
    from face_mogle.eval.pairing import pair

    make_images(tmp_path / "fake", ["1", "2", "10", "99"])
    make_images(tmp_path / "data" / "face", ["1", "2", "10", "11"])  # a data-set root: face/ is used
    p = pair(tmp_path / "fake", real=tmp_path / "data")
    assert p.ids == ["1", "2", "10"]  # numeric order
    assert p.paths("real") == [tmp_path / "data" / "face" / f"{i}.png" for i in ("1", "2", "10")]
    assert p.summary_lines() == ["paired 3 of 4 generated images; real: 4 found",
                                 "  1 generated ids have no real file, skipped: 99"]
    Image.new("RGB", (4, 4)).save(tmp_path / "fake" / "2.jpg")
    with pytest.raises(EvalError, match="two files share the id 2"):
        pair(tmp_path / "fake", real=tmp_path / "data")


def test_cli_unreadable_image_is_one_line(tmp_path, weights, data):
    shutil.copytree(data / "face", tmp_path / "face")
    (tmp_path / "face" / "3.jpg").write_bytes(b"not a jpeg")
    proc = run_cli("--fake", str(tmp_path), "--text", str(data / "text"), "--metrics", "clip", "--weights_dir",
                   str(weights), "--size", str(SIZE), "--num_workers", "1", "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot read image {tmp_path / 'face' / '3.jpg'}")


def test_image_reward_skips_with_instructions(tmp_path):
    from face_mogle.eval import image_reward

    res = image_reward.run([], [], tmp_path, "cpu", batch_size=1, size=None, num_workers=0)
    assert set(res) == {"skipped"}
    assert "\n" not in res["skipped"]
    assert "pip install image-reward" in res["skipped"] and str(tmp_path) in res["skipped"]


# A stand-in for the image-reward package with the real one's interface (ImageReward(med_config,
# device) building a BLIP whose tokenizer is BertTokenizer.from_pretrained("bert-base-uncased"),
# .preprocess, .mlp, .mean/.std, and score(prompt, image_path) for one image).
IMAGE_REWARD_STUB = """
import torch
from torch import nn
from PIL import Image
from torchvision import transforms as T
from transformers import BertTokenizer


class _Out:
    def __init__(self, h):
        self.last_hidden_state = h


class _TextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 8)

    def forward(self, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, return_dict):
        return _Out(self.emb(input_ids) * attention_mask[..., None] + encoder_hidden_states.mean(1, keepdim=True))


class _Blip(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokenizer = BertTokenizer.from_pretrained("bert-base-uncased")
        self.visual_encoder = nn.Sequential(nn.Conv2d(3, 8, 8, 8), nn.Flatten(2))
        self.visual_encoder.append(_Transpose())
        self.text_encoder = _TextEncoder()


class _Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


class ImageReward(nn.Module):
    def __init__(self, med_config, device="cpu"):
        super().__init__()
        self.device = device
        self.blip = _Blip()
        self.preprocess = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor()])
        self.mlp = nn.Linear(8, 1)
        self.mean, self.std = 0.2, 1.5

    def score(self, prompt, image_path):
        text = self.blip.tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        image = self.preprocess(Image.open(image_path)).unsqueeze(0)
        emb = self.blip.visual_encoder(image)
        out = self.blip.text_encoder(text.input_ids, attention_mask=text.attention_mask, encoder_hidden_states=emb,
                                     encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long),
                                     return_dict=True)
        return ((self.mlp(out.last_hidden_state[:, 0, :].float()) - self.mean) / self.std).item()
"""


def test_image_reward_glue_matches_the_packages_own_score(tmp_path, monkeypatch, data):
    from face_mogle.eval import image_reward

    (tmp_path / "pkg" / "ImageReward").mkdir(parents=True)
    (tmp_path / "pkg" / "ImageReward" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "ImageReward" / "ImageReward.py").write_text(IMAGE_REWARD_STUB)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    weights = tmp_path / "ImageReward"
    (weights / "bert-base-uncased").mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "woman", "with", "hair", "eyes", "skin"]
    (weights / "bert-base-uncased" / "vocab.txt").write_text("\n".join(words) + "\n")
    (weights / "med_config.json").write_text("{}")
    assert "ImageReward.pt" in image_reward.unavailable_reason(weights)

    from ImageReward.ImageReward import ImageReward as Stub

    with image_reward._local_bert_tokenizer(weights / "bert-base-uncased"):
        torch.manual_seed(7)
        reference = Stub(med_config=None).eval()
    torch.save(reference.state_dict(), weights / "ImageReward.pt")
    assert image_reward.unavailable_reason(weights) is None

    fake = [data / "face" / f"{i}.jpg" for i in range(5)]
    texts = [(data / "text" / f"{i}.txt").read_text().splitlines()[0] for i in range(5)]
    res = image_reward.run(fake, texts, weights, "cpu", batch_size=2, size=None, num_workers=0)
    with torch.no_grad():
        expected = np.mean([reference.score(t, f) for t, f in zip(texts, fake)])
    assert res["value"] == pytest.approx(expected, rel=1e-5) and res["count"] == 5
    from transformers import BertTokenizer
    assert "from_pretrained" not in BertTokenizer.__dict__  # the redirect is undone


# ----------------------------------------------------------------------------- end to end

def test_cli_end_to_end(tmp_path, weights, data):
    fake = tmp_path / "outputs" / "run"
    shutil.copytree(data / "face", fake / "face")
    shutil.copytree(data / "text", fake / "text")
    (fake / "face" / "7.jpg").unlink()  # one generated image missing: 15 pairs
    out, report = tmp_path / "eval" / "results.json", tmp_path / "eval" / "report.html"
    proc = run_cli("--fake", str(fake), "--real", str(data), "--metrics", "fid,kid,clip,cmmd,dino,miou",
                   "--weights_dir", str(weights), "--device", "cpu", "--size", str(SIZE), "--batch_size", "8",
                   "--num_workers", "0", "--out", str(out), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"paired 15 of 15 generated images; real: {N_IMAGES} found" in proc.stderr
    assert f"captions from {fake / 'text'}" in proc.stderr and f"masks from {data / 'mask'}" in proc.stderr
    assert "FID" in proc.stdout and "mIoU %" in proc.stdout

    res = json.loads(out.read_text())
    assert res["status"] == "complete"
    assert list(res["metrics"]) == ["fid", "kid", "clip", "cmmd", "dino", "miou"]
    for key, m in res["metrics"].items():
        assert np.isfinite(m["value"]) and m["count"] == 15, key
        assert m["model"], key
    assert res["metrics"]["fid"]["model"]["sha256"]
    assert res["metrics"]["fid"]["formula"].startswith("exact low-rank")
    assert res["metrics"]["clip"]["model"]["fingerprint"]
    assert res["pairing"]["paired"] == 15 and res["pairing"]["found"]["real"] == N_IMAGES
    assert res["settings"]["fid_mode"] == "clean" and res["settings"]["device"] == "cpu"
    # fake == real image for image: the set distances vanish
    assert abs(res["metrics"]["fid"]["value"]) < 1e-3
    assert abs(res["metrics"]["cmmd"]["value"]) < 1e-6
    assert res["metrics"]["dino"]["value"] == 0.0

    page = report.read_text()
    assert page.count('src="data:image/jpeg;base64,') == 3 * 8  # mask | real | generated for 8 ids
    assert "CLIP score" in page and "http" not in page.split("<h2>Settings</h2>")[0]


def test_paper_table_script_runs_end_to_end_and_resumes(tmp_path, weights, tiny_run):
    """script/eval_paper.sh on the tiny preset: generation (official-sampler preset), every paper
    metric, and the table in the official column order; a second run reuses the images."""
    from face_mogle.data.synthetic import write_dataset
    from face_mogle.eval.paper import COLUMNS

    root = write_dataset(tmp_path / "synth", 6, size=64, seed=1, test_fraction=0.5, progress=False)
    out = tmp_path / "paper"
    env = dict(ENV, OUT=str(out), SPLIT="splits/test.txt", SIZE="32", STEPS="2", WEIGHTS_DIR=str(weights),
               METRICS="fid,kid,clip,cmmd,dino,ir", DEVICE="cpu")
    run = lambda: subprocess.run(["bash", str(ROOT / "script" / "eval_paper.sh"), str(tiny_run), str(root)],  # noqa: E731
                                 capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    proc = run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads((out / "table.json").read_text())
    assert table["columns"] == [c for c, *_ in COLUMNS] == ["FID", "KID×1000", "CLIP score", "CMMD", "DINO structure", "ImageReward"]
    results = json.loads((out / "results.json").read_text())
    assert table["row"]["FID"] == pytest.approx(results["metrics"]["fid"]["value"])
    assert table["row"]["DINO structure"] == pytest.approx(results["metrics"]["dino"]["paper_scale"])
    assert all(table["row"][c] is not None for c in ("FID", "KID×1000", "CLIP score", "CMMD", "DINO structure"))
    md = (out / "table.md").read_text().splitlines()
    assert md[0].startswith("| run | images | FID ↓ | KID×1000 ↓ | CLIP score ↑") and md[2].startswith(f"| {tiny_run.name} | 3 |")
    manifest = json.loads((out / "images" / "manifest.json").read_text())
    assert manifest["local_maps"] == "blank" and manifest["gate_timestep_scale"] == 1000.0 and manifest["size"] == 32
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images" / "face").iterdir()}
    assert len(stamps) == 3
    proc = run()  # resumable: the faces are not made again
    assert proc.returncode == 0 and {p.name: p.stat().st_mtime_ns for p in (out / "images" / "face").iterdir()} == stamps
    bad = subprocess.run(["bash", str(ROOT / "script" / "eval_paper.sh")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "usage:" in bad.stderr
