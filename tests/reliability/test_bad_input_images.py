"""Hostile input (contract sections 2, 3, 5, 6), images and shapes: whatever image bytes
or ROI shapes a client sends, decompression bombs included, the agent answers with a
contract error or a result, never crashes and never answers ``internal``; a bomb is refused
without eating memory.
"""

# Fixtures come from tests/adapters/conftest.py and hostile.py.
# ruff: noqa: F811

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.http.adapter import create as create_http
from agent.parsing import parse_command
from engine.errors import EngineError
from engine.preprocess import decode_image, normalise, resize_to_grid
from engine.roi_mask import parse_shape, shape_mask
from tests.adapters.conftest import broker, mqtt_agent  # noqa: F401
from tests.adapters.mqtt_support import Client
from tests.reliability import hostile
from tests.reliability.hostile import (  # noqa: F401
    MM,
    REFUSALS,
    ROI,
    Tally,
    b64,
    bounded,
    gradual_underflow,
    hypothesis_home,
    shapes,
)

# -- image decoding ---------------------------------------------------------------------


def decode_outcome(data: bytes, expect_hw: tuple[int, int] | None) -> tuple[str, str | None]:
    """(outcome, failure or None) of the engine's decode + resize + normalise."""
    try:
        image = decode_image(data)
        resized = resize_to_grid(image, 224)
        batch = normalise(resized[None])
    except EngineError as exc:
        if exc.kind not in REFUSALS:
            return exc.kind, f"{exc.kind}: {exc}"
        if expect_hw is not None:
            return exc.kind, f"a valid {expect_hw} image refused: {exc}"
        return exc.kind, None
    except Exception as exc:
        return "crash", f"{type(exc).__name__}: {exc}"
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return "decoded", f"decoded to {image.dtype} {image.shape}"
    if expect_hw is not None and image.shape[:2] != expect_hw:
        return "decoded", f"decoded to {image.shape[:2]}, encoded {expect_hw}"
    rows, cols = resized.shape[:2]
    if rows % 14 or cols % 14 or max(rows, cols) > 224 + 14 or not np.isfinite(batch).all():
        return "decoded", f"resized to {resized.shape}"
    return "decoded", None


# Pillow warns about every damaged TIFF header it is shown: expected here, and noise.
@pytest.mark.filterwarnings(r"ignore::UserWarning:PIL\.TiffImagePlugin")
@pytest.mark.reliability("bad_input", "image bytes: random, corrupted, forged sizes, odd types")
def test_image_decoding_gives_an_image_or_a_refusal(
    record_property, gradual_underflow, hypothesis_home
) -> None:
    tally = Tally()

    @bounded(400)
    @given(
        case=st.one_of(
            hostile.image_bytes.map(lambda data: ("bytes", data)),
            hostile.odd_images().map(lambda image: ("image", image)),
        )
    )
    def run(case: tuple[str, Any]) -> None:
        kind, value = case
        expect_hw = None
        if kind == "bytes":
            data = value
        else:
            ext, pixels = value
            encoded = hostile.encode(ext, pixels)
            if encoded is None:  # OpenCV cannot write it: garbage with its magic, then
                data = pixels.tobytes()[:512]
            else:
                data = encoded
                if hostile.supported(ext, pixels):
                    expect_hw = pixels.shape[:2]
        outcome, failure = decode_outcome(data, expect_hw)
        if failure is None:
            tally.saw(outcome + (" (valid odd image)" if expect_hw else ""))
        else:
            tally.fail(failure)

    run()
    tally.record(record_property)
    assert not tally.failures, tally.failures[:5]
    assert tally.outcomes["decoded (valid odd image)"] > 20  # the run did reach real images


# -- shapes -------------------------------------------------------------------------------


@pytest.mark.reliability("bad_input", "ROI shapes: random kinds, NaN/inf/huge/strings/nested")
def test_shapes_give_a_mask_or_bad_input(
    record_property, gradual_underflow, hypothesis_home
) -> None:
    tally = Tally()

    @bounded(400)
    @given(shape=shapes(), height=st.integers(1, 200), width=st.integers(1, 200))
    def run(shape: Any, height: int, width: int) -> None:
        try:
            spec = parse_shape(shape)
            mask = shape_mask(spec, height, width)
        except EngineError as exc:
            if exc.kind == "bad_request":
                tally.saw("bad_request")
            else:
                tally.fail(f"{exc.kind} for {shape!r:.120}")
            return
        except Exception as exc:
            tally.fail(f"{type(exc).__name__}: {exc} for {shape!r:.120}")
            return
        if mask.shape != (height, width) or mask.dtype != bool or not mask.any():
            tally.fail(f"mask {mask.shape} {mask.dtype} any={mask.any()} for {shape!r:.120}")
        else:
            tally.saw("mask" if spec is not None else "no shape")

    run()
    tally.record(record_property)
    assert not tally.failures, tally.failures[:5]
    assert tally.outcomes["mask"] > 30 and tally.outcomes["bad_request"] > 100


# -- decompression bombs ------------------------------------------------------------------


@pytest.mark.reliability(
    "bad_input", "decompression bombs (30000x30000 PNG/TIFF/JPEG) over MQTT+HTTP"
)
def test_decompression_bombs_are_refused_without_eating_memory(
    broker, mqtt_agent, ok_pngs, record_property
) -> None:
    bombs = {
        "png": hostile.png_bomb(),
        "png-header": hostile.png_bomb(real=False),
        "tiff": hostile.tiff_bomb(),
        "jpeg": hostile.jpeg_bomb(),
        "png-65535": hostile.png_bomb(65_535, 65_535, real=False),
    }
    agent, _ = mqtt_agent(
        broker.port, agent_id="bombs", agent_settings={"http": {"enabled": True, "port": 0}}
    )
    http = create_http(agent.settings, agent)
    http.start()
    plc = Client(broker.port, client_id="plc-bombs", subscribe=("bdi/bombs/result/#",))
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    growth_mb = 0.0
    peak_reset = False
    try:
        fit = {**ROI, "mm_per_px": MM, "images": [b64(p) for p in ok_pngs[:3]]}
        assert agent.bus.execute(parse_command("fit_ok", fit, "test"), timeout=300).ok
        rss_before = hostile.status_kb("VmRSS")
        peak_reset = hostile.reset_peak_rss()
        with httpx.Client(base_url=http.url, timeout=120) as client:
            for name, bomb in bombs.items():
                for command in ("infer", "fit_ok", "add_ng"):
                    request_id = f"{name}-{command}"
                    field = {"image": b64(bomb)} if command == "infer" else {"images": [b64(bomb)]}
                    plc.publish(
                        f"bdi/bombs/cmd/{command}",
                        {**ROI, "mm_per_px": MM, "request_id": request_id, **field},
                    )
                    kind = plc.reply(request_id, timeout=120).get("error", {}).get("kind")
                    outcomes[f"mqtt {kind}"] += 1
                    if kind not in REFUSALS:
                        failures.append(f"mqtt {command} {name}: {kind}")
                route, part = ("/infer", "image") if name != "tiff" else ("/fit_ok", "images")
                response = client.post(
                    route,
                    data={**ROI, "mm_per_px": str(MM)},
                    files={part: (f"bomb.{name}", bomb, "application/octet-stream")},
                )
                kind = response.json().get("error", {}).get("kind")
                outcomes[f"http {response.status_code}"] += 1
                if response.status_code not in (400, 413) or kind not in REFUSALS:
                    failures.append(f"http {route} {name}: {response.status_code} {kind}")
        rss_after = hostile.status_kb("VmRSS")
        peak = hostile.status_kb("VmHWM") if peak_reset else rss_after
        growth_mb = (max(peak, rss_after) - rss_before) / 1024
        if growth_mb > 1024:
            failures.append(f"memory grew by {growth_mb:.0f} MB")
        # Still answering: a plain inference gets its verdict.
        request_id = str(uuid.uuid4())
        plc.publish(
            "bdi/bombs/cmd/infer",
            {**ROI, "mm_per_px": MM, "image": b64(ok_pngs[5]), "request_id": request_id},
        )
        verdict = plc.reply(request_id, timeout=120)
        if not verdict.get("ok") or not isinstance(verdict.get("score"), float):
            failures.append(f"infer afterwards: {verdict.get('error')}")
    finally:
        plc.close()
        http.stop()
    tried = len(bombs) * 4
    record_property("tried", tried)
    record_property("failures", len(failures))
    record_property("lost", 0)
    record_property("rss_growth_mb", round(growth_mb, 1))
    record_property(
        "detail",
        ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        + f"; peak RSS growth {growth_mb:.0f} MB (peak measured: {peak_reset})"
        + (f"; first failure: {failures[0][:200]}" if failures else ""),
    )
    assert not failures, failures
