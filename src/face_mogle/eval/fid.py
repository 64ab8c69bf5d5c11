"""FID and KID with clean-fid's own resizing, feature batching and distance functions.

clean-fid would download its Inception network on first use; we instead hand its functions a
feature extractor built from a local file:
- mode "clean" (default): clean-fid's `InceptionV3W` wrapper around the TorchScript file
  `inception-2015-12-05.pt`, constructed with download=False;
- mode "legacy_pytorch": clean-fid's pytorch-fid `InceptionV3`, whose weight fetch is pointed at the
  local `pt_inception-2015-12-05-6726825d.pth` for the time it is built.
Images go through `cleanfid.fid.get_files_features` (its PIL-bicubic "clean" resize to 299, or the
legacy bilinear one) after being brought to the evaluation size, like the 512² protocol.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from face_mogle.eval.errors import EvalError, one_line
from face_mogle.eval.images import ResizeArray
from face_mogle.eval.weights import inception_file

KID_SUBSETS = 100      # clean-fid's defaults
KID_SUBSET_SIZE = 1000


@contextmanager
def _local_pytorch_fid_weights(path: Path):
    """clean-fid's legacy network fetches its weights by URL; serve them from `path` instead."""
    import cleanfid.inception_pytorch as inception_pytorch

    original = inception_pytorch.load_state_dict_from_url

    def from_local_file(url, *args, **kwargs):
        return torch.load(path, map_location="cpu", weights_only=True)

    inception_pytorch.load_state_dict_from_url = from_local_file
    try:
        yield
    finally:
        inception_pytorch.load_state_dict_from_url = original


def load_inception(inception_dir: Path, mode: str, device: str):
    """A function [B, 3, 299, 299] in 0..255 -> [B, 2048] features, as clean-fid's extractors are."""
    spec, path = inception_file(inception_dir, mode)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation notes
            if mode == "clean":
                from cleanfid.inception_torchscript import InceptionV3W

                model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
                return model
            from cleanfid.inception_pytorch import InceptionV3

            with _local_pytorch_fid_weights(path):
                model = InceptionV3(output_blocks=[3], resize_input=False).to(device).eval()
    except EvalError:
        raise
    except Exception as e:
        raise EvalError(f"could not load {spec.title} from {path}: {one_line(e)}") from None

    def legacy_features(x: torch.Tensor) -> torch.Tensor:  # as cleanfid.features does for this mode
        return model(x / 255)[0].squeeze(-1).squeeze(-1)

    return legacy_features


def inception_features(paths: list[Path], model, mode: str, device: str, batch_size: int,
                       size: int | None, num_workers: int, desc: str) -> np.ndarray:
    """[N, 2048] features through clean-fid's own file reading, resizing and batching."""
    from cleanfid.fid import get_files_features

    from face_mogle.image_files import ImageFileError, needs_conversion, open_header

    for p in paths:  # clean-fid reads with a plain convert("RGB"): refuse what that would read wrong
        try:
            with open_header(p) as img:
                why = needs_conversion(img)
        except ImageFileError as e:
            raise EvalError(f"cannot read an image for FID/KID: {e}") from None
        if why:
            raise EvalError(f"{p} has {why}, which clean-fid's reader ignores: save it as 8-bit RGB "
                            "(as a viewer shows it) for FID/KID")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            feats = get_files_features([str(p) for p in paths], model=model, num_workers=num_workers,
                                       batch_size=batch_size, device=torch.device(device), mode=mode,
                                       custom_image_tranform=ResizeArray(size), description=desc, verbose=True)
    except OSError as e:  # PIL's "cannot identify image file ...", raised inside clean-fid's loader
        raise EvalError(f"cannot read an image for FID/KID: {one_line(e)}") from None
    if feats.ndim != 2 or feats.shape[1] != 2048:
        raise EvalError(f"Inception returned features of shape {tuple(feats.shape)}, expected [N, 2048]")
    return feats


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the two feature sets.

    With more images than feature dimensions this is clean-fid's `frechet_distance` (scipy sqrtm).
    With fewer, both covariances are singular: sqrtm is then slow (a minute for 2048² on a small
    CPU) and inaccurate, while an exact identity is cheap — with centred features A (n x d),
    Tr sqrt(S_f S_r) = nuclear norm of A_f A_rᵀ / sqrt((n_f - 1)(n_r - 1)).
    """
    if min(len(real), len(fake)) < 2:
        raise EvalError("FID needs at least 2 image pairs")
    if min(len(real), len(fake)) <= real.shape[1]:
        return _fid_low_rank(np.asarray(real, np.float64), np.asarray(fake, np.float64))
    from cleanfid.fid import frechet_distance

    mu_r, sigma_r = real.mean(axis=0), np.cov(real, rowvar=False)
    mu_f, sigma_f = fake.mean(axis=0), np.cov(fake, rowvar=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy deprecation notes
            return float(frechet_distance(mu_f, sigma_f, mu_r, sigma_r))
    except ValueError as e:  # "Imaginary component": covariances too degenerate
        raise EvalError(f"FID failed: {one_line(e)}") from None


def _fid_low_rank(real: np.ndarray, fake: np.ndarray) -> float:
    a, b = real - real.mean(0), fake - fake.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    diff = real.mean(0) - fake.mean(0)
    tr_sqrt = np.linalg.svd(a @ b.T / np.sqrt(na * nb), compute_uv=False).sum()
    return float(diff @ diff + (a * a).sum() / na + (b * b).sum() / nb - 2 * tr_sqrt)


def fid_formula(n: int, dims: int = 2048) -> str:
    """Which computation fid_from_features used, for the JSON."""
    return "exact low-rank identity (N <= feature dims)" if n <= dims else "cleanfid.fid.frechet_distance"


def kid_from_features(real: np.ndarray, fake: np.ndarray, num_subsets: int = KID_SUBSETS,
                      max_subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> float:
    """clean-fid's unbiased polynomial-kernel MMD over random subsets, from a fixed seed.

    The subsets come from numpy's global generator; we seed it for repeatable numbers and restore it.
    """
    from cleanfid.fid import kernel_distance

    if min(len(real), len(fake)) < 2:
        raise EvalError("KID needs at least 2 image pairs")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(real, fake, num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)
