"""Hostile input (contract sections 2, 3, 5, 6): whatever bytes, shapes, payloads, sidecars,
ids or paths a client sends, the agent answers with a contract error or a result, never
crashes, never answers ``internal``, and never touches a file outside its data root or the
configured image roots.

The HTTP API's own property run (schemathesis over /openapi.json) is in
tests/adapters/test_http_openapi.py and is not repeated here.
"""

# Fixtures come from tests/adapters/conftest.py and hostile.py.
# ruff: noqa: F811

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.folders_layout import InboxFile, Refused, SidecarPending, prepare_command
from adapters.http import create as create_http
from agent.bootstrap import Agent, bootstrap, build_engine
from agent.commands import COMMANDS, Command, InferBatch, RoiCommand
from agent.errors import STATUS_BY_KIND, AgentError
from agent.parsing import parse_command
from engine.errors import EngineError
from engine.features import FeatureExtractor
from engine.preprocess import decode_image, normalise, resize_to_grid
from engine.roi_mask import parse_shape, shape_mask
from tests.adapters.conftest import agents, broker, extractor112, mqtt_agent  # noqa: F401
from tests.adapters.mqtt_support import Client
from tests.adapters.test_folders_support import FolderAgents, failed, inbox_files, processed
from tests.conftest import agent_settings
from tests.reliability import hostile
from tests.reliability.hostile import bounded, gradual_underflow, hypothesis_home  # noqa: F401

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
MM = 0.2
REFUSALS = ("bad_request", "payload_too_large")  # what bad input may be answered with
CONTRACT_KINDS = set(STATUS_BY_KIND) - {"internal", "unauthorized"}


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


def contract_error_body(body: Any) -> bool:
    """The contract's failure body (section 2), as a folder's .error.json holds it."""
    return (
        isinstance(body, dict)
        and set(body) >= {"error", "request_id", "recipe_id"}
        and isinstance(body["error"], dict)
        and set(body["error"]) == {"code", "kind", "message"}
        and STATUS_BY_KIND.get(body["error"]["kind"]) == body["error"]["code"]
        and isinstance(body["error"]["message"], str)
        and isinstance(body["request_id"], str)
        and isinstance(body["recipe_id"], str)
    )


def utf8_json(body: Any) -> bool:
    """Writable the way the folder adapter writes its results (UTF-8 JSON)."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):
        return False
    return True


# -- 1. image decoding ------------------------------------------------------------------


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


# -- 2. shapes ----------------------------------------------------------------------------

COORD = st.one_of(st.integers(-40, 300), st.floats(-40.0, 300.0), hostile.scalars)
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
            hostile.json_values
            | st.sampled_from(
                [hostile.DEEP_JSON, '{"kind":"rect","x":' + "9" * 5000 + "}", "{", "null"]
            )
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
            shape[draw(st.sampled_from(sorted(shape)))] = draw(hostile.scalars)
    else:
        if draw(st.integers(0, 9)):
            shape["kind"] = draw(st.sampled_from(sorted(FIELDS_OF)) | hostile.scalars)
        for name in SHAPE_FIELDS:
            if draw(st.booleans()):
                shape[name] = draw(COORD)
        if draw(st.booleans()):
            point = st.lists(COORD, min_size=1, max_size=3) | hostile.scalars
            shape["points"] = draw(st.lists(point, max_size=8) | hostile.json_values)
    return json.dumps(shape) if form == "json" else shape


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


# -- 3. command payloads ------------------------------------------------------------------

FLAGS = st.sampled_from([True, False, "true", "0", "yes", 1, None, ""])
LABELS = st.sampled_from(["ok", "ng", "OK", "", None, 1, ["ok"]])
FILES = st.sampled_from(
    [
        "OK_1.png",
        "../x.png",
        ".hidden.png",
        "a/b.png",
        "x" * 300 + ".png",
        "\ud800.png",
        "a\x00.png",
    ]
)
RECIPES = st.sampled_from(["default", "Line-A", "last", "../../etc", "\ud800", ""])


class Fields:
    """Per field of section 2: ``good`` holds plausible values (a few near misses among
    them), ``any`` the same or junk of any JSON type."""

    def __init__(self, images: st.SearchStrategy[Any], paths: st.SearchStrategy[Any]) -> None:
        ids = st.sampled_from(["Inspection", "Inspection_1", "R"])
        odd_ids = ids | st.sampled_from(hostile.TRAVERSAL_IDS)
        scale = st.floats(0.01, 1.0)
        scores = st.lists(st.floats(0.0, 2.0), min_size=1, max_size=4)
        self.good: dict[str, st.SearchStrategy[Any]] = {
            "role_id": ids,
            "roi_id": ids,
            "model_key": odd_ids,
            "recipe_id": RECIPES,
            "request_id": st.sampled_from(["r-1", "\ud800", "x" * 201, ""]) | st.text(max_size=12),
            "mm_per_px": scale,
            "images": st.lists(images, min_size=1, max_size=3),
            "image": images,
            "image_path": paths,
            "image_paths": st.lists(paths, max_size=2),
            "memory_fit": FLAGS,
            "heatmap": FLAGS,
            "require_calibration": FLAGS,
            "shape": shapes(),
            "ok_scores": scores,
            "ng_scores": scores,
            "area_mm2_thr": st.floats(0.0, 100.0),
            "score_percentile": st.floats(0.0, 100.0),
            "ok_images": st.lists(images, max_size=2),
            "ng_images": st.lists(images, max_size=2),
            "label": st.sampled_from(["ok", "ng"]),
            "file": FILES | st.text(max_size=12),
            "names": st.lists(st.text(max_size=5), max_size=3),
        }
        odd = {
            "role_id": odd_ids,
            "roi_id": odd_ids,
            "mm_per_px": st.sampled_from(["0.2", 0, -1, 10**400, "nan", "1e999"]),
            "ok_scores": st.lists(
                st.floats(allow_nan=True, allow_infinity=True) | hostile.scalars, max_size=4
            ),
            "label": LABELS,
        }
        self.any = {
            name: value | odd.get(name, hostile.scalars) | hostile.json_values
            for name, value in self.good.items()
        }
        infer_item = self.template("infer")
        self.good["items"] = st.lists(infer_item, min_size=1, max_size=3)
        self.any["items"] = (
            st.lists(infer_item | hostile.json_values, max_size=3) | hostile.json_values
        )

    def template(self, name: str) -> st.SearchStrategy[dict[str, Any]]:
        """A payload with the command's required fields, plausible values, and up to four
        other fields, plausible or junk (overriding the required ones too)."""
        return _template(REQUIRED.get(name, ()), self.good, self.any)

    def payloads(self, name: str) -> st.SearchStrategy[Any]:
        """Mostly templates; random field sets and non-objects too."""
        random_fields = st.fixed_dictionaries({}, optional=self.any)
        template = self.template(name)
        return st.one_of(template, template, template, random_fields, hostile.json_values)


@st.composite
def _template(
    draw: st.DrawFn,
    required: tuple[str, ...],
    good: dict[str, st.SearchStrategy[Any]],
    any_: dict[str, st.SearchStrategy[Any]],
) -> dict[str, Any]:
    payload = {name: draw(good[name]) for name in required}
    for name in draw(st.lists(st.sampled_from(sorted(any_)), max_size=4, unique=True)):
        payload[name] = draw(any_[name] if draw(st.booleans()) else good[name])
    return payload


ROI_FIELDS = ("role_id", "roi_id")
REQUIRED: dict[str, tuple[str, ...]] = {
    "fit_ok": (*ROI_FIELDS, "mm_per_px", "images"),
    "add_ng": (*ROI_FIELDS, "mm_per_px", "images"),
    "send_ng": (*ROI_FIELDS, "mm_per_px", "images"),
    "fit_images": (*ROI_FIELDS, "mm_per_px", "images"),
    "infer": (*ROI_FIELDS, "mm_per_px", "image"),
    "infer_batch": ("items",),
    "calibrate_ng": ROI_FIELDS,
    "refit": ROI_FIELDS,
    "manifest": ROI_FIELDS,
    "dataset_list": ROI_FIELDS,
    "dataset_delete": (*ROI_FIELDS, "label", "file"),
    "dataset_clear": (*ROI_FIELDS, "label"),
}


NAMES = st.sampled_from([*sorted(COMMANDS), "nope", "", "INFER", "infer/x", "\ud800"])


def check_command(cmd: Command) -> str | None:
    """What a parsed command must satisfy, whatever came in."""
    if not isinstance(cmd.request_id, str) or not cmd.request_id:
        return f"request_id {cmd.request_id!r}"
    if isinstance(cmd, InferBatch):
        return next(filter(None, map(check_command, cmd.items)), None)
    texts = [cmd.request_id, cmd.recipe_id]
    if isinstance(cmd, RoiCommand):
        texts += [cmd.role_id, cmd.roi_id, cmd.model_key or ""]
        for value in (cmd.role_id, cmd.roi_id):
            if not value.strip() or any(ord(c) < 32 for c in value):
                return f"id {value!r} accepted"
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"{text!r} accepted: not storable as UTF-8"
    if cmd.recipe_id == "last" or not cmd.recipe_id:
        return f"recipe_id {cmd.recipe_id!r} accepted"
    scale = getattr(cmd, "mm_per_px", None)
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        return f"mm_per_px {scale!r} accepted"
    return None


@pytest.mark.reliability("bad_input", "MQTT/HTTP payloads of every command through parse_command")
def test_command_payloads_parse_or_are_refused(
    tmp_path: Path, ok_pngs, record_property, gradual_underflow, hypothesis_home
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(ok_pngs[0])
    (root / "sub").mkdir()
    (tmp_path / "outside.png").write_bytes(ok_pngs[1])
    (root / "link_out.png").symlink_to(tmp_path / "outside.png")
    images = st.sampled_from(
        [b64(ok_pngs[0]), "data:image/png;base64," + b64(ok_pngs[1]), "not base64!", "", "ü"]
    ) | st.binary(max_size=40)
    paths = st.sampled_from(
        [
            str(root / "ok.png"),
            str(root / "missing.png"),
            str(root / "sub"),
            str(root / "link_out.png"),
            f"{root}/../outside.png",
            "images/ok.png",
            "/etc/passwd",
            "/proc/self/environ",
            "\x00",
            f"{root}/ok.png\x00.txt",
            "\ud800",
        ]
    )
    fields = Fields(images, paths)
    tally = Tally()

    @bounded(500)
    @given(data=st.data(), name=NAMES)
    def run(data: st.DataObject, name: str) -> None:
        payload = data.draw(fields.payloads(name))
        try:
            cmd = parse_command(name, payload, "mqtt", [root], max_image_bytes=20 << 20)
        except AgentError as error:
            if error.kind not in REFUSALS or not utf8_json(error.body()):
                tally.fail(f"{error.kind} {error.message!r:.100} for {name}")
            else:
                tally.saw(error.kind)
            return
        except Exception as exc:
            tally.fail(f"{name}: {type(exc).__name__}: {exc}")
            return
        failure = check_command(cmd)
        if failure is not None:
            tally.fail(f"{name}: {failure}")
        else:
            tally.saw(f"parsed {cmd.name}")

    run()
    tally.record(record_property)
    assert not tally.failures, tally.failures[:5]
    assert sum(n for k, n in tally.outcomes.items() if k.startswith("parsed")) > 20


@pytest.fixture
def small_agent(tmp_path: Path, extractor112: FeatureExtractor, ok_pngs) -> Iterator[Agent]:
    """An agent on the folder tests' small backbone (8x8 tokens: cheap inferences), with
    one fitted ROI."""
    settings = agent_settings(tmp_path / "data", input_size=112)
    core = build_engine(settings)
    core.extractor = extractor112
    agent = bootstrap(settings, core=core)
    agent.start(load_model=False)
    try:
        payload = {**ROI, "mm_per_px": MM, "images": [b64(p) for p in ok_pngs[:3]]}
        reply = agent.bus.execute(parse_command("fit_ok", payload, "test"), timeout=300)
        assert reply.ok, reply.to_dict()
        yield agent
    finally:
        agent.stop(timeout=30)


@pytest.mark.reliability("bad_input", "random payloads executed by a live agent (bus.execute)")
def test_random_payloads_on_a_live_agent_never_answer_internal(
    small_agent: Agent, ok_pngs, record_property, gradual_underflow, hypothesis_home
) -> None:
    strip = hostile.encode(".png", np.zeros((3, 900, 3), np.uint8))
    gray16 = hostile.encode(".png", np.full((112, 112), 40000, np.uint16))
    assert strip is not None and gray16 is not None
    images = st.sampled_from(
        [b64(ok_pngs[3]), b64(ok_pngs[4]), b64(strip), b64(gray16), b64(ok_pngs[5][:300])]
    )
    fields = Fields(images, st.just("/nonexistent.png"))
    # The fitted ROI, at its scale, most of the time: the commands get past their lookups.
    fields.good.update(
        role_id=st.just(ROI["role_id"]), roi_id=st.just(ROI["roi_id"]), mm_per_px=st.just(MM)
    )
    for name in ("role_id", "roi_id", "model_key", "recipe_id", "image_path", "image_paths"):
        del fields.any[name]
    tally = Tally()

    @bounded(100)
    @given(data=st.data(), name=st.sampled_from(sorted(COMMANDS)))
    def run(data: st.DataObject, name: str) -> None:
        payload = data.draw(fields.template(name))
        try:
            cmd = parse_command(name, payload, "test")
        except AgentError as error:
            tally.saw(f"refused at parse ({error.kind})")
            return
        except Exception as exc:
            tally.fail(f"{name} at parse: {type(exc).__name__}: {exc}")
            return
        reply = small_agent.bus.execute(cmd, timeout=300)
        if reply.error is None:
            tally.saw(f"{name} ok")
        elif reply.error.kind not in CONTRACT_KINDS or not contract_error_body(reply.to_dict()):
            tally.fail(f"{name}: {reply.error.kind}: {reply.error.message}")
        else:
            tally.saw(f"{name} {reply.error.kind}")

    run()
    # The agent still fits and judges after all that (on a ROI of its own: the one above
    # may now hold a memory at another scale or token grid, as the commands asked).
    after = {"role_id": "After", "roi_id": "after", "mm_per_px": MM}
    fit = {**after, "images": [b64(p) for p in ok_pngs[:2]]}
    infer = {**after, "image": b64(ok_pngs[6]), "heatmap": False}
    for name, payload in (("fit_ok", fit), ("infer", infer)):
        final = small_agent.bus.execute(parse_command(name, payload, "test"), timeout=300)
        if final.error is not None:
            tally.fail(f"{name} afterwards: {final.error.kind}: {final.error.message}")
    tally.record(record_property)
    assert not tally.failures, tally.failures[:5]
    assert sum(n for k, n in tally.outcomes.items() if k.endswith(" ok")) >= 5


# -- 4. sidecars --------------------------------------------------------------------------


def sidecar_documents() -> st.SearchStrategy[bytes]:
    fields = Fields(st.just("x"), st.just("/etc/passwd")).any
    known = st.fixed_dictionaries(
        {},
        optional={
            **{k: fields[k] for k in ("mm_per_px", "shape", "recipe_id", "request_id")},
            # Fields a sidecar cannot set: they must change nothing.
            "role_id": st.sampled_from(hostile.TRAVERSAL_IDS),
            "image_path": st.just("/etc/passwd"),
            "image": st.just("aGVsbG8="),
        },
    )
    as_json = st.one_of(known, hostile.json_values).map(lambda v: json.dumps(v).encode())
    return st.one_of(
        as_json,
        as_json,
        known.map(lambda v: json.dumps(v).encode("utf-16")),
        st.binary(max_size=64),
        st.sampled_from(
            [
                hostile.DEEP_JSON.encode(),
                b'{"mm_per_px": ' + b"7" * 5000 + b"}",
                b'{"mm_per_px": 0.2, "request_id": "\\ud800"}',
                b'{"mm_per_px": 0.2, "recipe_id": "last"}',
                b"\xef\xbb\xbf{}",
                b"",
            ]
        ),
    )


@pytest.mark.reliability("bad_input", "folder sidecars: random JSON, raw bytes, deep nesting")
def test_sidecars_give_a_command_or_a_clear_refusal(
    tmp_path: Path, ok_pngs, record_property, gradual_underflow, hypothesis_home
) -> None:
    inbox = tmp_path / "inbox"
    files = {}
    for kind in ("ok", "ng", "infer"):
        path = inbox / ROI["role_id"] / ROI["roi_id"] / kind / "part.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(ok_pngs[0])
        st_ = path.stat()
        files[kind] = (InboxFile(path, ROI["role_id"], ROI["roi_id"], kind), st_)
    tally = Tally()

    @bounded(300)
    @given(kind=st.sampled_from(sorted(files)), document=sidecar_documents())
    def run(kind: str, document: bytes) -> None:
        file, st_ = files[kind]
        file.sidecar.write_bytes(document)
        past = time.time() - 60  # settled long ago: no reason to wait for it
        os.utime(file.sidecar, (past, past))
        sig = (st_.st_size, st_.st_mtime_ns, st_.st_ino)
        try:
            cmd, _ = prepare_command(
                file, inbox, ok_pngs[0], sig, lambda key: None, 0.3, sidecar_missing_is_final=True
            )
        except Refused as refused:
            if not contract_error_body(refused.body) or not utf8_json(refused.body):
                tally.fail(f"error body {refused.body!r:.200}")
            elif refused.body["error"]["kind"] not in REFUSALS:
                tally.fail(f"kind {refused.body['error']['kind']}")
            else:
                tally.saw("refused")
            return
        except SidecarPending:
            tally.fail(f"a settled sidecar left pending: {document[:60]!r}")
            return
        except Exception as exc:
            tally.fail(f"{type(exc).__name__}: {exc} for {document[:60]!r}")
            return
        failure = check_command(cmd)
        if failure is None and isinstance(cmd, RoiCommand) and cmd.role_id != ROI["role_id"]:
            failure = f"a sidecar changed role_id to {cmd.role_id!r}"
        image = getattr(cmd, "image", None) or getattr(cmd, "images", (None,))[0]
        if failure is None and image != ok_pngs[0]:
            failure = "a sidecar replaced the image"
        if failure is not None:
            tally.fail(failure)
        else:
            tally.saw(f"command {cmd.name}")

    run()
    tally.record(record_property)
    assert not tally.failures, tally.failures[:5]
    assert tally.outcomes["refused"] > 50 and len(tally.outcomes) > 1


BAD_SIDECARS: dict[str, bytes] = {
    "notjson": b"{not json",
    "list": b"[0.2]",
    "negative": b'{"mm_per_px": -1}',
    "text": b'{"mm_per_px": "abc"}',
    "huge": b'{"mm_per_px": 1' + b"0" * 400 + b"}",
    "digits": b'{"mm_per_px": ' + b"7" * 5000 + b"}",
    "nan": b'{"mm_per_px": NaN}',
    "deep": hostile.DEEP_JSON.encode(),
    "binary": bytes(range(256)),
    "reserved": b'{"mm_per_px": 0.2, "recipe_id": "last"}',
    "shape": b'{"mm_per_px": 0.2, "shape": {"kind": "rect", "x": "a", "y": [], "w": 1e999}}',
    "badshape": b'{"mm_per_px": 0.2, "shape": "' + b"[" * 5000 + b'"}',
}
# Sidecars whose odd fields are ignored or sanitised: the sample is stored, inside the root.
ODD_BUT_FINE: dict[str, bytes] = {
    "surrogate": b'{"mm_per_px": 0.2, "request_id": "\\ud800"}',
    "traversal": json.dumps(
        {
            "mm_per_px": MM,
            "recipe_id": "../../Etc",
            "role_id": "../../escaped",
            "image_path": "/etc/passwd",
        }
    ).encode(),
}


@pytest.mark.reliability("bad_input", "folder agent fed bad sidecars: failed/ + .error.json")
def test_bad_sidecars_end_in_failed_and_the_folder_adapter_keeps_going(
    agents: FolderAgents, ok_pngs, record_property
) -> None:
    agent, _, _ = agents.make()
    data = agent.settings.data_root
    roi = data / "inbox" / ROI["role_id"] / ROI["roi_id"]
    for name, document in {**BAD_SIDECARS, **ODD_BUT_FINE}.items():
        # ok/ for the shape ones (fit_ok parses the shape), ng/ for the rest
        kind = "ok" if "shape" in name else "ng"
        (roi / kind).mkdir(parents=True, exist_ok=True)
        (roi / kind / f"{name}.json").write_bytes(document)
        (roi / kind / f"{name}.png.tmp").write_bytes(ok_pngs[0])
        os.replace(roi / kind / f"{name}.png.tmp", roi / kind / f"{name}.png")
    good = roi / "ng" / "good.png"
    (roi / "ng" / "good.json").write_text(json.dumps({"mm_per_px": MM}))
    good.write_bytes(ok_pngs[1])
    expected = len(BAD_SIDECARS) + len(ODD_BUT_FINE) + 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = len(failed(data)) + len(processed(data))
        if done >= expected and not inbox_files(data):
            break
        time.sleep(0.1)
    errors = {p.name.removesuffix(".error.json"): json.loads(p.read_text()) for p in failed(data)}
    results = {p.name.removesuffix(".result.json") for p in processed(data)}
    failures = []
    for name in BAD_SIDECARS:
        body = errors.get(name)
        if body is None:
            failures.append(f"{name}: no .error.json ({'done' if name in results else 'stuck'})")
        elif not contract_error_body(body) or body["error"]["kind"] != "bad_request":
            failures.append(f"{name}: {body}")
    for name in [*ODD_BUT_FINE, "good"]:
        if name not in results:
            failures.append(f"{name}: not processed ({errors.get(name)})")
    left = [str(p.relative_to(data)) for p in inbox_files(data)]
    if left:
        failures.append(f"left in the inbox: {left}")
    stored = [p for p in (data / "datasets").rglob("*.png")]
    if len(stored) != len(ODD_BUT_FINE) + 1:
        failures.append(f"{len(stored)} samples stored")
    outside = hostile.escapes(data)
    failures += [f"outside the data root: {p}" for p in outside]
    if not (data / "datasets" / "_.._etc").is_dir():
        failures.append("the sanitised recipe folder is missing")
    record_property("tried", expected)
    record_property("failures", len(failures))
    record_property("lost", sum(1 for f in failures if "stuck" in f or "not processed" in f))
    record_property(
        "detail",
        f"{len(errors)} to failed/ with the contract body, {len(results)} processed, "
        f"{len(stored)} samples stored under the data root"
        + (f"; first failure: {failures[0][:200]}" if failures else ""),
    )
    assert not failures, failures


# -- 5. path traversal --------------------------------------------------------------------


def traversal_files(sentinel: Path) -> list[str]:
    """dataset_delete ``file`` values aimed at the sentinel next to the data root."""
    return [
        "../../../../sentinel/a.png",
        "../" * 12 + "etc/passwd",
        str(sentinel / "a.png"),
        "..",
        ".",
        "OK_1.png/../../a.png",
        "..\\..\\a.png",
        "a.png\x00.png",
    ]


@pytest.mark.reliability("bad_input", "traversal ids in role/roi/model_key/recipe (live agent)")
def test_traversal_ids_are_refused_or_stay_under_the_data_root(
    tmp_path: Path, extractor112: FeatureExtractor, ok_pngs, record_property
) -> None:
    box = tmp_path / "box"
    data_root = box / "data"
    sentinel = box / "sentinel"
    (sentinel / "sub").mkdir(parents=True)
    for name in ("a.png", "a.json", "sub/b.png"):
        (sentinel / name).write_bytes(ok_pngs[2])
    (box / "etc").mkdir()
    before = hostile.tree_state(tmp_path)
    absolute_before = {p: Path(p).exists() for p in ("/abs", "/etc/passwd.png", "/b")}
    settings = agent_settings(data_root, input_size=112)
    core = build_engine(settings)
    core.extractor = extractor112
    agent = bootstrap(settings, core=core)
    agent.start(load_model=False)
    images = [b64(p) for p in ok_pngs[:2]]
    outcomes: Counter[str] = Counter()
    failures: list[str] = []

    def send(name: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The reply's contract dict, or None when the payload was refused at parse."""
        try:
            cmd = parse_command(name, payload, "test")
        except AgentError as error:
            outcomes[f"{name} refused ({error.kind})"] += 1
            if error.kind != "bad_request":
                failures.append(f"{name} {payload}: {error.kind}")
            return None
        except Exception as exc:  # the MQTT adapter would answer this "internal"
            outcomes[f"{name} crashed"] += 1
            failures.append(f"{name} {payload!r:.80}: {type(exc).__name__}: {exc}")
            return None
        reply = agent.bus.execute(cmd, timeout=300)
        outcomes[f"{name} {'ok' if reply.ok else reply.error.kind}"] += 1  # type: ignore[union-attr]
        return reply.to_dict()

    try:
        for field in ("role_id", "roi_id", "model_key", "recipe_id"):
            for value in hostile.TRAVERSAL_IDS:
                base = {"role_id": "R", "roi_id": "I", "mm_per_px": MM, field: value}
                fit = send("fit_ok", {**base, "images": images})
                if fit is None or "error" in fit:
                    if fit is not None and fit["error"]["kind"] != "bad_request":
                        failures.append(f"fit_ok {field}={value!r}: {fit['error']}")
                    continue
                # Accepted: everything else must find it again, under the data root.
                infer = send("infer", {**base, "image": images[0], "heatmap": False})
                ng = send("add_ng", {**base, "images": images[:1]})
                scores = {**base, "ok_scores": [0.1, 0.2], "ng_scores": [0.9]}
                calibration = send("calibrate_ng", scores)
                listing = send("dataset_list", base)
                manifest = send("manifest", base)
                for reply in (infer, ng, calibration, listing, manifest):
                    if reply is None or "error" in reply:
                        failures.append(f"{field}={value!r}: {reply}")
                if manifest and "error" not in manifest and manifest["datasets"]["ok"] < 2:
                    failures.append(f"{field}={value!r}: manifest {manifest['datasets']}")
                for file in traversal_files(sentinel):
                    deleted = send("dataset_delete", {**base, "label": "ok", "file": file})
                    if deleted is not None and deleted.get("deleted"):
                        failures.append(f"dataset_delete file={file!r} deleted something")
                send("dataset_clear", {**base, "label": "ng"})
    finally:
        agent.stop(timeout=30)
    after = hostile.tree_state(tmp_path, skip=data_root)
    changed = sorted(set(before.items()) ^ set(after.items()))
    failures += [f"outside the data root changed: {entry}" for entry in changed[:10]]
    failures += [f"escapes the data root: {p}" for p in hostile.escapes(data_root)]
    failures += [
        f"{p} appeared" for p, existed in absolute_before.items() if Path(p).exists() != existed
    ]
    tried = sum(outcomes.values())
    record_property("tried", tried)
    record_property("failures", len(failures))
    record_property("lost", 0)
    accepted = outcomes["fit_ok ok"]
    refused = sum(n for k, n in outcomes.items() if k.startswith("fit_ok") and k != "fit_ok ok")
    record_property(
        "detail",
        f"{accepted} id cases stored under the root, {refused} refused with bad_request, "
        f"sentinel untouched: {not changed}"
        + (f"; first failure: {failures[0][:200]}" if failures else ""),
    )
    assert not failures, failures[:10]
    assert accepted > 40 and refused > 20


def read_with_timeout(call: Callable[[], Any], timeout: float = 5.0) -> tuple[str, Any]:
    """("done", result) / ("error", exc), or ("hung", None) when the call blocked."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["done"] = call()
        except BaseException as exc:  # reported to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return "hung", thread
    return ("done", box["done"]) if "done" in box else ("error", box["error"])


def release(fifo: Path) -> None:
    """Unblock a reader stuck on a FIFO: open it for writing once and close it."""
    with contextlib.suppress(OSError):  # no reader waiting: nothing to release
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.reliability(
    "bad_input", "image_path: '..', relative, symlinks out, dirs, /proc, FIFOs"
)
def test_image_path_never_reads_outside_the_image_roots(
    broker, mqtt_agent, tmp_path: Path, ok_pngs, record_property
) -> None:
    root = tmp_path / "roots" / "images"
    outside = tmp_path / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    (root / "ok.png").write_bytes(ok_pngs[0])
    (root / "sub").mkdir()
    (outside / "secret.png").write_bytes(ok_pngs[1])
    os.mkfifo(outside / "trap.png")  # reading it blocks: a read outside the roots shows
    os.mkfifo(root / "pipe.png")
    (root / "link_out.png").symlink_to(outside / "secret.png")
    (root / "link_trap.png").symlink_to(outside / "trap.png")
    (root / "link_proc").symlink_to("/proc/self/environ")
    (root / "link_dir").symlink_to(outside)
    with open(root / "sparse.png", "wb") as handle:  # 30 MB on paper, nothing on disk
        handle.truncate(30 << 20)
    attempts = [
        "../outside/secret.png",
        "images/ok.png",
        f"{root}/../../outside/secret.png",
        f"{root}/link_out.png",
        f"{root}/link_trap.png",
        f"{root}/link_dir/secret.png",
        f"{root}/link_dir/trap.png",
        f"{root}/link_proc",
        f"{root}/sub",
        str(root),
        f"{root}/pipe.png",
        f"{root}/sparse.png",
        f"{root}/missing.png",
        "/proc/self/environ",
        "/proc/self/mem",
        "/etc/passwd",
        "/dev/zero",
        f"{root}/ok.png\x00",
        "\ud800",
        str(outside / "trap.png"),
    ]
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    for path in attempts:
        payload = {**ROI, "mm_per_px": MM, "image_path": path}
        state, value = read_with_timeout(
            lambda p=payload: parse_command(  # type: ignore[misc]
                "infer", p, "mqtt", [root], max_image_bytes=20 << 20
            )
        )
        if state == "hung":
            failures.append(f"{path!r}: blocked reading")
            release(outside / "trap.png")
            release(root / "pipe.png")
            value.join(5)
        elif state == "done":
            failures.append(f"{path!r}: accepted, read {len(value.image)} bytes")
        elif not isinstance(value, AgentError) or value.kind not in REFUSALS:
            failures.append(f"{path!r}: {type(value).__name__}: {value}")
        else:
            outcomes[value.kind] += 1
    allowed = parse_command(
        "infer", {**ROI, "mm_per_px": MM, "image_path": str(root / "ok.png")}, "mqtt", [root]
    )
    if getattr(allowed, "image", None) != ok_pngs[0]:
        failures.append("the allowed path was not read")
    # The same through a live agent's MQTT adapter: refusals on the result topic.
    mqtt_agent(broker.port, agent_id="paths", image_roots=[str(root)])
    plc = Client(broker.port, client_id="plc-paths", subscribe=("bdi/paths/result/#",))
    try:
        for path in [*attempts[:8], f"{root}/pipe.png", f"{root}/sparse.png", str(root / "ok.png")]:
            request_id = str(uuid.uuid4())
            body = {**ROI, "mm_per_px": MM, "image_path": path, "request_id": request_id}
            plc.publish("bdi/paths/cmd/infer", body)
            try:
                reply = plc.reply(request_id, timeout=30)
            except TimeoutError:
                failures.append(f"mqtt {path!r}: no reply (the MQTT thread is stuck)")
                break
            kind = reply.get("error", {}).get("kind")
            outcomes[f"mqtt {kind}"] += 1
            if path == str(root / "ok.png"):
                if kind != "not_fitted":  # read and decoded; this ROI has no memory
                    failures.append(f"mqtt {path}: {reply}")
            elif kind not in REFUSALS:
                failures.append(f"mqtt {path!r}: {reply}")
    finally:
        plc.close()
        release(outside / "trap.png")
        release(root / "pipe.png")
    record_property("tried", len(attempts) + 12)
    record_property("failures", len(failures))
    record_property("lost", 0)
    record_property(
        "detail",
        ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        + (f"; first failure: {failures[0][:200]}" if failures else ""),
    )
    assert not failures, failures


# -- 6. decompression bombs ---------------------------------------------------------------


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
