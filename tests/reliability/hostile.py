"""Hostile inputs shared by the bad-input tests: junk JSON, ROI shapes, broken and odd
images, decompression bombs, traversal ids, and the process/disk probes that judge the
outcome; also the names, the tally and the helpers several bad-input or security test files
share.

No tests here. Every generator is deterministic (hypothesis runs derandomized, the rest
takes a seed), so a failure reproduces.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# -- hypothesis set-up -------------------------------------------------------------------


def bounded(max_examples: int) -> settings:
    """The same inputs on every run, no example database, no per-example deadline."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture
def hypothesis_home(tmp_path: Path) -> Iterator[None]:
    """Hypothesis's caches go to this test's temp dir, not a .hypothesis/ in the repo."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path / "hypothesis")
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture
def gradual_underflow() -> Iterator[None]:
    """Hypothesis draws subnormal floats, which the engine's CPU set-up flushes to zero on
    the thread that loaded the backbone (this one). Only this thread's setting changes."""
    import torch

    flushing = sys.float_info.min / 2 == 0.0
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(flushing)


# -- names shared by the test files ------------------------------------------------------

# The bad-input tests' ROI and scale.
ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
MM = 0.2
REFUSALS = ("bad_request", "payload_too_large")  # what bad input may be answered with

# The security tests' reliability family and scale.
SECURITY = "security"
MM_PER_PX = 0.2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Tally:
    """What a property run saw: inputs tried, outcomes by kind, misbehaviour (kept short)."""

    def __init__(self) -> None:
        self.tried = 0
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []

    def saw(self, outcome: str) -> None:
        self.tried += 1
        self.outcomes[outcome] += 1

    def fail(self, what: str) -> None:
        self.tried += 1
        self.failures.append(what[:300])

    def record(self, record_property: Callable[[str, object], None], lost: int = 0) -> None:
        record_property("tried", self.tried)
        record_property("failures", len(self.failures))
        record_property("lost", lost)
        shown = ", ".join(f"{k} {v}" for k, v in self.outcomes.most_common())
        first = f"; first failure: {self.failures[0]}" if self.failures else ""
        record_property("detail", f"{shown}{first}")


# -- junk JSON ---------------------------------------------------------------------------

# Values a parser meets in the field: numbers past float range, NaN spelt as text, lone
# surrogates (valid JSON escapes, invalid Unicode), control characters, traversal.
NASTY_SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    -0.0,
    5e-324,
    1e308,
    -1e308,
    10**400,
    -(10**400),
    2**63,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    " ",
    "0.2",
    "1e999",
    "nan",
    "-inf",
    "true",
    "\ud800",
    "a\udcffb",
    "\x00",
    "\x1b[2J",
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    "ünï©ødé 検査",
    "x" * 300,
]

scalars = st.one_of(
    st.sampled_from(NASTY_SCALARS),
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)

json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)

# A JSON document nested far deeper than any parser's recursion limit.
DEEP_JSON = "[" * 100_000 + "]" * 100_000

# -- ROI shapes --------------------------------------------------------------------------

COORD = st.one_of(st.integers(-40, 300), st.floats(-40.0, 300.0), scalars)
SHAPE_FIELDS = ("x", "y", "w", "h", "cx", "cy", "r", "r_outer", "r_inner")


FIELDS_OF = {
    "rect": ("x", "y", "w", "h"),
    "circle": ("cx", "cy", "r"),
    "annulus": ("cx", "cy", "r_outer", "r_inner"),
}
PLAIN = st.integers(-40, 300) | st.floats(-40.0, 300.0)


@st.composite
def shapes(draw: st.DrawFn) -> Any:
    """Whole shapes of every kind with random numbers, the same with one field broken,
    random field sets, their JSON strings, and junk."""
    form = draw(st.sampled_from(["whole", "whole", "broken", "random", "json", "junk"]))
    if form == "junk":
        return draw(
            json_values
            | st.sampled_from([DEEP_JSON, '{"kind":"rect","x":' + "9" * 5000 + "}", "{", "null"])
        )
    shape: dict[str, Any] = {}
    kind = draw(st.sampled_from(["rect", "circle", "annulus", "polygon"]))
    if form in ("whole", "broken", "json"):
        shape["kind"] = kind
        if kind == "polygon":
            shape["points"] = draw(st.lists(st.lists(PLAIN, min_size=2, max_size=2), max_size=8))
        for name in FIELDS_OF.get(kind, ()):
            shape[name] = draw(PLAIN)
        if form == "broken":
            shape[draw(st.sampled_from(sorted(shape)))] = draw(scalars)
    else:
        if draw(st.integers(0, 9)):
            shape["kind"] = draw(st.sampled_from(sorted(FIELDS_OF)) | scalars)
        for name in SHAPE_FIELDS:
            if draw(st.booleans()):
                shape[name] = draw(COORD)
        if draw(st.booleans()):
            point = st.lists(COORD, min_size=1, max_size=3) | scalars
            shape["points"] = draw(st.lists(point, max_size=8) | json_values)
    return json.dumps(shape) if form == "json" else shape


# -- images ------------------------------------------------------------------------------

FORMATS = (".png", ".jpg", ".bmp", ".tiff")


def encode(ext: str, image: np.ndarray) -> bytes | None:
    """OpenCV's encoding, or None when OpenCV cannot write this dtype/channels/format."""
    import cv2

    try:
        ok, buf = cv2.imencode(ext, image)
    except cv2.error:
        return None
    return buf.tobytes() if ok else None


def supported(ext: str, image: np.ndarray) -> bool:
    """What the contract promises to decode: 8-bit (any format) and 16-bit (PNG/TIFF),
    gray, 3 or 4 channels."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3, 4):
        return False
    if image.dtype == np.uint8:
        return not (ext == ".jpg" and channels == 4)
    return image.dtype == np.uint16 and ext in (".png", ".tiff")


SIDES = st.one_of(st.integers(1, 48), st.sampled_from([1, 2, 13, 14, 15, 97]))


@st.composite
def odd_images(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    """An image of a random size (1xN, huge aspect ratios), dtype and channel count."""
    if draw(st.booleans()):
        height, width = draw(SIDES), draw(SIDES)
    else:  # a strip: 1 x 3000, 4000 x 2...
        long_side, short_side = draw(st.integers(500, 4000)), draw(st.integers(1, 3))
        height, width = (long_side, short_side) if draw(st.booleans()) else (short_side, long_side)
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.int16, np.int32, np.float64]))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (height, width) if channels is None else (height, width, channels)
    if np.issubdtype(dtype, np.floating):
        pixels = rng.normal(0.5, 2.0, shape).astype(dtype)
        pixels.flat[0] = draw(st.sampled_from([0.0, np.nan, np.inf, -np.inf, 1e30]))
    else:
        info = np.iinfo(dtype)
        pixels = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return draw(st.sampled_from(FORMATS)), pixels


@st.composite
def corrupted_encodings(draw: st.DrawFn) -> bytes:
    """A real PNG/JPEG/BMP/TIFF, then truncated, bit-flipped, spliced or with a forged
    size in its header."""
    ext = draw(st.sampled_from(FORMATS))
    side = draw(st.integers(8, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = bytearray(encode(ext, rng.integers(0, 255, (side, side, 3), np.uint8)) or b"")
    how = draw(st.sampled_from(["truncate", "flip", "splice", "forge"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 16))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])
    width = draw(st.sampled_from([0, 1, 30_000, 65_535, 2**31 - 1]) | st.integers(0, 2**32 - 1))
    height = draw(st.sampled_from([0, 1, 30_000, 65_535, 2**31 - 1]) | st.integers(0, 2**32 - 1))
    return forge_size(bytes(data), width, height)


def forge_size(data: bytes, width: int, height: int) -> bytes:
    """The same encoding with another width/height in its header (a PNG's CRC is fixed
    up, so the decoder believes it); a TIFF is rebuilt with a token strip."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    elif data.startswith(b"\xff\xd8"):
        pos = _jpeg_sof(data)
        if pos is not None:
            out[pos + 5 : pos + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    elif data.startswith(b"BM"):
        out[18:26] = struct.pack("<ii", width & 0x7FFFFFFF, height & 0x7FFFFFFF)
    elif data[:4] == b"II*\x00":
        return tiff_with_size(width & 0xFFFFFFFF, height & 0xFFFFFFFF, zlib.compress(b"\x00" * 64))
    return bytes(out)


def _jpeg_sof(data: bytes) -> int | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker in (0xC0, 0xC1, 0xC2):
            return pos
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


image_bytes = st.one_of(
    st.binary(max_size=512),
    st.tuples(
        st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*"]),
        st.binary(max_size=256),
    ).map(lambda parts: parts[0] + parts[1]),
    corrupted_encodings(),
)

# -- decompression bombs -----------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zeros_deflate(total: int, block: int) -> bytes:
    """A valid zlib stream of ``total`` zero bytes, built in a blink: after a full flush,
    each further block of zeros compresses to the same bytes, so the stream is one block
    repeated (``total`` must be a multiple of ``block``)."""
    assert total % block == 0
    chunk = bytes(block)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: header and sum below
    first = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeat = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    body = first + repeat * (total // block - 1) + deflate.flush()
    adler = ((total % 65521) << 16) | 1  # Adler-32 of zeros: a = 1, b = n mod 65521
    return b"\x78\xda" + body + struct.pack(">I", adler)


def png_bomb(width: int = 30_000, height: int = 30_000, real: bool = True) -> bytes:
    """An RGB PNG of ``width`` x ``height`` black pixels: 2.6 MB on the wire for 30000 x
    30000 (2.7 GB decoded). ``real=False``: the header only, with a token of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    if real:
        assert height % 100 == 0
        idat = zeros_deflate((width * 3 + 1) * height, (width * 3 + 1) * 100)
    else:
        idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def tiff_with_size(width: int, height: int, strip: bytes, channels: int = 1) -> bytes:
    """A little-endian TIFF, one deflate-compressed strip, that declares ``width`` x
    ``height`` 8-bit pixels."""
    extra = b""
    base = 8  # the IFD follows the header; out-of-line values follow the IFD
    ifd_size = 2 + 12 * 10 + 4  # ten entries
    if channels == 1:
        bits = (258, 3, 1, 8)
    else:
        bits = (258, 3, channels, base + ifd_size)
        extra = struct.pack(f"<{channels}H", *([8] * channels))
    strip_at = base + ifd_size + len(extra)
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value or offset
        (256, 4, 1, width),
        (257, 4, 1, height),
        bits,
        (259, 3, 1, 8),  # Adobe deflate
        (262, 3, 1, 1 if channels == 1 else 2),  # BlackIsZero / RGB
        (273, 4, 1, strip_at),
        (277, 3, 1, channels),
        (278, 4, 1, height),
        (279, 4, 1, len(strip)),
        (284, 3, 1, 1),  # contiguous samples
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 and count == 1 else None
        ifd += struct.pack("<HHI", tag, kind, count) + (packed or struct.pack("<I", value))
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", base) + ifd + extra + strip


def tiff_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """An RGB TIFF of black pixels: 2.6 MB for 30000 x 30000 (2.7 GB decoded)."""
    strip = zeros_deflate(width * 3 * height, width * 3 * 100)
    return tiff_with_size(width, height, strip, channels=3)


def jpeg_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A small real JPEG whose frame header claims ``width`` x ``height``: the decoder pads
    the missing data, so it costs the declared size in memory."""
    data = encode(".jpg", np.zeros((16, 16, 3), np.uint8))
    assert data is not None
    return forge_size(data, width, height)


# -- ids that try to leave the data root -------------------------------------------------

TRAVERSAL_IDS: list[str] = [
    "../../etc",
    "..",
    ".",
    "../sentinel",
    "/abs",
    "/",
    "a/../../b",
    "..\\..\\windows",
    "%2e%2e%2f",
    "\x00",
    "a\x00b",
    "tab\there",
    "new\nline",
    "\x7f",
    "\ud800",
    "ünï©ødé 検査 🔧",
    "x" * 90,
    "é" * 45,  # 90 bytes exactly
    "x" * 91,
    "é" * 46,  # 92 bytes
    "last",
    "LAST",
    " ",
    "~",
    "$HOME",
    "con",
    "CON.txt",
]


def tree_state(root: Path, skip: Path | None = None) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``root`` (not following links), with kind, size and mtime."""
    state: dict[str, tuple[str, int, int]] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        if skip is not None and (here == skip or skip in here.parents):
            dirs.clear()
            continue
        for name in dirs + files:
            path = here / name
            if skip is not None and path == skip:
                continue
            st_ = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            # A folder's own mtime moves when an entry is added: the entry itself shows.
            sig = (0, 0) if kind == "dir" else (st_.st_size, st_.st_mtime_ns)
            state[str(path.relative_to(root))] = (kind, *sig)
    return state


def escapes(data_root: Path) -> list[str]:
    """Entries under the data root that are links, or whose real path lies outside it."""
    real_root = data_root.resolve()
    bad = []
    for folder, dirs, files in os.walk(data_root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink() or not path.resolve().is_relative_to(real_root):
                bad.append(str(path))
    return bad


# -- memory of this process ---------------------------------------------------------------


def status_kb(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux's clear_refs "5"); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
