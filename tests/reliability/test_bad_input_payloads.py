"""Hostile input (contract sections 2, 3, 5, 6), payloads and sidecars: whatever command
payload or folder sidecar a client sends, parsed or executed by a live agent, the agent
answers with a contract error or a result, never crashes and never answers ``internal``;
the folder agent moves a sample with a bad sidecar to failed/ and keeps going.

The HTTP API's own property run (schemathesis over /openapi.json) is in
tests/adapters/test_http_openapi.py and is not repeated here.
"""

# Fixtures come from tests/adapters/conftest.py and hostile.py.
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.folders.layout import InboxFile, Refused, SidecarPending, prepare_command
from agent.bootstrap import Agent, bootstrap, build_engine
from agent.commands import COMMANDS, Command, InferBatch, RoiCommand
from agent.errors import STATUS_BY_KIND, AgentError
from agent.parsing import parse_command
from engine.features import FeatureExtractor
from tests.adapters.conftest import agents, extractor112  # noqa: F401
from tests.adapters.test_folders_support import FolderAgents, failed, inbox_files, processed
from tests.conftest import agent_settings
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

CONTRACT_KINDS = set(STATUS_BY_KIND) - {"internal", "unauthorized"}


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


# -- command payloads ---------------------------------------------------------------------

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


# -- sidecars -----------------------------------------------------------------------------


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
