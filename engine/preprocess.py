"""Image decoding, limits and resizing to the ViT's 14-px patch grid."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from engine.errors import BadInput, TooLarge

PATCH = 14
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# The contract's formats; the header's declared size is read for these only.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


DEFAULT_LIMITS = DecodeLimits()


def cv2_module(max_pixels: int = DecodeLimits.max_pixels) -> ModuleType:
    """Import OpenCV on first use.

    OpenCV reads ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, when a decoder first runs: setting
    it before then makes the decoder itself refuse a decompression bomb from the
    header, before any pixel buffer is allocated.
    """
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels))
    import cv2

    return cv2


def decode_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF bytes into an RGB image.

    Gray, alpha, 16-bit and float inputs are converted. Returns (H, W, 3) uint8 RGB.
    Raises ``BadInput`` for empty or undecodable bytes, ``TooLarge`` over the limits.
    """
    if not data:
        raise BadInput("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise TooLarge(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}")
    # The header's size is checked before OpenCV allocates anything: its own pixel limit
    # only holds when this module imported it first (it reads the variable at import).
    width, height = declared_size(data)
    if width <= 0 or height <= 0:
        raise BadInput(f"image header declares no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"image declares {width}x{height} pixels, over the limit of {limits.max_pixels}"
        )
    cv2 = cv2_module(limits.max_pixels)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises on some malformed headers
        raise BadInput(f"image could not be decoded: {exc}") from None
    if img is None or img.size == 0:
        raise BadInput(
            "image could not be decoded (not PNG/JPEG/BMP/TIFF, truncated, "
            f"or over {limits.max_pixels} pixels)"
        )
    height, width = img.shape[:2]
    if height * width > limits.max_pixels:
        raise TooLarge(f"image is {width}x{height} pixels, over the limit of {limits.max_pixels}")
    return _to_rgb8(img, cv2)


def declared_size(data: bytes) -> tuple[int, int]:
    """(width, height) as the header of PNG/JPEG/BMP/TIFF bytes declares it: Pillow reads
    headers lazily, so no pixel is decoded. Raises ``BadInput`` for any other format or an
    unreadable header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as header:
            return header.size
    except Image.DecompressionBombError as exc:  # Pillow's own, far higher, limit
        raise TooLarge(f"image declares too many pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadInput(f"image is not a readable PNG/JPEG/BMP/TIFF ({exc})") from None


def _to_rgb8(img: np.ndarray, cv2: ModuleType) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        finite = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if float(finite.max(initial=0.0)) <= 1.0 else 1.0
        img = np.clip(finite * scale, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise BadInput(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise BadInput(f"unsupported channel count {channels}")


def grid_size(height: int, width: int, input_size: int) -> tuple[int, int]:
    """Resized (H, W): the long side scaled to ``input_size``, each side a multiple of 14."""
    if height <= 0 or width <= 0:
        raise BadInput(f"image has no pixels ({width}x{height})")
    scale = input_size / max(height, width)
    rows = max(1, round(height * scale / PATCH))
    cols = max(1, round(width * scale / PATCH))
    return rows * PATCH, cols * PATCH


def token_shape_for(height: int, width: int, input_size: int) -> tuple[int, int]:
    rows, cols = grid_size(height, width, input_size)
    return rows // PATCH, cols // PATCH


def resize_to_grid(image: np.ndarray, input_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 with H', W' multiples of 14."""
    cv2 = cv2_module()
    rows, cols = grid_size(image.shape[0], image.shape[1], input_size)
    if (rows, cols) == image.shape[:2]:
        return image
    shrinking = rows * cols < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (cols, rows), interpolation=interp)


def normalise(batch: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32, ImageNet mean/std."""
    x = batch.astype(np.float32) * (1.0 / 255.0)
    x -= IMAGENET_MEAN
    x /= IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
