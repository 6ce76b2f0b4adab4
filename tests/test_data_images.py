"""Image decoding: mode conversions, decompression-bomb guard, missing / truncated / corrupt files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from simsc.data import images
from simsc.data.images import load_image, read_image_size, resize_uint8
from simsc.data.records import DatasetFormatError
from tests import data_fixtures as fx


def check_rgb8(arr, h, w):
    assert arr.dtype == np.uint8 and arr.shape == (h, w, 3) and arr.flags.writeable


def test_rgb_jpeg_and_png(tmp_path):
    jpg = fx.make_image(tmp_path / "a.jpg", 50, 30)
    check_rgb8(load_image(jpg), 30, 50)
    assert read_image_size(jpg) == (30, 50)
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "b.png")
    assert np.array_equal(load_image(tmp_path / "b.png"), arr)  # lossless round trip


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1"])
def test_modes_converted_to_rgb(tmp_path, mode):
    path = fx.make_image(tmp_path / f"m_{mode}.png", 20, 10, mode=mode)
    out = load_image(path)
    check_rgb8(out, 10, 20)
    if mode in ("L", "LA"):
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_rgba_keeps_colour_drops_alpha(tmp_path):
    im = Image.new("RGBA", (4, 3), (10, 20, 30, 0))
    im.save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[0, 0].tolist() == [10, 20, 30]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 8), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    check_rgb8(out, 8, 16)
    assert out.min() >= 250  # no ink = white


def test_16bit_png_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 100, 65535, 128]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    check_rgb8(out, 1, 4)
    # value * 255 / 65535, rounded: 0, 100, 255, 0.498 -> 0
    assert out[0, :, 0].tolist() == [0, 100, 255, 0]


def test_32bit_int_and_float_images(tmp_path):
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert load_image(tmp_path / "i.tif")[0, :, 0].tolist() == [0, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert load_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    path = fx.make_image(tmp_path / "big.png", 100, 50)
    with pytest.raises(DatasetFormatError, match=r"big\.png: image is 100x50 = 5000 pixels, over .* limit of 4999"):
        load_image(path, max_pixels=4999)
    check_rgb8(load_image(path, max_pixels=5000), 50, 100)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)  # the module-level default
    with pytest.raises(DatasetFormatError, match="decompression-bomb"):
        load_image(path)
    with pytest.raises(DatasetFormatError, match="decompression-bomb"):
        read_image_size(path)


def _png_header(path, width: int, height: int):
    """A PNG that declares ``width x height`` and holds no pixel data: the size checks run before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


def test_default_limit_refuses_just_over_64_megapixels(tmp_path):
    at = _png_header(tmp_path / "at.png", 8000, 8000)  # exactly 64,000,000 pixels: allowed
    assert read_image_size(at) == (8000, 8000)
    over = _png_header(tmp_path / "over.png", 8000, 8001)
    msg = r"over\.png: image is 8000x8001 = 64008000 pixels, over the decompression-bomb limit of 64000000 pixels"
    for read in (read_image_size, load_image):
        with pytest.raises(DatasetFormatError, match=msg):
            read(over)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"nope\.jpg: image file not found; expected"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(DatasetFormatError, match="not found"):
        read_image_size(tmp_path / "nope.jpg")


def test_truncated_jpeg_is_an_error_not_a_partial_image(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = fx.make_image(tmp_path / "full.jpg", 120, 80).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert read_image_size(tmp_path / "cut.jpg") == (80, 120)  # the header alone is intact
    with pytest.raises(DatasetFormatError, match=r"cut\.jpg: cannot decode image .*truncated"):
        load_image(tmp_path / "cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_garbage_file(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"this is not an image")
    with pytest.raises(DatasetFormatError, match=r"x\.jpg: cannot decode image"):
        load_image(tmp_path / "x.jpg")


def test_resize_uint8_matches_float_antialias_within_one_level():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (75, 100, 3), dtype=np.uint8)
    out = resize_uint8(img, (32, 40))
    assert out.shape == (32, 40, 3) and out.dtype == np.uint8
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(32, 40), mode="bilinear",
        align_corners=False, antialias=True,
    )[0].permute(1, 2, 0)  # fmt: skip
    assert (torch.from_numpy(out).float() - ref).abs().max() <= 1.0
    assert resize_uint8(img, (75, 100)) is img  # same size: untouched
    flat = np.full((10, 10, 3), 77, np.uint8)
    assert np.unique(resize_uint8(flat, (256, 256))).tolist() == [77]  # upsampling works too
