"""What makes two requests the same (``agent.request_digest``): the command and every
input, never who sent it, when it gives up, or its request id."""

from __future__ import annotations

import time
from typing import Any

from agent.commands import FitImages
from agent.parsing import parse_command
from agent.request_digest import request_digest

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
PNG = b"\x89PNG\r\n\x1a\n-one"
OTHER_PNG = b"\x89PNG\r\n\x1a\n-two"


def digest(name: str, source: str = "mqtt", deadline: float | None = None, **payload: Any) -> str:
    return request_digest(parse_command(name, payload, source, deadline=deadline))


def infer(**changes: Any) -> dict[str, Any]:
    return {**ROI, "mm_per_px": 0.2, "image": PNG, "request_id": "r-1", **changes}


def test_the_sender_the_deadline_and_the_id_are_not_inputs() -> None:
    base = digest("infer", **infer())
    assert digest("infer", source="http", **infer()) == base
    assert digest("infer", deadline=time.monotonic() + 5, **infer()) == base
    assert digest("infer", **infer(request_id="r-2")) == base


def test_every_input_is() -> None:
    base = digest("infer", **infer())
    others = [
        infer(roi_id="Inspection_2"),
        infer(role_id="Other"),
        infer(recipe_id="variant-b"),
        infer(model_key="m2"),
        infer(image=OTHER_PNG),
        infer(mm_per_px=0.21),
        infer(heatmap=False),
        infer(require_calibration=True),
        infer(shape={"kind": "circle", "cx": 10, "cy": 10, "r": 5}),
    ]
    digests = {digest("infer", **payload) for payload in others}
    assert base not in digests and len(digests) == len(others)
    fit = {**ROI, "mm_per_px": 0.2, "images": [PNG]}
    assert digest("fit_ok", **fit) != digest("add_ng", **fit)  # the command is an input


def test_a_shape_as_json_text_or_object_with_int_or_float_is_one_input() -> None:
    as_object = digest("infer", **infer(shape={"kind": "circle", "cx": 10, "cy": 10, "r": 5}))
    as_text = digest("infer", **infer(shape='{"kind":"circle","cx":10.0,"cy":10,"r":5.0}'))
    assert as_object == as_text


def test_batch_items_and_their_ids_are_inputs_of_the_batch() -> None:
    items = [infer(request_id="a"), infer(roi_id="Inspection_2", request_id="b")]
    base = digest("infer_batch", items=items, request_id="batch-1")
    assert digest("infer_batch", items=items, request_id="batch-2") == base
    assert digest("infer_batch", items=items[::-1], request_id="batch-1") != base
    renamed = [infer(request_id="a"), infer(roi_id="Inspection_2", request_id="c")]
    assert digest("infer_batch", items=renamed, request_id="batch-1") != base


def test_a_dataset_folders_file_names_are_not_inputs() -> None:
    def fit_images(names: tuple[str, ...]) -> FitImages:
        return FitImages(request_id="d", mm_per_px=0.2, images=(PNG,), names=names, **ROI)

    assert request_digest(fit_images(("a.png",))) == request_digest(fit_images(("b.png",)))
