"""Face validity: real SynthFaces renders are valid faces, shuffled or noise images are not."""

import io

import numpy as np
import pytest
from PIL import Image

from face_mogle.data.synthfaces import L, render
from face_mogle.eval.face_validity import check, face_validity, features, reference_ranges

SIZE = 128  # the shipped model's size


def jpeg(image: np.ndarray) -> np.ndarray:
    """Through the data set's JPEG (quality 95, 4:4:4), as held-out faces are stored."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95, subsampling=0)
    return np.asarray(Image.open(buf).convert("RGB"))


def patch_shuffled(image: np.ndarray, patch: int, rng) -> np.ndarray:
    n = image.shape[0] // patch
    tiles = image.reshape(n, patch, n, patch, 3).transpose(0, 2, 1, 3, 4).reshape(n * n, patch, patch, 3)
    tiles = tiles[rng.permutation(n * n)]
    return tiles.reshape(n, n, patch, patch, 3).transpose(0, 2, 1, 3, 4).reshape(image.shape)


@pytest.fixture(scope="module")
def held_out():
    """Renders of another seed than the reference's (seed 1): faces the ranges never saw."""
    return [render((2, i), SIZE).image for i in range(200)]


def test_held_out_renders_are_valid(held_out):
    assert face_validity(held_out)["validity"] >= 0.99
    assert face_validity([jpeg(f) for f in held_out[:100]])["validity"] >= 0.99


def test_shuffled_and_noise_images_are_not(held_out):
    rng = np.random.default_rng(0)
    faces = held_out[:40]
    broken = {
        "pixels shuffled": [f.reshape(-1, 3)[rng.permutation(SIZE * SIZE)].reshape(f.shape) for f in faces],
        "8-px patches shuffled": [patch_shuffled(f, 8, rng) for f in faces],
        "32-px patches shuffled": [patch_shuffled(f, 32, rng) for f in faces],
        "uniform noise": [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in faces],
        "smooth noise": [np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                                    .resize((SIZE, SIZE), Image.BICUBIC)) for _ in faces],
        "upside down": [f[::-1].copy() for f in faces],
    }
    for name, images in broken.items():
        assert face_validity(images)["validity"] <= 0.05, name


def test_each_check_names_what_fails():
    s = render((2, 3), SIZE)
    ranges = reference_ranges(SIZE)
    assert check(s.labels, ranges) is None
    no_nose = np.where(s.labels == L["nose"], L["skin"], s.labels)
    assert check(no_nose, ranges) == "no nose" and features(no_nose) is None
    no_brows = np.where(np.isin(s.labels, [L["l_brow"], L["r_brow"]]), L["skin"], s.labels)
    assert check(no_brows, ranges) == "no l_brow"
    assert check(np.zeros_like(s.labels), ranges) == "no face"
    assert check(s.labels[::-1], ranges) == "parts out of order"
    # a second mouth far below the face: the mouth is no longer one piece inside the face
    two_mouths = s.labels.copy()
    two_mouths[120:123, 10:14] = L["mouth"]
    assert check(two_mouths, ranges).startswith("mouth.")


def test_ranges_come_from_the_renders():
    """Derived, not typed: other reference faces give other ranges, and each holds its own faces."""
    ranges = reference_ranges(SIZE)
    few = reference_ranges(SIZE, ids=tuple(range(20)))
    assert set(few) == set(ranges) and few != ranges
    assert sum(hi - lo for lo, hi in few.values()) < sum(hi - lo for lo, hi in ranges.values())
    for i in range(20):
        assert check(render((1, i), SIZE).labels, few) is None


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="no images"):
        face_validity([])
    with pytest.raises(ValueError, match="square and of one size"):
        face_validity([np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="images are 64 px, expected 128"):
        face_validity([np.zeros((64, 64, 3), np.uint8)], size=128)
