"""Image decoding with explicit handling of bad inputs, and the one resize used everywhere.

* Every mode Pillow can open is converted to 8-bit RGB rather than rejected: ``L``, ``LA``,
  ``P``, ``RGBA`` (alpha dropped), ``CMYK``, 16-bit ``I;16*`` (scaled by 255/65535), ``I``
  (taken as 16-bit data, as Pillow reports some 16-bit files), ``F`` (``[0, 1]`` if its maximum
  is <= 1, else ``[0, 255]``, clipped).
* Decompression-bomb guard: images with more than :data:`MAX_PIXELS` pixels are refused
  before their pixels are decoded.
* Missing, truncated or corrupt files raise :class:`DatasetFormatError` naming the file.
  Truncated files are never loaded partially: this module never sets Pillow's
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` (it must stay False) and decodes inside the ``try``.
* EXIF orientation is deliberately *not* applied: annotations refer to the stored pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simsc.data.annotations import DatasetFormatError, Resolution, parse_resolution

#: Default decompression-bomb limit (pixels); change it here or pass ``max_pixels``.
MAX_PIXELS: int = 64_000_000

_EXPECTED = "expected a complete image file readable by Pillow (JPEG/PNG)"


def _limit(max_pixels: int | None) -> int:
    return MAX_PIXELS if max_pixels is None else int(max_pixels)


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    limit = _limit(max_pixels)
    if width * height > limit:
        raise DatasetFormatError(
            f"{path}: image is {width}x{height} = {width * height} pixels, over the decompression-bomb "
            f"limit of {limit} pixels (raise simsc.data.images.MAX_PIXELS or pass max_pixels if it is genuine)"
        )


def _open_error(path: Path, e: BaseException) -> DatasetFormatError:
    if isinstance(e, FileNotFoundError) or not path.exists():
        return DatasetFormatError(f"{path}: image file not found; {_EXPECTED}")
    if isinstance(e, Image.DecompressionBombError):
        return DatasetFormatError(f"{path}: refused by Pillow's decompression-bomb guard ({e})")
    return DatasetFormatError(f"{path}: cannot decode image ({e}); {_EXPECTED}, is it truncated or corrupt?")


def read_image_size(path: str | os.PathLike[str], max_pixels: int | None = None) -> tuple[int, int]:
    """``(H, W)`` from the file header only (cheap); same errors as :func:`load_image`."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _open_error(path, e) from e
    _check_pixels(path, w, h, max_pixels)
    return h, w


def listed_image_size(sizes: dict[str, tuple[int, int]], root: Path, relpath: str, where: str) -> tuple[int, int]:
    """``(H, W)`` of the image ``relpath`` (below ``root``) a pair list names at ``where``, read
    once per image into the cache ``sizes``; a missing image is a :class:`DatasetFormatError`."""
    if relpath not in sizes:
        path = root / relpath
        if not path.is_file():
            raise DatasetFormatError(
                f"{where}: image {path} not found (paths in the pair list are relative to the root)"
            )
        sizes[relpath] = read_image_size(path)
    return sizes[relpath]


def _to_rgb8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)
        # Rounded 16 -> 8 bit scaling (65535 -> 255); Pillow's own convert would clip instead.
        g = ((np.clip(a, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if mode == "F":
        f = np.nan_to_num(np.asarray(im, dtype=np.float64))
        if f.size and f.max() <= 1.0:
            f = f * 255.0
        g = np.clip(np.rint(f), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to a uint8 ``H x W x 3`` RGB array (see the module docstring)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            _check_pixels(path, im.size[0], im.size[1], max_pixels)
            im.load()  # inside the try: truncated data raises here instead of half-loading
            arr = _to_rgb8(im)
    except DatasetFormatError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _open_error(path, e) from e
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()  # Pillow's buffers are read-only


def resize_uint8(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased resize of a uint8 ``H x W x 3`` image to ``size = (H, W)``.

    Runs on uint8 directly (torch's channels-last uint8 kernel, ~50x faster than float on
    CPU, within 1 grey level of it); the cached and uncached paths both use it, so they give
    bit-identical images.
    """
    if tuple(img.shape[:2]) == tuple(size):
        return img
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)  # NCHW view, channels-last memory
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].permute(1, 2, 0).contiguous().numpy()


def target_size(orig_hw: tuple[int, int], resolution: Resolution) -> tuple[int, int]:
    """Returned ``(H, W)`` for an image of ``orig_hw`` under a resolution mode."""
    return tuple(orig_hw) if resolution == "original" else (int(resolution), int(resolution))  # type: ignore[return-value]


def decode_resized(path: str | Path, resolution: Resolution) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode and resize one image: ``(uint8 H x W x 3 at the resolution, original (H, W))``."""
    img = load_image(path)
    orig = (int(img.shape[0]), int(img.shape[1]))
    return resize_uint8(img, target_size(orig, resolution)), orig


class DirectImages:
    """Image source that decodes the file on every access (no cache)."""

    def __init__(self, root: str | Path, resolution: Resolution | str) -> None:
        self.root = Path(root)
        self.resolution = parse_resolution(resolution)

    def get(self, relpath: str) -> tuple[np.ndarray, tuple[int, int]]:
        """``(image at the resolution, original (H, W))`` for a path relative to the root."""
        return decode_resized(self.root / relpath, self.resolution)
