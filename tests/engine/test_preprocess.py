import struct
import zlib

import cv2
import numpy as np
import pytest

from engine.errors import BadInput, TooLarge
from engine.preprocess import DecodeLimits, decode_image, grid_size, resize_to_grid


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height but carries almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff"])
def test_formats_decode_to_rgb8(ext: str) -> None:
    bgr = np.zeros((30, 40, 3), np.uint8)
    bgr[:, :, 2] = 200  # red in OpenCV's BGR order
    rgb = decode_image(_encode(ext, bgr))
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].mean() > 150 and rgb[..., 2].mean() < 50


def test_gray_16bit_and_alpha_become_rgb8() -> None:
    gray16 = np.full((20, 20), 65535, np.uint16)
    assert decode_image(_encode(".png", gray16)).tolist() == np.full((20, 20, 3), 255).tolist()
    bgra = np.zeros((10, 10, 4), np.uint8)
    bgra[..., 1] = 99
    out = decode_image(_encode(".png", bgra))
    assert out.shape == (10, 10, 3) and int(out[0, 0, 1]) == 99


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is a text file\n", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10],
    ids=["empty", "text", "header-only"],
)
def test_undecodable_bytes_are_bad_input(data: bytes) -> None:
    with pytest.raises(BadInput):
        decode_image(data)


def test_truncated_png_is_bad_input() -> None:
    data = _encode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    with pytest.raises(BadInput):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_header_is_refused_before_allocating() -> None:
    with pytest.raises((BadInput, TooLarge)):
        decode_image(_png_with_header(100_000, 100_000))


def test_byte_and_pixel_limits() -> None:
    data = _encode(".png", np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(TooLarge, match="bytes"):
        decode_image(data, DecodeLimits(max_bytes=10))
    with pytest.raises(TooLarge, match="pixels"):
        decode_image(data, DecodeLimits(max_pixels=5_000))


@pytest.mark.parametrize(
    ("hw", "size", "expected"),
    [((448, 448), 448, (448, 448)), ((100, 200), 448, (224, 448)), ((300, 250), 112, (112, 98))],
)
def test_resize_keeps_aspect_on_the_14px_grid(hw, size, expected) -> None:
    assert grid_size(*hw, size) == expected
    image = np.zeros((*hw, 3), np.uint8)
    assert resize_to_grid(image, size).shape[:2] == expected
