"""Synthetic brake-disc ROI crops with pixel-exact defect masks.

The generator draws what a camera over a machined, drilled brake disc sees: a dark
background, the friction face as an annulus with concentric machining marks and a ring of
drilled cooling holes, and the hub inside it. Lighting, pose, tint and sensor noise vary per
disc. A defect disc is the same picture plus one defect painted on the friction face, with
its ground-truth mask.

Everything is driven by the `numpy.random.Generator` passed in, so a seed fixes every pixel.
All base-image randomness is drawn before any defect randomness: an OK disc and a defect disc
made from equally seeded generators are identical outside the defect's immediate
neighbourhood, which the tests use to check that a defect really changes the pixels it claims.

Coordinates are pixel indices (x = column, y = row, pixel centres at integers); all linear
sizes scale with the short image side ``s = min(H, W)``, with pixel minimums so that 112 px
crops still show every defect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["DEFECT_KINDS", "SyntheticDisc", "decode_png", "encode_png", "make_disc", "make_set"]

F32 = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
U8 = npt.NDArray[np.uint8]

DEFECT_KINDS: tuple[str, ...] = ("scratch", "crack", "rust", "pits", "edge_chip")

# Nominal geometry as fractions of the short image side.
_R_OUTER = 0.46
_R_INNER = 0.22
_HOLE_RING = 0.335
_HUB_HAT = 0.19
_HUB_BORE = 0.085
_LUG_RING = 0.155

# Sizes below this leave too few pixels between the holes and the edges to place defects.
_MIN_SIDE = 80
# cv2 draws with fixed-point coordinates; 4 fractional bits keep thin lines sub-pixel smooth.
_SHIFT = 4
_FIX = float(1 << _SHIFT)
_MAX_TRIES = 96
_SHRINK_EVERY = 16

_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True, eq=False)
class SyntheticDisc:
    """One synthetic crop.

    ``eq=False`` because field-wise equality of numpy arrays is ambiguous; compare the arrays
    explicitly (``np.array_equal``).

    Attributes:
        image: (H, W, 3) uint8, RGB.
        defect_mask: (H, W) bool ground truth; all False for an OK disc.
        kind: ``"ok"`` or one of `DEFECT_KINDS`.
        roi_shape: nominal ROI as the project's JSON shape,
            ``{"kind": "annulus", "cx", "cy", "r_outer", "r_inner"}`` in image pixels
            (floats, pixel-centre coordinates, without the per-disc pose jitter).
    """

    image: U8
    defect_mask: BoolArray
    kind: str
    roi_shape: dict[str, Any]


@dataclass(frozen=True)
class _Geometry:
    """Where things are on one disc; ``cx .. r_inner`` include the pose jitter."""

    h: int
    w: int
    s: float
    cx: float
    cy: float
    r_outer: float
    r_inner: float
    nominal_cx: float
    nominal_cy: float
    nominal_r_outer: float
    nominal_r_inner: float
    holes: F32  # (n, 2) x, y of the cooling-hole centres
    hole_angles: F32  # (n,) radians, increasing
    hole_r: float
    scale: float  # the pose jitter's radius factor


@dataclass(frozen=True)
class _Base:
    """The defect-free picture as layers; defects edit ``face`` and ``cover`` in place.

    All (H, W) float32 unless noted: ``face`` is the friction-face gray level, ``cover`` its
    coverage (0 = show ``under``), ``under`` background plus hub, ``r`` the radius from the
    jittered centre, ``light`` the multiplicative lighting field.
    """

    face: F32
    cover: F32
    under: F32
    r: F32
    light: F32
    offset: float
    tint: F32  # (3,) RGB gains
    noise: F32  # (H, W, 3) sensor noise, already scaled


@dataclass(frozen=True)
class _Patch:
    """A coloured overlay (rust) blended after lighting: alpha (h, w), rgb (h, w, 3)."""

    y0: int
    x0: int
    alpha: F32
    rgb: F32


# ---------------------------------------------------------------------------------------------
# public API


def make_disc(
    rng: np.random.Generator,
    size: int = 448,
    defect: str | None = None,
    width: int | None = None,
) -> SyntheticDisc:
    """Render one disc crop of shape (size, width or size, 3).

    Args:
        rng: the only source of randomness; equally seeded generators give identical discs.
        size: image height in pixels (>= 80).
        defect: None (or ``"ok"``) for an OK disc, else one of `DEFECT_KINDS`.
        width: image width; defaults to ``size``. Non-square crops keep the disc centred and
            scale it to the short side.

    Raises:
        ValueError: unknown ``defect`` or too small an image.
    """
    kind = _check_kind(defect)
    h = int(size)
    w = h if width is None else int(width)
    if min(h, w) < _MIN_SIDE:
        raise ValueError(f"image {h}x{w} too small; both sides must be >= {_MIN_SIDE}")

    geo = _sample_geometry(rng, h, w)
    base = _render_base(rng, geo)
    mask = np.zeros((h, w), dtype=np.bool_)
    patch: _Patch | None = None
    if kind != "ok":
        mask, patch = _DRAWERS[kind](rng, geo, base)
    image = _finish(base, patch)
    roi_shape: dict[str, Any] = {
        "kind": "annulus",
        "cx": geo.nominal_cx,
        "cy": geo.nominal_cy,
        "r_outer": geo.nominal_r_outer,
        "r_inner": geo.nominal_r_inner,
    }
    return SyntheticDisc(image=image, defect_mask=mask, kind=kind, roi_shape=roi_shape)


def make_set(
    seed: int,
    n_ok: int,
    n_per_defect: int = 0,
    size: int = 448,
    kinds: tuple[str, ...] = DEFECT_KINDS,
) -> list[SyntheticDisc]:
    """``n_ok`` OK discs, then ``n_per_defect`` discs of each kind in ``kinds`` order.

    Each disc gets its own generator keyed by (seed, kind, index), so growing ``n_ok`` or
    ``n_per_defect`` only appends discs and never changes the ones already in a set.
    """
    if seed < 0 or n_ok < 0 or n_per_defect < 0:
        raise ValueError("seed, n_ok and n_per_defect must be >= 0")
    for kind in kinds:
        if kind not in DEFECT_KINDS:
            raise ValueError(f"unknown defect kind {kind!r}; expected one of {DEFECT_KINDS}")
    discs = [make_disc(np.random.default_rng([seed, 0, i]), size) for i in range(n_ok)]
    for kind in kinds:
        stream = 1 + DEFECT_KINDS.index(kind)
        discs.extend(
            make_disc(np.random.default_rng([seed, stream, i]), size, defect=kind)
            for i in range(n_per_defect)
        )
    return discs


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes from an RGB (H, W, 3) or gray (H, W) uint8 image."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 image, got {image.dtype}")
    if image.ndim == 2:
        buf = np.ascontiguousarray(image)
    elif image.ndim == 3 and image.shape[2] == 3:
        # PNG viewers expect RGB, but cv2.imencode takes BGR and swaps on write.
        buf = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    else:
        raise ValueError(f"expected (H, W) or (H, W, 3) image, got shape {image.shape}")
    ok, encoded = cv2.imencode(".png", buf)
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(np.asarray(encoded).tobytes())


def decode_png(data: bytes) -> U8:
    """Decode PNG (or any cv2-readable) bytes to an RGB (H, W, 3) uint8 image."""
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("data is not a decodable image")
    return np.asarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# base picture


def _check_kind(defect: str | None) -> str:
    if defect is None or defect == "ok":
        return "ok"
    if defect not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {defect!r}; expected one of {DEFECT_KINDS}")
    return defect


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _cov(signed_distance: F32) -> F32:
    """Pixel coverage from a signed distance in pixels (> 0 inside): a 1 px anti-aliased edge."""
    return np.asarray(np.clip(signed_distance + np.float32(0.5), 0.0, 1.0), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> F32:
    """(h, w) float32 smooth noise in about [-1, 1], ``cells`` blobs across the short side."""
    short = min(h, w)
    gh = max(2, math.ceil(cells * h / short) + 1)
    gw = max(2, math.ceil(cells * w / short) + 1)
    grid = rng.random((gh, gw), dtype=np.float32) * 2.0 - 1.0
    return np.asarray(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), dtype=np.float32)


def _sample_geometry(rng: np.random.Generator, h: int, w: int) -> _Geometry:
    s = float(min(h, w))
    ncx, ncy = (w - 1) / 2.0, (h - 1) / 2.0
    cx = ncx + _u(rng, -0.01, 0.01) * s
    cy = ncy + _u(rng, -0.01, 0.01) * s
    scale = _u(rng, 0.98, 1.02)
    n_holes = int(rng.integers(6, 11))
    step = _TWO_PI / n_holes
    angles = (_u(rng, 0.0, step) + step * np.arange(n_holes)).astype(np.float32)
    ring = _HOLE_RING * s * scale
    holes = np.stack([cx + ring * np.cos(angles), cy + ring * np.sin(angles)], axis=1)
    return _Geometry(
        h=h,
        w=w,
        s=s,
        cx=cx,
        cy=cy,
        r_outer=_R_OUTER * s * scale,
        r_inner=_R_INNER * s * scale,
        nominal_cx=ncx,
        nominal_cy=ncy,
        nominal_r_outer=_R_OUTER * s,
        nominal_r_inner=_R_INNER * s,
        holes=holes.astype(np.float32),
        hole_angles=angles,
        hole_r=max(_u(rng, 0.021, 0.027) * s * scale, 1.5),
        scale=scale,
    )


def _stamp_holes(
    cover: F32, rim: F32 | None, centres: F32, radius: float, rim_width: float
) -> None:
    """Max-accumulate round-hole coverage (and a chamfer ring) into (H, W) arrays, per bbox."""
    h, w = cover.shape
    reach = radius + rim_width + 2.0
    for x, y in centres:
        x0, x1 = max(int(x - reach), 0), min(int(x + reach) + 2, w)
        y0, y1 = max(int(y - reach), 0), min(int(y + reach) + 2, h)
        if x0 >= x1 or y0 >= y1:
            continue
        lx = np.arange(x0, x1, dtype=np.float32) - np.float32(x)
        ly = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(y)
        d = np.sqrt(lx * lx + ly * ly)
        inside = _cov(np.float32(radius) - d)
        np.maximum(cover[y0:y1, x0:x1], inside, out=cover[y0:y1, x0:x1])
        if rim is not None:
            rim[y0:y1, x0:x1] += _cov(np.float32(radius + rim_width) - d) - inside


def _render_base(rng: np.random.Generator, geo: _Geometry) -> _Base:
    h, w, s = geo.h, geo.w, geo.s
    dx = (np.arange(w, dtype=np.float32) - np.float32(geo.cx))[None, :]
    dy = (np.arange(h, dtype=np.float32) - np.float32(geo.cy))[:, None]
    r2 = dx * dx + dy * dy
    r = np.sqrt(r2)

    # Friction face: concentric turning marks whose pitch wanders slightly with radius, as a
    # lathe feed never is perfectly even; 2.6 px minimum keeps small crops from aliasing.
    level = _u(rng, 0.50, 0.60)
    # One lathe program per line: the pitch varies little from disc to disc.
    pitch = max(s / 100.0, 2.6) * _u(rng, 0.97, 1.03)
    wobble_pitch = pitch * _u(rng, 12.0, 30.0)
    wobble = _u(rng, 0.3, 1.2)
    ph1, ph2 = _u(rng, 0.0, _TWO_PI), _u(rng, 0.0, _TWO_PI)
    # Marks finer than the pixel grid average out in a real camera: damp them on small crops.
    ripple = _u(rng, 0.025, 0.045) * min(1.0, s / 260.0) ** 0.5
    phase = r * np.float32(_TWO_PI / pitch) + np.float32(ph1)
    phase += np.float32(wobble) * np.sin(r * np.float32(_TWO_PI / wobble_pitch) + np.float32(ph2))
    face = np.float32(level) + np.float32(ripple) * np.sin(phase)

    # Turned metal reflects as a bow-tie: brightness follows cos(2*theta). Using the double
    # angle identities on dx, dy avoids an arctan2 over the whole image.
    # An inspection station's lamps are fixed: the sheen's direction only jitters a little.
    sheen_dir = _u(rng, 0.35, 0.65)
    sheen = _u(rng, 0.03, 0.07)
    inv_r2 = np.float32(1.0) / np.maximum(r2, np.float32(1.0))
    cos2 = (dx * dx - dy * dy) * inv_r2
    sin2 = (2.0 * dx * dy) * inv_r2
    face += np.float32(sheen * math.cos(2 * sheen_dir)) * cos2
    face += np.float32(sheen * math.sin(2 * sheen_dir)) * sin2
    face += np.float32(0.03) * _smooth_noise(rng, h, w, 6)
    grain = _u(rng, 0.008, 0.015)
    face += np.float32(grain) * rng.standard_normal((h, w), dtype=np.float32)
    edge_w = max(0.012 * s, 1.5)
    face += np.float32(0.12) * _cov(r - np.float32(geo.r_outer - edge_w))  # outer chamfer
    face -= np.float32(0.10) * _cov(np.float32(geo.r_inner + edge_w) - r)  # groove at the hat

    holes_cover = np.zeros((h, w), dtype=np.float32)
    hole_rim = np.zeros((h, w), dtype=np.float32)
    _stamp_holes(holes_cover, hole_rim, geo.holes, geo.hole_r, max(0.006 * s, 1.0))
    face += np.float32(0.12) * hole_rim
    cover = _cov(np.float32(geo.r_outer) - r) * _cov(r - np.float32(geo.r_inner))
    cover *= np.float32(1.0) - holes_cover

    # Hub: a cast, duller surface with a centre bore and lug-bolt holes.
    under = np.float32(_u(rng, 0.04, 0.09)) + np.float32(0.02) * _smooth_noise(rng, h, w, 4)
    hub = np.float32(_u(rng, 0.26, 0.38)) + np.float32(0.035) * _smooth_noise(rng, h, w, 20)
    hub += np.float32(0.06) * _cov(r - np.float32(_HUB_HAT * s * geo.scale))
    bore = _HUB_BORE * s * geo.scale
    bore_rim = max(0.008 * s, 1.0)
    hub += np.float32(0.10) * _cov(np.float32(bore + bore_rim) - r)
    n_lugs = int(rng.integers(4, 6))
    lug_angles = _u(rng, 0.0, _TWO_PI) + _TWO_PI / n_lugs * np.arange(n_lugs)
    lug_ring = _LUG_RING * s * geo.scale
    lugs = np.stack(
        [geo.cx + lug_ring * np.cos(lug_angles), geo.cy + lug_ring * np.sin(lug_angles)], axis=1
    ).astype(np.float32)
    lug_cover = np.zeros((h, w), dtype=np.float32)
    _stamp_holes(lug_cover, None, lugs, max(0.018 * s * geo.scale, 1.2), 0.0)
    hub_cover = _cov(np.float32(geo.r_inner + 0.5) - r) * _cov(r - np.float32(bore))
    hub_cover *= np.float32(1.0) - lug_cover
    under += (hub - under) * hub_cover

    # Lighting: a gain, an offset and a gentle gradient in a random direction (controlled
    # station lighting drifts a few percent, it does not swing).
    light_dir = _u(rng, 0.0, _TWO_PI)
    slope = _u(rng, 0.0, 0.08) / s
    gain = _u(rng, 0.94, 1.05)
    light = np.float32(gain) * (
        np.float32(1.0)
        + np.float32(slope * math.cos(light_dir)) * dx
        + np.float32(slope * math.sin(light_dir)) * dy
    )
    offset = _u(rng, -0.03, 0.03)
    warm = _u(rng, -0.035, 0.035)
    tint = np.array([1.0 + warm, 1.0 + 0.2 * warm, 1.0 - warm], dtype=np.float32)
    sigma = _u(rng, 0.008, 0.016)
    noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    noise *= np.float32(sigma)
    return _Base(
        face=face.astype(np.float32, copy=False),
        cover=cover.astype(np.float32, copy=False),
        under=under.astype(np.float32, copy=False),
        r=r,
        light=light.astype(np.float32, copy=False),
        offset=offset,
        tint=tint,
        noise=noise,
    )


def _finish(base: _Base, patch: _Patch | None) -> U8:
    """Composite the layers, light, tint, blend the colour patch, add noise; (H, W, 3) uint8."""
    gray = base.under + (base.face - base.under) * base.cover
    gray *= base.light
    gray += np.float32(base.offset)
    rgb = gray[:, :, None] * base.tint
    if patch is not None:
        ph, pw = patch.alpha.shape
        ys, xs = slice(patch.y0, patch.y0 + ph), slice(patch.x0, patch.x0 + pw)
        a = patch.alpha[:, :, None]
        lit = patch.rgb * base.light[ys, xs, None]
        rgb[ys, xs] += (lit - rgb[ys, xs]) * a
    rgb += base.noise
    np.clip(rgb, 0.0, 1.0, out=rgb)
    rgb *= np.float32(255.0)
    rgb += np.float32(0.5)  # truncation below then rounds to nearest
    return rgb.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# defects


def _forbidden(geo: _Geometry, base: _Base) -> BoolArray:
    """(H, W) True where a defect mask may not go: off the face (jittered or nominal), near holes.

    The margin keeps masks clear of the edges even after a test rasterises the nominal ROI.
    """
    margin = max(0.02 * geo.s, 2.0)
    ndx = (np.arange(geo.w, dtype=np.float32) - np.float32(geo.nominal_cx))[None, :]
    ndy = (np.arange(geo.h, dtype=np.float32) - np.float32(geo.nominal_cy))[:, None]
    rn = np.sqrt(ndx * ndx + ndy * ndy)
    r = base.r
    bad = (r < geo.r_inner + margin) | (r > geo.r_outer - margin)
    bad |= (rn < geo.nominal_r_inner + margin) | (rn > geo.nominal_r_outer - margin)
    canvas = np.zeros((geo.h, geo.w), dtype=np.uint8)
    keep_off = geo.hole_r + max(0.012 * geo.s, 2.0)
    for x, y in geo.holes:
        centre = (round(float(x) * _FIX), round(float(y) * _FIX))
        cv2.circle(canvas, centre, round(keep_off * _FIX), 255, -1, cv2.LINE_8, _SHIFT)
    bad |= canvas > 0
    return bad


def _fixed(points: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int32]:
    """(n, 2) float pixel coordinates -> (n, 1, 2) int32 fixed point for cv2 with _SHIFT."""
    return np.round(np.asarray(points) * _FIX).astype(np.int32).reshape(-1, 1, 2)


@dataclass(frozen=True)
class _Room:
    """Where defects may go: ``forbidden`` (H, W) bool and ``free`` (H, W) float32, each
    allowed pixel's distance to the nearest forbidden one."""

    forbidden: BoolArray
    free: F32

    @staticmethod
    def of(geo: _Geometry, base: _Base) -> _Room:
        forbidden = _forbidden(geo, base)
        allowed = (~forbidden).astype(np.uint8)
        free = cv2.distanceTransform(allowed, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return _Room(forbidden=forbidden, free=np.asarray(free, dtype=np.float32))

    def centre(self, rng: np.random.Generator, clearance: float) -> tuple[float, float]:
        """A random point with ``clearance`` px of room around it, else one of the roomiest.

        Sampling from the free space rather than the whole annulus keeps rejection rare even
        on small, crowded crops.
        """
        spots = np.flatnonzero(self.free >= clearance)
        if spots.size == 0:
            spots = np.flatnonzero(self.free >= self.free.max())
        y, x = divmod(int(spots[int(rng.integers(spots.size))]), self.free.shape[1])
        return x + _u(rng, -0.5, 0.5), y + _u(rng, -0.5, 0.5)

    def admits(self, mask: BoolArray) -> bool:
        return not bool(np.any(mask & self.forbidden))


def _place(
    rng: np.random.Generator,
    propose: Callable[[float], F32],
    accept: Callable[[BoolArray], bool],
) -> F32:
    """Draw proposals until ``accept`` takes one's mask; shrink them after repeated misses.

    ``propose(shrink)`` returns an (H, W) alpha; its mask is ``alpha >= 0.5``. Shrinking
    guarantees termination on crowded discs (ten holes on a small crop).
    """
    shrink = 1.0
    for attempt in range(1, _MAX_TRIES + 1):
        alpha = propose(shrink)
        mask = alpha >= 0.5
        if mask.any() and accept(mask):
            return alpha
        if attempt % _SHRINK_EVERY == 0:
            shrink *= 0.8
    raise RuntimeError("could not place a defect on the friction face")  # pragma: no cover


def _draw_scratch(
    rng: np.random.Generator, geo: _Geometry, base: _Base
) -> tuple[BoolArray, _Patch | None]:
    s = geo.s
    thickness = max(2, round(s / 160.0))
    delta = _u(rng, 0.22, 0.32) * (1.0 if rng.random() < 0.5 else -1.0)
    room = _Room.of(geo, base)

    def propose(shrink: float) -> F32:
        length = max(_u(rng, 0.22, 0.36) * s * shrink, 6.0)
        t = np.linspace(-0.5, 0.5, 32)
        crowded = shrink < 0.7
        # Crowded crops (tiny, many holes) only take short straight scratches in open spots.
        x, y = room.centre(rng, length / 2.0 + thickness if crowded else thickness + 1.0)
        if rng.random() < 0.6 and not crowded:
            # Debris dragged round by the pad leaves circumferential arcs.
            rr = max(math.hypot(x - geo.cx, y - geo.cy), 1.0)
            angles = math.atan2(y - geo.cy, x - geo.cx) + t * (length / rr)
            radii = rr + t * _u(rng, -0.03, 0.03) * s
            pts = np.stack([geo.cx + radii * np.cos(angles), geo.cy + radii * np.sin(angles)], 1)
        else:
            a = _u(rng, 0.0, _TWO_PI)
            d = np.array([math.cos(a), math.sin(a)])
            n = np.array([-d[1], d[0]])
            bend = _u(rng, -0.12, 0.12) * length
            pts = (
                np.array([x, y])
                + (t * length)[:, None] * d
                + ((1.0 - 4.0 * t * t) * bend)[:, None] * n
            )
        canvas = np.zeros((geo.h, geo.w), dtype=np.uint8)
        cv2.polylines(canvas, [_fixed(pts)], False, 255, thickness, cv2.LINE_AA, _SHIFT)
        return canvas.astype(np.float32) * np.float32(1.0 / 255.0)

    alpha = _place(rng, propose, room.admits)
    base.face[...] += np.float32(delta) * alpha
    return alpha >= 0.5, None


def _draw_crack(
    rng: np.random.Generator, geo: _Geometry, base: _Base
) -> tuple[BoolArray, _Patch | None]:
    s = geo.s
    thickness = max(2, round(s / 150.0))
    delta = -_u(rng, 0.32, 0.42)
    n_holes = len(geo.hole_angles)
    band = geo.r_outer - geo.r_inner
    room = _Room.of(geo, base)

    def polyline(
        start: npt.NDArray[np.float64], angle: float, length: float, steps: int
    ) -> npt.NDArray[np.float64]:
        # Jagged: a random walk across the crack direction plus per-vertex jitter.
        along = np.linspace(0.0, length, steps + 1)
        across = np.cumsum(rng.normal(0.0, 0.10 * length / steps, steps + 1))
        across += rng.normal(0.0, 0.04 * length / steps, steps + 1)
        across -= across[0]
        d = np.array([math.cos(angle), math.sin(angle)])
        n = np.array([-d[1], d[0]])
        return np.asarray(start + along[:, None] * d + across[:, None] * n, dtype=np.float64)

    def propose(shrink: float) -> F32:
        # Radial cracks run between the drilled holes.
        k = int(rng.integers(n_holes))
        a = float(geo.hole_angles[k]) + _TWO_PI / n_holes * _u(rng, 0.3, 0.7)
        length = _u(rng, 0.5, 0.8) * band * shrink
        r0 = geo.r_inner + _u(rng, 0.0, max(band - length, 0.0))
        start = np.array([geo.cx + r0 * math.cos(a), geo.cy + r0 * math.sin(a)])
        main = polyline(start, a, length, 10)
        canvas = np.zeros((geo.h, geo.w), dtype=np.uint8)
        cv2.polylines(canvas, [_fixed(main)], False, 255, thickness, cv2.LINE_AA, _SHIFT)
        for _ in range(int(rng.integers(1, 3))):
            i = int(rng.integers(2, 8))
            side = 1.0 if rng.random() < 0.5 else -1.0
            branch = polyline(main[i], a + side * _u(rng, 0.4, 0.9), _u(rng, 0.2, 0.4) * length, 4)
            cv2.polylines(
                canvas, [_fixed(branch)], False, 255, max(1, thickness - 1), cv2.LINE_AA, _SHIFT
            )
        return canvas.astype(np.float32) * np.float32(1.0 / 255.0)

    alpha = _place(rng, propose, room.admits)
    base.face[...] += np.float32(delta) * alpha
    return alpha >= 0.5, None


def _draw_pits(
    rng: np.random.Generator, geo: _Geometry, base: _Base
) -> tuple[BoolArray, _Patch | None]:
    s = geo.s
    delta = -_u(rng, 0.30, 0.40)
    room = _Room.of(geo, base)

    def propose(shrink: float) -> F32:
        spread = max(_u(rng, 0.035, 0.05) * s * shrink, 3.0)
        n = int(rng.integers(8, 17))
        offsets = np.clip(rng.normal(0.0, 0.45 * spread, (n, 2)), -spread, spread)
        radii = np.maximum(rng.uniform(0.007, 0.013, n) * s * math.sqrt(shrink), 1.4)
        x, y = room.centre(rng, spread + float(radii.max()) + 1.0)
        canvas = np.zeros((geo.h, geo.w), dtype=np.uint8)
        for (ox, oy), rad in zip(offsets, radii, strict=True):
            centre = (round((x + ox) * _FIX), round((y + oy) * _FIX))
            cv2.circle(canvas, centre, round(float(rad) * _FIX), 255, -1, cv2.LINE_AA, _SHIFT)
        return canvas.astype(np.float32) * np.float32(1.0 / 255.0)

    alpha = _place(rng, propose, room.admits)
    base.face[...] += np.float32(delta) * alpha
    return alpha >= 0.5, None


def _draw_rust(
    rng: np.random.Generator, geo: _Geometry, base: _Base
) -> tuple[BoolArray, _Patch | None]:
    s = geo.s
    box: list[int] = [0, 0, 0, 0]  # y0, y1, x0, x1 of the accepted proposal's local alpha
    room = _Room.of(geo, base)

    def propose(shrink: float) -> F32:
        radius = max(_u(rng, 0.045, 0.065) * s * shrink, 4.0)
        # The blotch's mask rarely reaches past 0.9 radius; _place rejects the ones that do.
        x, y = room.centre(rng, 0.9 * radius + 1.0)
        reach = math.ceil(1.6 * radius) + 2
        y0, y1 = max(int(y) - reach, 0), min(int(y) + reach + 1, geo.h)
        x0, x1 = max(int(x) - reach, 0), min(int(x) + reach + 1, geo.w)
        lx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(x)
        ly = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(y)
        a = _u(rng, 0.0, math.pi)
        aspect = _u(rng, 0.6, 1.0)
        u = (lx * np.float32(math.cos(a)) + ly * np.float32(math.sin(a))) / np.float32(radius)
        v = (ly * np.float32(math.cos(a)) - lx * np.float32(math.sin(a))) / np.float32(
            radius * aspect
        )
        # A blotch: an elliptic bump broken up by smooth noise, cut at a soft threshold.
        field = np.float32(1.0) - u * u - v * v
        field += np.float32(0.45) * _smooth_noise(rng, y1 - y0, x1 - x0, 4)
        local = np.clip((field - np.float32(0.2)) * np.float32(4.0), 0.0, 1.0)
        box[:] = [y0, y1, x0, x1]
        alpha = np.zeros((geo.h, geo.w), dtype=np.float32)
        alpha[y0:y1, x0:x1] = local
        return alpha

    alpha = _place(rng, propose, room.admits)
    y0, y1, x0, x1 = box
    local = alpha[y0:y1, x0:x1]
    ph, pw = local.shape
    red = _u(rng, 0.55, 0.72)
    colour = np.array([red, red * _u(rng, 0.42, 0.55), red * _u(rng, 0.16, 0.28)], dtype=np.float32)
    # Corrosion texture: patchy brightness, darker pockets and grainy speckle.
    mottle = _smooth_noise(rng, ph, pw, max(3.0, min(ph, pw) / 6.0))
    shade = np.float32(0.9) + np.float32(0.25) * mottle
    shade -= np.float32(0.25) * np.clip(-mottle - np.float32(0.4), 0.0, 1.0)
    shade += np.float32(0.07) * rng.standard_normal((ph, pw), dtype=np.float32)
    rgb = shade[:, :, None] * colour
    opacity = np.float32(_u(rng, 0.8, 0.95))
    patch = _Patch(y0=y0, x0=x0, alpha=local * opacity, rgb=rgb.astype(np.float32, copy=False))
    return alpha >= 0.5, patch


def _draw_edge_chip(
    rng: np.random.Generator, geo: _Geometry, base: _Base
) -> tuple[BoolArray, _Patch | None]:
    s = geo.s
    # The chip must not reach the hole ring, else it would read as a broken hole.
    hole_ring = _HOLE_RING * s * geo.scale
    min_r = hole_ring + geo.hole_r + max(0.012 * s, 2.0)
    disc = _cov(np.float32(geo.r_outer) - base.r) >= 0.5
    n_vertices = 24

    def propose(shrink: float) -> F32:
        radius = max(_u(rng, 0.05, 0.065) * s * shrink, 5.0)
        a = _u(rng, 0.0, _TWO_PI)
        rc = geo.r_outer + _u(rng, 0.0, 0.3) * radius
        angles = _TWO_PI / n_vertices * np.arange(n_vertices)
        # Conchoidal bite: a lumpy round outline (two low harmonics) with a little jag.
        lumps = sum(
            _u(rng, 0.08, 0.18) * np.cos(k * angles + _u(rng, 0.0, _TWO_PI)) for k in (2, 3)
        )
        radii = radius * (1.0 + lumps + rng.uniform(-0.06, 0.06, n_vertices))
        pts = np.stack(
            [
                geo.cx + rc * math.cos(a) + radii * np.cos(angles),
                geo.cy + rc * math.sin(a) + radii * np.sin(angles),
            ],
            axis=1,
        )
        canvas = np.zeros((geo.h, geo.w), dtype=np.uint8)
        cv2.fillPoly(canvas, [_fixed(pts)], 255, cv2.LINE_AA, _SHIFT)
        return canvas.astype(np.float32) * np.float32(1.0 / 255.0)

    def accept(mask: BoolArray) -> bool:
        inside = mask & disc
        return bool(inside.any()) and float(base.r[inside].min()) >= min_r

    chip = _place(rng, propose, accept)
    # The fresh fracture face catches the light: a thin bright rim around the bite.
    rim_w = max(1, round(s / 200.0))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim_w + 1, 2 * rim_w + 1))
    grown = np.asarray(cv2.dilate(chip, kernel), dtype=np.float32)
    base.face[...] += np.float32(_u(rng, 0.10, 0.18)) * (grown - chip)
    mask = (chip >= 0.5) & disc
    base.cover[...] *= np.float32(1.0) - chip
    return mask, None


_Drawer = Callable[[np.random.Generator, _Geometry, _Base], tuple[BoolArray, _Patch | None]]

_DRAWERS: dict[str, _Drawer] = {
    "scratch": _draw_scratch,
    "crack": _draw_crack,
    "rust": _draw_rust,
    "pits": _draw_pits,
    "edge_chip": _draw_edge_chip,
}
