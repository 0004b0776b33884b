"""Tests for the synthetic brake-disc generator."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.demo.discs import (
    DEFECT_KINDS,
    SyntheticDisc,
    decode_png,
    encode_png,
    make_disc,
    make_set,
)

# (height, width or None) pairs covering square and both non-square orientations.
SIZES = [(112, None), (448, None), (448, 336), (112, 84), (96, 128)]


def _disc(
    seed: int, size: int = 112, defect: str | None = None, width: int | None = None
) -> SyntheticDisc:
    return make_disc(np.random.default_rng(seed), size, defect, width)


def _nominal_radius(disc: SyntheticDisc) -> np.ndarray:
    """(H, W) distance of every pixel from the nominal ROI centre."""
    h, w = disc.defect_mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(xx - disc.roi_shape["cx"], yy - disc.roi_shape["cy"])


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32).mean(axis=2)


def _face_and_background_levels(disc: SyntheticDisc) -> tuple[float, float]:
    """Median brightness of the friction face band and of the background outside the disc."""
    r = _nominal_radius(disc)
    shape = disc.roi_shape
    band = (r > shape["r_inner"] * 1.15) & (r < shape["r_outer"] * 0.95)
    outside = r > shape["r_outer"] * 1.1
    luma = _luma(disc.image)
    return float(np.median(luma[band])), float(np.median(luma[outside]))


# --- determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("defect", [None, *DEFECT_KINDS])
def test_same_seed_same_pixels(defect: str | None) -> None:
    a, b = _disc(11, defect=defect), _disc(11, defect=defect)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.defect_mask, b.defect_mask)
    assert a.roi_shape == b.roi_shape


def test_different_seeds_differ() -> None:
    assert not np.array_equal(_disc(1).image, _disc(2).image)


def test_make_set_is_deterministic_and_ordered() -> None:
    a = make_set(5, n_ok=2, n_per_defect=1, size=112)
    b = make_set(5, n_ok=2, n_per_defect=1, size=112)
    assert [d.kind for d in a] == ["ok", "ok", *DEFECT_KINDS]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image)
        assert np.array_equal(x.defect_mask, y.defect_mask)
    assert not np.array_equal(a[0].image, a[1].image)


def test_make_set_growing_keeps_existing_discs() -> None:
    small = make_set(3, n_ok=1, n_per_defect=1, size=96, kinds=("pits",))
    large = make_set(3, n_ok=2, n_per_defect=2, size=96, kinds=("pits",))
    assert np.array_equal(small[0].image, large[0].image)
    assert np.array_equal(small[1].image, large[2].image)
    assert np.array_equal(small[1].defect_mask, large[2].defect_mask)


def test_make_set_kinds_subset() -> None:
    discs = make_set(0, n_ok=0, n_per_defect=2, size=96, kinds=("rust", "crack"))
    assert [d.kind for d in discs] == ["rust", "rust", "crack", "crack"]


# --- shapes, dtypes, ROI ---------------------------------------------------------------------


@pytest.mark.parametrize(("size", "width"), SIZES)
def test_shapes_and_dtypes(size: int, width: int | None) -> None:
    w = size if width is None else width
    for defect in (None, "scratch"):
        disc = _disc(0, size, defect, width)
        assert disc.image.shape == (size, w, 3)
        assert disc.image.dtype == np.uint8
        assert disc.defect_mask.shape == (size, w)
        assert disc.defect_mask.dtype == np.bool_
        assert disc.kind == (defect or "ok")


@pytest.mark.parametrize(("size", "width"), SIZES)
def test_roi_shape_is_nominal_annulus(size: int, width: int | None) -> None:
    w = size if width is None else width
    shape = _disc(4, size, None, width).roi_shape
    assert shape["kind"] == "annulus"
    assert set(shape) == {"kind", "cx", "cy", "r_outer", "r_inner"}
    assert shape["cx"] == pytest.approx((w - 1) / 2)
    assert shape["cy"] == pytest.approx((size - 1) / 2)
    side = min(size, w)
    assert shape["r_outer"] == pytest.approx(0.46 * side)
    assert shape["r_inner"] == pytest.approx(0.22 * side)
    # The annulus fits inside the crop.
    assert shape["cx"] + shape["r_outer"] < w and shape["cx"] - shape["r_outer"] > 0
    assert shape["cy"] + shape["r_outer"] < size and shape["cy"] - shape["r_outer"] > 0


def test_disc_is_drawn_where_the_roi_says() -> None:
    disc = _disc(8, 448)
    face, background = _face_and_background_levels(disc)
    assert face > background + 60
    r = _nominal_radius(disc)
    hub = r < disc.roi_shape["r_inner"] * 0.3  # the centre bore
    assert float(np.median(_luma(disc.image)[hub])) < (face + background) / 2


def test_ok_discs_have_empty_masks() -> None:
    for disc in make_set(9, n_ok=4, size=112):
        assert disc.kind == "ok"
        assert not disc.defect_mask.any()


def test_ok_disc_is_near_gray_and_rust_is_coloured() -> None:
    ok = _disc(6, 224).image.astype(np.int16)
    assert np.abs(ok[..., 0] - ok[..., 2]).mean() < 12
    rust = _disc(6, 224, "rust")
    pix = rust.image[rust.defect_mask].astype(np.int16)
    assert (pix[:, 0] - pix[:, 2]).mean() > 40  # orange-brown: red well above blue


# --- defects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize(("size", "width"), [(112, None), (448, None), (448, 336), (96, 128)])
def test_defect_mask_on_the_face(kind: str, size: int, width: int | None) -> None:
    for seed in range(3 if size < 200 else 2):
        disc = _disc(seed, size, kind, width)
        mask = disc.defect_mask
        assert disc.kind == kind
        assert mask.any()
        area = mask.mean()
        assert 0.0008 < area < 0.025, f"{kind} area {area:.4%}"
        r = _nominal_radius(disc)[mask]
        shape = disc.roi_shape
        assert r.min() > shape["r_inner"]
        if kind == "edge_chip":
            # The missing chunk touches the outer edge; allow for the pose jitter.
            side = min(mask.shape)
            assert r.max() > shape["r_outer"] - 0.03 * side
            assert r.max() < shape["r_outer"] + 0.035 * side
        else:
            assert r.max() < shape["r_outer"]


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("size", [112, 448])
def test_defect_changes_only_its_own_pixels(kind: str, size: int) -> None:
    # Equal seeds give the same base disc; the defect must show inside its mask and leave the
    # rest of the image alone (a few px of anti-aliasing and chip rim aside).
    for seed in (21, 22) if size < 200 else (21,):
        ok = _disc(seed, size).image.astype(np.int16)
        bad = _disc(seed, size, kind)
        diff = np.abs(bad.image.astype(np.int16) - ok).max(axis=2)
        inside = diff[bad.defect_mask]
        assert inside.mean() > 25, f"{kind}: mean change {inside.mean():.1f}"
        near = cv2.dilate(bad.defect_mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        assert not diff[~near].any()


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_sits_on_metal_not_in_a_hole(kind: str) -> None:
    for seed in range(4):
        ok, bad = _disc(seed, 224), _disc(seed, 224, kind)
        face, background = _face_and_background_levels(ok)
        mid = (face + background) / 2
        under = _luma(ok.image)[bad.defect_mask]
        assert (under < mid).mean() < 0.01  # in the OK twin, the defect's pixels are metal
        if kind == "edge_chip":
            # ... and the chip shows the background through.
            assert float(np.median(_luma(bad.image)[bad.defect_mask])) < mid


def test_all_kinds_over_many_seeds_small() -> None:
    # Placement must always succeed, also on crowded small crops.
    for seed in range(12):
        for kind in DEFECT_KINDS:
            assert _disc(100 + seed, 80, kind).defect_mask.any()


# --- API errors ------------------------------------------------------------------------------


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="bogus"):
        _disc(0, defect="bogus")
    with pytest.raises(ValueError, match="dent"):
        make_set(0, n_ok=0, n_per_defect=1, size=96, kinds=("dent",))


def test_ok_alias_and_too_small() -> None:
    assert _disc(0, defect="ok").kind == "ok"
    with pytest.raises(ValueError):
        _disc(0, size=40)


# --- PNG -------------------------------------------------------------------------------------


def test_png_round_trip_is_lossless() -> None:
    image = _disc(3, 112, "rust", 84).image
    assert np.array_equal(decode_png(encode_png(image)), image)


def test_png_gray_round_trip() -> None:
    gray = _luma(_disc(3, 96).image).astype(np.uint8)
    back = decode_png(encode_png(gray))
    assert back.shape == (*gray.shape, 3)
    for c in range(3):
        assert np.array_equal(back[..., c], gray)


def test_png_stores_rgb_for_viewers() -> None:
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red in RGB
    raw = cv2.imdecode(np.frombuffer(encode_png(image), np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw is not None
    assert raw[0, 0].tolist() == [0, 0, 255]  # cv2 reads BGR: red is the last channel


def test_png_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        decode_png(b"not a png")
