"""The MM-CelebA-HQ-layout dataset: splits, up-front file checks, and (seed, epoch, id) choices."""

import json
import shutil

import numpy as np
import pytest
import torch

from face_mogle.config import load_config
from face_mogle.data.dataset import DataError, FaceDataset, collate, read_split, sample_choice
from face_mogle.labels import NUM_CLASSES, NUM_MAPS

SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from face_mogle.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synthfaces"), 12, SIZE, seed=0, progress=False)


@pytest.fixture
def copy(root, tmp_path):
    """A private copy of the data set, for tests that damage it."""
    return shutil.copytree(root, tmp_path / "data")


def captions_of(root, i):
    return json.loads((root / "text.json").read_text())[f"{i}.jpg"]


# ---------------------------------------------------------------------------------------------
# Splits


def test_split_from_ranges_and_files(root, tmp_path):
    assert read_split(root, "0-4") == [0, 1, 2, 3, 4]
    assert read_split(root, " 3 - 5 ") == [3, 4, 5]
    assert read_split(root, "7-7") == [7]
    assert read_split(root, "splits/train.txt") == list(range(11))  # relative to the root
    assert read_split(root, "splits/test.txt") == [11]
    listing = tmp_path / "ids.txt"
    listing.write_text("5\n\n 2 \n9\n")  # blank lines and spaces are fine; order is kept
    assert read_split(root, str(listing)) == [5, 2, 9]  # an absolute path works too


@pytest.mark.parametrize("spec, words", [
    ("5-3", "END must be >= START"),
    ("train", "no id-list file at"),
    ("-1-3", "no id-list file at"),
    ("splits/nothere.txt", "no id-list file at"),
])
def test_bad_split_specs(root, spec, words):
    with pytest.raises(DataError, match=words) as err:
        read_split(root, spec)
    assert "\n" not in str(err.value)


def test_bad_split_files(root, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\nx2\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: expected an image id .*'x2'"):
        read_split(root, str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no ids"):
        read_split(root, str(empty))


# ---------------------------------------------------------------------------------------------
# Files


def test_missing_root_is_one_line(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        FaceDataset(tmp_path / "nothere", "0-3", SIZE)


def test_missing_files_reported_up_front_with_count_and_examples(copy):
    (copy / "face" / "1.jpg").unlink()
    (copy / "mask" / "2.png").unlink()
    (copy / "mask" / "5.png").unlink()
    table = json.loads((copy / "text.json").read_text())
    del table["3.jpg"]
    (copy / "text.json").write_text(json.dumps(table))
    (copy / "text" / "3.txt").unlink()
    with pytest.raises(DataError) as err:
        FaceDataset(copy, "0-11", SIZE)  # fails at construction, not mid-epoch
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("4 missing data files under")
    assert str(copy / "face" / "1.jpg") in msg and str(copy / "mask" / "2.png") in msg
    assert "captions of 3" in msg
    # without pixels (cache building from masks, eval) missing faces do not count
    (copy / "mask" / "2.png").write_bytes((copy / "mask" / "0.png").read_bytes())
    (copy / "mask" / "5.png").write_bytes((copy / "mask" / "0.png").read_bytes())
    with pytest.raises(DataError, match="^1 missing"):
        FaceDataset(copy, "0-11", SIZE, load_images=False)


def test_captions_fall_back_to_text_files(copy):
    (copy / "text.json").unlink()
    ds = FaceDataset(copy, "0-11", SIZE, train=False)
    assert ds[4]["caption"] == (copy / "text" / "4.txt").read_text().splitlines()[0]


def test_corrupt_files_fail_with_their_path(copy):
    (copy / "face" / "4.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (copy / "mask" / "6.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = FaceDataset(copy, "0-11", SIZE)
    with pytest.raises(DataError, match=str(copy / "face" / "4.jpg")):
        ds[4]
    with pytest.raises(DataError, match=str(copy / "mask" / "6.png")):
        ds[6]
    ds[5]  # the others still load


def test_items_and_collate(root):
    ds = FaceDataset(root, "0-11", SIZE)
    item = ds[3]
    assert item["id"] == 3
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["labels"].shape == (SIZE, SIZE) and item["labels"].dtype == torch.int64
    assert 0 <= int(item["labels"].min()) and int(item["labels"].max()) < NUM_CLASSES
    assert item["drop_maps"].shape == (NUM_MAPS,) and item["drop_maps"].dtype == torch.bool
    assert item["caption"] in captions_of(root, 3) + [""]
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, SIZE, SIZE) and batch["labels"].shape == (3, SIZE, SIZE)
    assert batch["id"] == [0, 1, 2] and len(batch["caption"]) == 3
    assert "image" not in FaceDataset(root, "0-11", SIZE, load_images=False)[0]


# ---------------------------------------------------------------------------------------------
# Random choices


def choices(ds):
    return [(it["caption"], it["caption_index"], it["drop_maps"].tolist()) for it in map(ds.__getitem__, range(len(ds)))]


def test_choices_are_a_function_of_seed_epoch_id(root):
    kw = dict(drop_text_prob=0.3, drop_image_prob=0.3, load_images=False)
    a, b = FaceDataset(root, "0-11", SIZE, seed=7, **kw), FaceDataset(root, "0-11", SIZE, seed=7, **kw)
    a.set_epoch(3)
    b.set_epoch(3)
    assert choices(a) == choices(b)
    # independent of the order or subset in which items are read
    sub = FaceDataset(root, "11-11", SIZE, seed=7, **kw)
    sub.set_epoch(3)
    assert choices(sub)[0] == choices(a)[11]
    # the caption is the chosen one, or "" when dropped
    for i, (caption, k, _) in enumerate(choices(a)):
        assert caption in ("", captions_of(root, i)[k])
    b.set_epoch(4)
    assert choices(a) != choices(b)
    c = FaceDataset(root, "0-11", SIZE, seed=8, **kw)
    c.set_epoch(3)
    assert choices(a) != choices(c)


def test_choice_rates_match_the_probabilities():
    n, p_text, p_image, k = 4000, 0.2, 0.1, 5
    picks = [sample_choice(0, 1, i, k, p_text, p_image, train=True) for i in range(n)]
    text_rate = np.mean([c.drop_text for c in picks])
    map_rate = np.mean([c.drop_maps[1:] for c in picks])  # 76,000 draws
    counts = np.bincount([c.caption_index for c in picks], minlength=k)
    assert abs(text_rate - p_text) < 0.03
    assert abs(map_rate - p_image) < 0.006
    assert counts.min() > 0.8 * n / k and counts.max() < 1.2 * n / k
    # the per-class drops are independent of each other: about p² of pairs drop together
    both = np.mean([c.drop_maps[1] and c.drop_maps[2] for c in picks])
    assert both < 3 * p_image**2
    assert not any(c.drop_maps[0] for c in picks)  # the official dropout keeps the global map
    never = [sample_choice(0, 1, i, k, 0.0, 0.0, train=True) for i in range(200)]
    assert not any(c.drop_text or c.drop_maps.any() for c in never)


def test_test_split_uses_the_first_caption_and_no_dropout(root):
    cfg = load_config(None, [f"data.root={root}", f"data.size={SIZE}", f"data.condition_size={SIZE}",
                             "data.train_split=splits/train.txt", "data.test_split=0-11",
                             "data.drop_text_prob=1.0", "data.drop_image_prob=1.0"])
    test = FaceDataset.from_config(cfg.data, "test", seed=3, load_images=False)
    assert not test.train and len(test) == 12
    for epoch in (0, 5):
        test.set_epoch(epoch)
        for i in range(len(test)):
            item = test[i]
            assert item["caption"] == captions_of(root, i)[0] and item["caption_index"] == 0
            assert not item["drop_maps"].any()
    train = FaceDataset.from_config(cfg.data, "train", seed=3, load_images=False)
    assert train.train and len(train) == 11
    item = train[0]  # probabilities 1: everything dropped
    assert item["caption"] == "" and item["drop_maps"][1:].all() and not item["drop_maps"][0]


def test_whole_mask_dropout_trains_text_only_mode_and_leaves_the_official_draws_alone():
    n, p_mask, k = 4000, 0.25, 5
    official = [sample_choice(0, 1, i, k, 0.2, 0.1, train=True) for i in range(n)]
    picks = [sample_choice(0, 1, i, k, 0.2, 0.1, train=True, drop_mask_prob=p_mask) for i in range(n)]
    whole = np.array([c.drop_maps[0] for c in picks])
    assert abs(whole.mean() - p_mask) < 0.03
    for a, b, w in zip(official, picks, whole):
        assert (a.caption_index, a.drop_text) == (b.caption_index, b.drop_text)
        # a dropped mask drops every map (all 20 zero = text-only mode); otherwise the official draws stand
        assert b.drop_maps.tolist() == ([True] * NUM_MAPS if w else a.drop_maps.tolist())


def test_empty_caption_is_an_error_naming_it(tmp_path):
    import json

    from face_mogle.data.dataset import DataError, read_captions

    (tmp_path / "text.json").write_text(json.dumps({"0.jpg": ["A man."], "1.jpg": ["A woman.", "  "]}))
    assert read_captions(tmp_path, [0]) == {0: ["A man."]}
    with pytest.raises(DataError, match='"1.jpg" has an empty caption'):
        read_captions(tmp_path, [0, 1])
