"""Image files read as a viewer shows them: EXIF orientation, 16-bit, alpha, a size bound checked
before decoding; the same in editing, eval, data sets and masks."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from face_mogle.data.masks import MaskError, load_label_map
from face_mogle.image_files import ImageFileError, open_image, read_rgb


def declared_png(path, width, height):
    """A tiny PNG whose header declares width x height (its pixel data is one short zlib stream)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path


def rotated_jpeg(path, upright: np.ndarray):
    """`upright` stored lying on its side, with the EXIF orientation (6: rotate 90° clockwise to view)."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a phone writes
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=100, subsampling=0, exif=exif)
    return path


def upright_face(h=48, w=32):
    face = np.zeros((h, w, 3), np.uint8)
    face[: h // 3] = (200, 30, 30)  # red on top: upright means red rows first
    face[h // 3:] = (30, 30, 200)
    return face


def test_exif_orientation_is_applied(tmp_path):
    face = upright_face()
    path = rotated_jpeg(tmp_path / "phone.jpg", face)
    assert Image.open(path).size == (48, 32)  # stored sideways
    got = np.asarray(read_rgb(path)).astype(int)
    assert got.shape == face.shape and np.abs(got - face).max() < 12
    # masks alike: an EXIF-rotated label map comes out upright
    labels = np.zeros((40, 40), np.uint8)
    labels[:10] = 13  # hair on top
    stored = Image.fromarray(labels, "L").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "mask.png", exif=exif)
    assert np.array_equal(load_label_map(tmp_path / "mask.png"), labels)


def test_16_bit_grey_is_scaled_not_white(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    got = np.asarray(read_rgb(tmp_path / "grey16.png"))
    want = np.round(ramp / 257.0).astype(np.uint8)
    assert got.shape == (64, 64, 3) and np.array_equal(got[..., 0], want) and np.array_equal(got[..., 2], want)
    assert got.min() == 0 and 250 < got.max() <= 255


def test_alpha_is_laid_over_white_with_a_note(tmp_path, caplog):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (0, 0, 255)
    rgba[..., 3] = 255
    rgba[:4, :, 3] = 0  # the top half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    with caplog.at_level("WARNING"):
        got = np.asarray(read_rgb(tmp_path / "cut.png"))
    assert (got[:4] == 255).all() and (got[4:] == (0, 0, 255)).all()
    assert len(caplog.records) == 1 and "cut.png: 50% of the pixels are transparent: laid over white" in caplog.text
    caplog.clear()
    rgba[..., 3] = 255  # an opaque alpha channel: no note
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    with caplog.at_level("WARNING"):
        read_rgb(tmp_path / "opaque.png")
    assert not caplog.records


@pytest.mark.parametrize("side", [10000, 30000])
def test_declared_size_is_checked_before_decoding(tmp_path, side):
    path = declared_png(tmp_path / "bomb.png", side, side)
    assert path.stat().st_size < 200
    with pytest.raises(ImageFileError, match="bomb.png: declares") as err:
        open_image(path)
    assert "sample.max_input_pixels" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MaskError, match="bomb.png: declares"):
        load_label_map(path)
    with pytest.raises(ImageFileError, match="declares 100x100 pixels, more than the 9999 allowed"):
        open_image(declared_png(tmp_path / "small.png", 100, 100), max_pixels=9999)


def test_eval_and_data_sets_read_the_same_way(tmp_path):
    from face_mogle.data.dataset import DataError, load_face
    from face_mogle.eval.errors import EvalError
    from face_mogle.eval.images import load_rgb

    face = upright_face(32, 32)
    path = rotated_jpeg(tmp_path / "phone.jpg", face)
    assert np.abs(np.asarray(load_rgb(path)).astype(int) - face).max() < 12
    tensor = load_face(path, 32)
    assert np.abs((tensor.permute(1, 2, 0).numpy() * 255).round() - face).max() < 12
    ramp = np.full((16, 16), 32896, np.uint16)  # mid-grey at 16 bits
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert (np.asarray(load_rgb(tmp_path / "grey16.png")) == 128).all()
    bomb = declared_png(tmp_path / "bomb.png", 10000, 10000)
    with pytest.raises(EvalError, match="bomb.png: declares 10000x10000"):
        load_rgb(bomb)
    with pytest.raises(DataError, match="bomb.png: declares 10000x10000"):
        load_face(bomb, 32)


def test_editing_reads_faces_upright_and_bounded(pipe, tmp_path, monkeypatch):
    from face_mogle.editing import load_face
    from face_mogle.pipeline import SamplingError
    from sampling_helpers import SIZE, draw_mask

    face = upright_face(SIZE, SIZE)
    path = rotated_jpeg(tmp_path / "phone.jpg", face)
    assert np.abs(load_face(path, SIZE).astype(int) - face).max() < 12
    bomb = declared_png(tmp_path / "bomb.png", 10000, 10000)
    lab = draw_mask(0, SIZE)
    with pytest.raises(SamplingError, match="bomb.png: declares 10000x10000"):
        pipe.edit(str(bomb), lab, "", lab, regions=["hair"])
    # the bound is the run config's sample.max_input_pixels
    monkeypatch.setattr(pipe.cfg.sample, "max_input_pixels", SIZE * SIZE - 1)
    with pytest.raises(SamplingError, match=f"more than the {SIZE * SIZE - 1} allowed"):
        pipe.edit(str(path), lab, "", lab, regions=["hair"])
    Image.fromarray(lab).save(tmp_path / "mask.png")
    with pytest.raises(MaskError, match=f"more than the {SIZE * SIZE - 1} allowed"):
        pipe(["a"], [str(tmp_path / "mask.png")], seeds=[0], steps=1)


def test_a_non_square_mask_is_refused_like_a_non_square_face(pipe):
    from face_mogle.pipeline import SamplingError
    from sampling_helpers import SIZE, draw_mask

    wide = np.zeros((SIZE, SIZE + 8), np.uint8)
    with pytest.raises(MaskError, match=f"the mask is {SIZE + 8}x{SIZE}: it must be square"):
        pipe("a face", wide, seeds=[0], steps=1)
    with pytest.raises(SamplingError, match="must be square"):
        pipe.edit(np.zeros((SIZE, SIZE + 8, 3), np.uint8), draw_mask(0, SIZE), "", draw_mask(0, SIZE))
    with pytest.raises(MaskError, match="must be square"):
        pipe.edit(np.zeros((SIZE, SIZE, 3), np.uint8), wide, "", draw_mask(0, SIZE))


def test_fid_refuses_what_clean_fids_reader_would_read_wrong(tmp_path):
    from face_mogle.eval.errors import EvalError
    from face_mogle.eval.fid import inception_features

    Image.fromarray(upright_face(16, 16)).save(tmp_path / "plain.png")
    phone = rotated_jpeg(tmp_path / "phone.jpg", upright_face(16, 16))
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(tmp_path / "grey16.png")
    declared_png(tmp_path / "bomb.png", 10000, 10000)
    for name, message in (("phone.jpg", "an EXIF orientation"), ("grey16.png", "more than 8 bits"),
                          ("bomb.png", "declares 10000x10000")):
        with pytest.raises(EvalError, match=message):  # before any model work (there is no model here)
            inception_features([tmp_path / "plain.png", tmp_path / name], None, "clean", "cpu", 2, 16, 0, "x")
