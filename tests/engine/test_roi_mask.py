import numpy as np
import pytest

from engine.errors import BadInput
from engine.roi_mask import parse_shape, shape_mask


def test_no_shape_is_the_whole_image() -> None:
    assert shape_mask(None, 4, 5).all()


def test_rect_circle_annulus_polygon_cover_the_right_pixels() -> None:
    rect = shape_mask({"kind": "rect", "x": 2, "y": 1, "w": 3, "h": 2}, 10, 10)
    assert rect.sum() == 6 and rect[1, 2] and rect[2, 4] and not rect[3, 2]
    circle = shape_mask({"kind": "circle", "cx": 50, "cy": 50, "r": 10}, 100, 100)
    assert abs(int(circle.sum()) - np.pi * 100) < 15
    ring = shape_mask(
        {"kind": "annulus", "cx": 50, "cy": 50, "r_outer": 20, "r_inner": 10}, 100, 100
    )
    assert not ring[50, 50] and ring[50, 65] and not ring[50, 75]
    assert abs(int(ring.sum()) - np.pi * 300) < 30
    tri = shape_mask({"kind": "polygon", "points": [[0, 0], [9, 0], [0, 9]]}, 10, 10)
    assert tri[1, 1] and not tri[9, 9]


def test_shape_as_json_string_is_accepted() -> None:
    spec = parse_shape('{"kind": "circle", "cx": 5, "cy": 5, "r": 2}')
    assert spec == {"kind": "circle", "cx": 5, "cy": 5, "r": 2}


@pytest.mark.parametrize(
    "shape",
    [
        {"kind": "rect", "x": 0, "y": 0, "w": 0, "h": 5},
        {"kind": "rect", "x": 500, "y": 500, "w": 5, "h": 5},
        {"kind": "circle", "cx": 5, "cy": 5, "r": -1},
        {"kind": "annulus", "cx": 5, "cy": 5, "r_outer": 3, "r_inner": 3},
        {"kind": "polygon", "points": [[0, 0], [1, 1]]},
        {"kind": "polygon", "points": [[0, 0], [1, "a"], [2, 2]]},
        {"kind": "hexagon"},
        {"kind": "circle", "cx": "5", "cy": 5, "r": 2},
        {"kind": "circle", "cx": float("nan"), "cy": 5, "r": 2},
        "not json",
        [1, 2, 3],
    ],
)
def test_invalid_shapes_are_bad_input(shape) -> None:
    with pytest.raises(BadInput):
        shape_mask(shape, 20, 20)
