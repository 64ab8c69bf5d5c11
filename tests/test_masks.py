"""Mask codec: reading label maps in every accepted form, errors, and the 20-map condition stack."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from face_mogle.data.masks import (
    MaskError,
    condition_stack,
    condition_stack_torch,
    drop_maps,
    labels_from_stack,
    load_label_map,
    save_label_map,
)
from face_mogle.labels import NUM_CLASSES, NUM_MAPS, PALETTE


def all_labels(h=24, w=32, seed=0):
    """A label map with every label 0..18 present (the first row holds them all)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, (h, w)).astype(np.uint8)
    labels[0, :NUM_CLASSES] = np.arange(NUM_CLASSES)
    return labels


# ---- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "RGB", "RGBA", "grey-RGB"])
def test_png_round_trip(tmp_path, mode):
    labels = all_labels()
    if mode == "L":
        img = Image.fromarray(labels, "L")
    elif mode == "P":
        img = Image.fromarray(labels, "P")
        img.putpalette(PALETTE.ravel().tolist())
    elif mode == "I;16":
        img = Image.fromarray(labels.astype(np.uint16))
    elif mode == "RGB":
        img = Image.fromarray(PALETTE[labels], "RGB")
    elif mode == "RGBA":
        rgba = np.concatenate([PALETTE[labels], np.full(labels.shape + (1,), 255, np.uint8)], -1)
        img = Image.fromarray(rgba, "RGBA")
    else:  # the label PNG converted to RGB, as the official code does for the global map
        img = Image.fromarray(labels, "L").convert("RGB")
    path = tmp_path / f"mask_{mode.replace(';', '')}.png"
    img.save(path)
    out = load_label_map(path)
    assert out.dtype == np.uint8 and out.shape == labels.shape
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_array_equal(load_label_map(str(path)), labels)  # str paths too
    with Image.open(path) as opened:
        np.testing.assert_array_equal(load_label_map(opened), labels)  # and open PIL images


def test_32bit_image():
    labels = all_labels()
    img = Image.fromarray(labels.astype(np.int32))  # Pillow no longer saves mode I as PNG
    assert img.mode == "I"
    np.testing.assert_array_equal(load_label_map(img), labels)


def test_array_and_tensor_inputs():
    labels = all_labels()
    np.testing.assert_array_equal(load_label_map(labels), labels)
    np.testing.assert_array_equal(load_label_map(labels.astype(np.int64)), labels)
    np.testing.assert_array_equal(load_label_map(labels.astype(np.float32)), labels)  # integral floats
    np.testing.assert_array_equal(load_label_map(torch.from_numpy(labels.astype(np.int64))), labels)


def test_resize_is_nearest_only():
    labels = all_labels(40, 40)
    small = load_label_map(labels, size=17)
    assert small.shape == (17, 17)
    assert set(np.unique(small)) <= set(np.unique(labels))
    expected = np.asarray(Image.fromarray(labels, "L").resize((17, 17), Image.NEAREST))
    np.testing.assert_array_equal(small, expected)
    # an integer upscale by nearest neighbour is exactly pixel repetition
    big = load_label_map(labels, size=(80, 120))
    assert big.shape == (80, 120)
    np.testing.assert_array_equal(big, labels.repeat(2, 0).repeat(3, 1))
    # a coloured mask resized gives labels, never blended colours
    rgb = Image.fromarray(PALETTE[labels], "RGB")
    np.testing.assert_array_equal(load_label_map(rgb, size=17), expected)


# ---- errors: one line, naming the file and the offending values ------------------------------


def one_line_error(source, *needles, size=None):
    with pytest.raises(MaskError) as info:
        load_label_map(source, size=size)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def test_labels_out_of_range(tmp_path):
    labels = all_labels()
    labels[3, 3], labels[4, 4] = 19, 200
    path = tmp_path / "out_of_range.png"
    Image.fromarray(labels, "L").save(path)
    msg = one_line_error(path, "out_of_range.png", "outside 0..18", "19", "200")
    assert "distinct" not in msg  # two values: all listed
    many = all_labels()
    many[5, :9] = np.arange(30, 39)
    path = tmp_path / "many.png"
    Image.fromarray(many, "L").save(path)
    one_line_error(path, "many.png", "[30, 31, 32, 33, 34, ...] (9 distinct)")
    one_line_error(torch.full((4, 4), -2), "<array>", "-2")
    one_line_error(np.full((4, 4), 40, np.int16), "<array>", "outside 0..18", "40")


def test_rgb_colours_not_in_palette(tmp_path):
    rgb = PALETTE[all_labels()].copy()
    rgb[0, 0] = (1, 2, 3)
    rgb[1, :4] = (250, 250, 250)
    path = tmp_path / "painted.png"
    Image.fromarray(rgb, "RGB").save(path)
    one_line_error(path, "painted.png", "5 pixels", "(1, 2, 3)", "(250, 250, 250)", "2 distinct")


def test_unreadable_empty_missing(tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not a png at all")
    one_line_error(bad, "garbage.png", "unreadable or corrupt")

    good = tmp_path / "good.png"
    Image.fromarray(all_labels(64, 64), "L").save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    one_line_error(truncated, "truncated.png", "unreadable or corrupt")

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    one_line_error(empty, "empty.png", "empty", "0 bytes")

    one_line_error(tmp_path / "missing.png", "missing.png", "not found")
    one_line_error(tmp_path, str(tmp_path), "directory")


def test_wrong_shape_and_type():
    one_line_error(np.zeros((2, 3, 4), np.uint8), "<array>", "2-D", "(2, 3, 4)")
    one_line_error(np.zeros((0, 5), np.uint8), "<array>", "zero size")
    one_line_error(np.full((3, 3), 1.5), "<array>", "integers", "1.5")
    one_line_error(Image.new("F", (4, 4)), "<image>", "unsupported image mode 'F'")
    with pytest.raises(MaskError, match="cannot read a label map from list"):
        load_label_map([[0, 1], [2, 3]])


# ---- saving ----------------------------------------------------------------------------------


def test_save_label_map_atomic_l_png(tmp_path):
    labels = all_labels()
    path = tmp_path / "saved.png"
    save_label_map(labels, path)
    with Image.open(path) as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), labels)
    save_label_map(torch.from_numpy(labels.astype(np.int64)), path)  # overwrite in place
    assert os.listdir(tmp_path) == ["saved.png"]  # no temp files left behind

    bad = labels.astype(np.int32)
    bad[0, 0] = 19
    with pytest.raises(MaskError, match="19"):
        save_label_map(bad, tmp_path / "bad.png")
    assert os.listdir(tmp_path) == ["saved.png"]


# ---- condition stack -------------------------------------------------------------------------


@pytest.mark.parametrize("global_mode", ["gray", "palette"])
def test_condition_stack_values(global_mode):
    labels = all_labels()
    stack = condition_stack(labels, global_mode)
    assert stack.shape == (NUM_MAPS, 3, *labels.shape) and stack.dtype == np.float32
    assert stack.min() >= 0.0 and stack.max() <= 1.0
    if global_mode == "gray":
        expected = np.broadcast_to(labels / 255.0, (3, *labels.shape))
    else:
        expected = PALETTE[labels].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(stack[0], expected, atol=1e-7)
    for c in range(NUM_CLASSES):
        for ch in range(3):
            np.testing.assert_array_equal(stack[c + 1, ch], (labels == c).astype(np.float32))
    np.testing.assert_array_equal(stack[1:, 0].sum(0), 1.0)  # each pixel in exactly one local map


@pytest.mark.parametrize("global_mode", ["gray", "palette"])
def test_torch_and_numpy_stacks_agree(global_mode):
    batch = np.stack([all_labels(seed=s) for s in range(3)])
    t = condition_stack_torch(torch.from_numpy(batch).long(), global_mode)
    assert t.shape == (3, NUM_MAPS, 3, *batch.shape[1:]) and t.dtype == torch.float32
    for b in range(3):
        np.testing.assert_array_equal(t[b].numpy(), condition_stack(batch[b], global_mode))
    # unbatched tensors, and tensors handed to the numpy entry point, take the same path
    single = torch.from_numpy(batch[0]).long()
    np.testing.assert_array_equal(condition_stack_torch(single, global_mode).numpy(), t[0].numpy())
    np.testing.assert_array_equal(condition_stack(single, global_mode).numpy(), t[0].numpy())
    half = condition_stack_torch(torch.from_numpy(batch).long(), global_mode, dtype=torch.float16)
    assert half.dtype == torch.float16
    with pytest.raises(MaskError, match="outside 0..18"):
        condition_stack_torch(torch.full((1, 4, 4), 19), global_mode)
    with pytest.raises(ValueError, match="global_mode"):
        condition_stack(batch[0], "rainbow")
    with pytest.raises(ValueError, match="'official' was renamed.*'gray'.*'palette'"):
        condition_stack(batch[0], "official")


@pytest.mark.parametrize("global_mode", ["gray", "palette"])
def test_stack_round_trip_is_exact(global_mode):
    labels = all_labels()
    assert set(np.unique(labels)) == set(range(NUM_CLASSES))
    stack = condition_stack(labels, global_mode)
    np.testing.assert_array_equal(labels_from_stack(stack, global_mode), labels)
    batch = condition_stack_torch(torch.from_numpy(np.stack([labels, labels[::-1].copy()])).long(), global_mode)
    back = labels_from_stack(batch, global_mode)
    np.testing.assert_array_equal(back, np.stack([labels, labels[::-1]]))


def test_labels_from_stack_checks_its_input():
    labels = all_labels()
    stack = condition_stack(labels)
    wrong_global = stack.copy()
    wrong_global[0, :, 2, 2] += 1 / 255
    with pytest.raises(MaskError, match="global map disagrees"):
        labels_from_stack(wrong_global)
    np.testing.assert_array_equal(labels_from_stack(wrong_global, global_mode=None), labels)
    with pytest.raises(MaskError, match="global map disagrees"):
        labels_from_stack(stack, "gray")  # a palette stack is not a gray stack
    dropped = drop_maps(stack, np.eye(NUM_MAPS, dtype=bool)[4])
    with pytest.raises(MaskError, match="no class"):
        labels_from_stack(dropped)
    with pytest.raises(MaskError, match="expected a stack"):
        labels_from_stack(stack[1:])


def test_drop_maps_numpy_and_torch():
    batch = np.stack([all_labels(seed=s) for s in range(3)])
    stack = condition_stack_torch(torch.from_numpy(batch).long())
    drop = torch.zeros(3, NUM_MAPS, dtype=torch.bool)
    drop[0, [1, 6]] = True  # two local maps
    drop[1, 19] = True
    drop[2] = True  # the whole mask: text-only mode
    out = drop_maps(stack, drop)
    for b in range(3):
        for k in range(NUM_MAPS):
            expected = torch.zeros_like(stack[b, k]) if drop[b, k] else stack[b, k]
            assert torch.equal(out[b, k], expected)
    assert not out[2].any() and out[0, 0].any()
    out_np = drop_maps(stack.numpy(), drop.numpy())
    np.testing.assert_array_equal(out_np, out.numpy())
    assert stack[0, 1].any()  # the input is left alone


@pytest.mark.parametrize("stored", ["P", "RGB"])
def test_default_global_map_is_the_mask_file_rendered_as_stored(tmp_path, stored):
    """DESIGN §2: the official global map is Image.open(mask).convert("RGB"); the data set's masks
    are palette-indexed PNGs with the CelebAMask-HQ palette (or painted in it)."""
    from PIL import Image

    labels = all_labels()
    img = Image.fromarray(labels, "P")
    img.putpalette([int(v) for v in PALETTE.ravel()])
    path = tmp_path / "mask.png"
    (img if stored == "P" else img.convert("RGB")).save(path)
    official = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1) / 255.0
    ours = condition_stack(load_label_map(path))[0]  # the default mode
    np.testing.assert_array_equal(ours, official.astype(np.float32))
