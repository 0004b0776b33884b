import cv2
import numpy as np
import pytest

from engine.calibration import choose_threshold
from engine.errors import BadInput
from engine.scoring import anomaly_map, encode_png, find_regions, heatmap_u8, masked_score


def test_map_is_upsampled_to_the_input_size_and_blurred() -> None:
    patches = np.zeros((4, 4), np.float32)
    patches[1, 1] = 1.0
    amap = anomaly_map(patches, (56, 70), sigma=4.0)
    assert amap.shape == (56, 70)
    assert 0 < amap.max() < 1.0  # blurred peak
    y, x = np.unravel_index(np.argmax(amap), amap.shape)
    assert 14 <= y < 28 and 17 <= x < 35  # inside the upsampled patch cell


def test_regions_and_area_of_a_known_blob() -> None:
    amap = np.zeros((100, 120), np.float32)
    amap[20:30, 40:60] = 2.0  # 10 x 20 px = 200 px
    amap[80:82, 10:12] = 3.0  # 4 px
    regions = find_regions(amap, None, threshold=1.0, mm_per_px=0.5, area_mm2_thr=0.0)
    assert [r.area_px for r in regions] == [4, 200]  # strongest peak first
    blob = regions[1]
    assert (blob.x, blob.y, blob.w, blob.h) == (40, 20, 20, 10)
    assert blob.area_mm2 == pytest.approx(200 * 0.25)
    assert (blob.cx, blob.cy) == pytest.approx((49.5, 24.5))
    assert blob.max_score == blob.mean_score == 2.0
    kept = find_regions(amap, None, threshold=1.0, mm_per_px=0.5, area_mm2_thr=2.0)
    assert [r.area_px for r in kept] == [200]


def test_regions_respect_the_mask() -> None:
    amap = np.ones((10, 10), np.float32)
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    (only,) = find_regions(amap, mask, threshold=0.5, mm_per_px=1.0)
    assert only.area_px == 50


def test_masked_score_ignores_outside_pixels() -> None:
    amap = np.zeros((5, 5), np.float32)
    amap[0, 0] = 9.0
    amap[3, 3] = 1.0
    mask = np.zeros((5, 5), bool)
    mask[2:, 2:] = True
    masked, score = masked_score(amap, mask)
    assert score == 1.0 and masked[0, 0] == 0.0


def test_heatmap_128_means_at_threshold_and_png_decodes() -> None:
    amap = np.array([[0.0, 0.5, 1.0, 5.0]], np.float32)
    assert heatmap_u8(amap, norm=0.5).tolist() == [[0, 127, 255, 255]]
    png = encode_png(heatmap_u8(np.full((30, 40), 0.5, np.float32), norm=0.5))
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (30, 40) and int(decoded[0, 0]) == 127


def test_threshold_rules() -> None:
    ok = list(np.linspace(1.0, 2.0, 101))
    alone = choose_threshold(ok)
    assert alone.threshold == pytest.approx(np.percentile(ok, 99))
    separated = choose_threshold(ok, [4.0, 5.0, 6.0])
    assert separated.threshold == pytest.approx((separated.p99_ok + separated.p5_ng) / 2)
    assert separated.ng_mean == pytest.approx(5.0)
    overlapping = choose_threshold(ok, [0.5, 1.5, 3.0])
    assert overlapping.threshold == pytest.approx(overlapping.p99_ok)
    assert choose_threshold(ok, score_percentile=50).threshold == pytest.approx(1.5)


@pytest.mark.parametrize("ok", [[], [float("nan")], ["a", "b"], [1e308, 1e308]])
def test_threshold_needs_finite_ok_scores(ok) -> None:
    with pytest.raises(BadInput):
        choose_threshold(ok)
