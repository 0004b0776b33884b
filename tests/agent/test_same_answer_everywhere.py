"""One input, one answer, whichever adapter brought it (contract sections 2, 5, 6, 7).

One agent runs its three adapters at once: MQTT (a real mosquitto), HTTP (a real uvicorn
server) and folders (real files in the inbox). Each row of the table is sent through every
adapter that can carry it, in that adapter's own form (a JSON message, a multipart form, an
image file with its sidecar), and each adapter must give the same outcome: the same score
for a good input, the same error kind (and the same recipe id) for a bad one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.folders.adapter import create as create_folders
from adapters.http.adapter import create as create_http
from adapters.mqtt.adapter import create as create_mqtt
from agent.bootstrap import Adapter, Agent, bootstrap, build_engine
from agent.commands import Infer
from agent.config import ConfigError, load_roi_defaults
from agent.errors import AgentError
from agent.parsing import parse_command
from engine.features import FeatureExtractor
from engine.keys import RoiKey
from tests.adapters.mqtt_support import Broker, Client
from tests.conftest import agent_settings
from tests.support import b64

AGENT_ID = "same"
ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
MM = 0.2
LINE_A_MM = 0.25  # the default of the "Line A" ROI, which no command of the table gives
ROIS_YAML = f"""
rois:
  - role_id: Inspection
    roi_id: Inspection_1
    recipe_id: Line A
    mm_per_px: {LINE_A_MM}
"""
RECT = {"kind": "rect", "x": 96, "y": 96, "w": 48, "h": 48}
GARBAGE = b"%%% not an image %%%"


@dataclass(frozen=True)
class Case:
    """One input of the table. ``fields`` are the command's fields as JSON carries them
    (MQTT payload, folder sidecar); ``form`` overrides how an HTTP form carries them (text
    only); ``image``: "good", "garbage" (undecodable) or None (no image at all)."""

    name: str
    expect: str  # "ok" or the error kind
    fields: dict[str, Any] = field(default_factory=dict)
    form: dict[str, Any] = field(default_factory=dict)
    command: str = "infer"
    image: str | None = "good"
    roi: dict[str, str] = field(default_factory=lambda: dict(ROI))
    folder_kind: str | None = "infer"  # None: a file in the inbox cannot say this


CASES = [
    Case("good-infer", "ok", {"mm_per_px": MM}),
    Case("shape-object", "ok", {"mm_per_px": MM, "shape": RECT}, {"shape": json.dumps(RECT)}),
    Case("shape-string", "ok", {"mm_per_px": MM, "shape": json.dumps(RECT)}),
    Case("bad-shape-json", "bad_request", {"mm_per_px": MM, "shape": '{"kind":"circle"'}),
    Case("wrong-type", "bad_request", {"mm_per_px": "abc"}),
    Case("negative-scale", "bad_request", {"mm_per_px": -0.2, "recipe_id": "Line A"}),
    Case("reserved-recipe", "bad_request", {"mm_per_px": MM, "recipe_id": "last"}),
    Case("no-scale-no-default", "bad_request", {}),
    Case("no-scale-line-a-default", "ok", {"recipe_id": "Line A"}),
    # Undecodable: text that is no base64 on MQTT; bytes that are no image on HTTP and in
    # a folder (neither carries base64).
    Case("undecodable-image", "bad_request", {"mm_per_px": MM}, image="garbage"),
    Case(
        "missing-field",
        "bad_request",
        {"mm_per_px": MM},
        roi={"role_id": "Inspection"},
        folder_kind=None,  # a file's folders always name the ROI
    ),
    Case("flag-yes", "bad_request", {"mm_per_px": MM, "heatmap": "yes"}, folder_kind=None),
    Case(
        "empty-images",
        "bad_request",
        {"mm_per_px": MM, "images": []},
        command="fit_ok",
        image=None,
        folder_kind=None,  # a file is always one image
    ),
    # A label nobody knows: dataset_list's label on MQTT and HTTP, the kind folder of the
    # inbox (inbox/<role>/<roi>/<kind>/) for files.
    Case(
        "unknown-label",
        "bad_request",
        {"label": "maybe"},
        command="dataset_list",
        image=None,
        folder_kind="maybe",
    ),
]


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok" or the error kind
    code: int
    recipe_id: str
    score: float | None = None


class Everywhere:
    """The agent, and a client of each of its adapters."""

    def __init__(self, agent: Agent, plc: Client, http: httpx.Client, png: bytes) -> None:
        self.agent = agent
        self.plc = plc
        self.http = http
        self.png = png
        self.inbox = agent.settings.data_root / "inbox"

    def image_bytes(self, case: Case) -> bytes:
        return self.png if case.image == "good" else GARBAGE

    def mqtt(self, case: Case) -> Outcome:
        request_id = f"{case.name}-mqtt"
        payload: dict[str, Any] = {**case.roi, **case.fields, "request_id": request_id}
        if case.image is not None:
            payload["image"] = b64(self.png) if case.image == "good" else "%%%"
        self.plc.publish(f"bdi/{AGENT_ID}/cmd/{case.command}", payload)
        body = self.plc.reply(request_id, timeout=60)
        if body["ok"]:
            return Outcome("ok", 200, body["recipe_id"], body.get("score"))
        error = body["error"]
        return Outcome(error["kind"], error["code"], body["recipe_id"])

    def http_call(self, case: Case) -> Outcome:
        headers = {"X-Request-Id": f"{case.name}-http"}
        values = {**case.roi, **case.fields, **case.form}
        if case.command == "dataset_list":
            response = self.http.get("/datasets/list", params=values, headers=headers)
        else:
            form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
            form.pop("images", None)  # an empty list of uploads is no upload at all
            part = "image" if case.command == "infer" else "images"
            files = (
                [(part, ("crop.png", self.image_bytes(case), "image/png"))]
                if case.image is not None
                else None
            )
            response = self.http.post(f"/{case.command}", data=form, files=files, headers=headers)
        body = response.json()
        if response.status_code == 200:
            return Outcome("ok", 200, body["recipe_id"], body.get("score"))
        error = body["error"]
        assert error["code"] == response.status_code, body
        return Outcome(error["kind"], error["code"], body["recipe_id"])

    def folder(self, case: Case) -> Outcome:
        assert case.folder_kind is not None
        folder = self.inbox / case.roi["role_id"] / case.roi["roi_id"] / case.folder_kind
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{case.name}-{uuid.uuid4().hex[:8]}"
        sidecar = {**case.fields, "request_id": f"{case.name}-folder"}
        (folder / f"{stem}.json").write_text(json.dumps(sidecar))
        (folder / f"{stem}.png.tmp").write_bytes(self.image_bytes(case))
        os.replace(folder / f"{stem}.png.tmp", folder / f"{stem}.png")  # the camera way
        data = self.agent.settings.data_root
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = [
                *(data / "processed").rglob(f"{stem}.result.json"),
                *(data / "failed").rglob(f"{stem}.error.json"),
            ]
            if done:
                body = json.loads(done[0].read_text())
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"{stem}.png was neither processed nor failed in 60 s")
        if "error" not in body:
            return Outcome("ok", 200, body["recipe_id"], body.get("score"))
        error = body["error"]
        return Outcome(error["kind"], error["code"], body["recipe_id"])


@pytest.fixture(scope="module")
def everywhere(
    tmp_path_factory: pytest.TempPathFactory, extractor: FeatureExtractor, ok_pngs: list[bytes]
) -> Iterator[Everywhere]:
    root = tmp_path_factory.mktemp("same-answer")
    broker = Broker(root / "mosquitto")
    broker.start()
    data = root / "data"
    data.mkdir()
    (data / "rois.yaml").write_text(ROIS_YAML)
    settings = agent_settings(
        data,
        agent_id=AGENT_ID,
        mqtt={"enabled": True, "host": "127.0.0.1", "port": broker.port},
        folders={"enabled": True, "settle_ms": 100, "rescan_s": 2, "fit_debounce_s": 0.5},
        http={"enabled": True, "port": 0},
    )
    core = build_engine(settings)
    core.extractor = extractor
    agent = bootstrap(settings, core=core)
    agent.start(load_model=False)
    adapters: list[Adapter] = []
    plc = http = None
    try:
        # The default recipe's ROI at MM; "Line A"'s at its rois.yaml default.
        for recipe, scale in (("default", MM), ("Line A", LINE_A_MM)):
            fit = {**ROI, "recipe_id": recipe, "mm_per_px": scale, "images": ok_pngs[:4]}
            reply = agent.bus.execute(parse_command("fit_ok", fit, "test"), timeout=300)
            assert reply.ok, reply.to_dict()
        mqtt = create_mqtt(settings, agent)
        http_adapter = create_http(settings, agent)
        adapters = [mqtt, create_folders(settings, agent), http_adapter]
        for adapter in adapters:
            adapter.start()
        plc = Client(broker.port, client_id="plc-same", subscribe=(f"bdi/{AGENT_ID}/result/#",))
        http = httpx.Client(base_url=http_adapter.url, timeout=60)
        yield Everywhere(agent, plc, http, ok_pngs[8])
    finally:
        if plc is not None:
            plc.close()
        if http is not None:
            http.close()
        for adapter in reversed(adapters):
            adapter.stop()
        agent.stop(timeout=30)
        broker.stop()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_adapter_gives_the_same_answer(everywhere: Everywhere, case: Case) -> None:
    outcomes = {"mqtt": everywhere.mqtt(case), "http": everywhere.http_call(case)}
    if case.folder_kind is not None:
        outcomes["folder"] = everywhere.folder(case)
    kinds = {name: outcome.kind for name, outcome in outcomes.items()}
    assert set(kinds.values()) == {case.expect}, outcomes
    assert len({outcome.code for outcome in outcomes.values()}) == 1, outcomes
    if case.expect == "ok" and case.command == "infer":
        scores = [outcome.score for outcome in outcomes.values()]
        assert all(score == pytest.approx(scores[0], rel=1e-4) for score in scores), outcomes
    if case.name != "reserved-recipe":  # no recipe id to echo (HTTP echoes it cleaned)
        assert len({outcome.recipe_id for outcome in outcomes.values()}) == 1, outcomes


def test_a_shape_is_one_shape_as_object_or_string(everywhere: Everywhere) -> None:
    """Both forms of the same shape mask the same pixels (contract section 2)."""
    by_object, by_string, plain = (
        everywhere.mqtt(replace(CASES[i], name=f"{CASES[i].name}-again")) for i in (1, 2, 0)
    )
    assert by_object.score == pytest.approx(by_string.score, rel=1e-6)
    assert by_object.score is not None and plain.score is not None
    assert by_object.score <= plain.score  # the max over fewer pixels


def test_rois_yaml_recipe_ids_are_normalised_like_every_recipe_id(
    everywhere: Everywhere, tmp_path: Path
) -> None:
    rois = tmp_path / "rois.yaml"
    rois.write_text(ROIS_YAML + "  - {role_id: Inspection, roi_id: Hub, recipe_id: LAST-Line}\n")
    assert set(load_roi_defaults(rois)) == {
        ("line_a", "Inspection", "Inspection_1"),
        ("last-line", "Inspection", "Hub"),
    }
    defaults_for = everywhere.agent.services.defaults_for
    for sent in ("Line A", "line a", " LINE A ", "line_a"):
        found = defaults_for(RoiKey.of("Inspection", "Inspection_1", sent))
        assert found is not None and found.mm_per_px == LINE_A_MM, sent
    # Role and ROI ids are taken as sent.
    assert defaults_for(RoiKey.of("inspection", "Inspection_1", "Line A")) is None
    assert defaults_for(RoiKey.of("Inspection", "Inspection_1")) is None
    # What the parser makes of a command without mm_per_px, with and without a default.
    payload = {**ROI, "recipe_id": "Line A", "image": b64(b"x")}
    command = parse_command("infer", payload, "test", defaults=defaults_for)
    assert isinstance(command, Infer)
    assert command.mm_per_px == LINE_A_MM and command.recipe_id == "line_a"
    with pytest.raises(AgentError, match=r"mm_per_px is required.*configs/rois\.yaml") as refused:
        parse_command("infer", {**payload, "recipe_id": "other"}, "test", defaults=defaults_for)
    assert refused.value.kind == "bad_request"
    rois.write_text("rois: [{role_id: r, roi_id: i, recipe_id: last, mm_per_px: 0.2}]\n")
    with pytest.raises(ConfigError, match="reserved"):
        load_roi_defaults(rois)
