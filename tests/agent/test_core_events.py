"""The core's events (contract section 9), its loading gate and its fast lane, in process.

Every infer outcome is one ``verdict`` whatever asked for it; ``alert_consecutive``
anomalies in a row give one ``alert`` and the OK verdict after them a ``cleared``; a fit or
calibration gives the ROI's ``state``; a model that loads gives ``health``. Commands that
need the model wait while it loads; an ``infer_batch`` is answered before a long fit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agent.bootstrap import Agent
from agent.commands import CalibrateNg, FitOk, Infer, InferBatch, Manifest
from agent.events import Event

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
MM = 0.2


class Recorder:
    def __init__(self, agent: Agent) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        agent.bus.events.subscribe(self._add)

    def _add(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def named(self, name: str) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.name == name]

    def wait(self, name: str, count: int = 1, timeout: float = 10) -> list[Event]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(found := self.named(name)) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{count} {name} events expected, got {self.named(name)}")


def infer(image: bytes, request_id: str, **fields: object) -> Infer:
    return Infer(request_id=request_id, mm_per_px=MM, image=image, heatmap=False, **ROI, **fields)


def test_verdicts_alerts_and_states_are_emitted_once_by_the_core(
    make_agent: Callable[..., Agent], ok_pngs: list[bytes]
) -> None:
    agent = make_agent(alert_consecutive=2)
    seen = Recorder(agent)
    bus = agent.bus
    assert bus.execute(FitOk(request_id="f", mm_per_px=MM, images=tuple(ok_pngs[:3]), **ROI)).ok
    state = seen.wait("state")[-1].body
    assert (
        state["fitted"] is True
        and state["calibrated"] is False
        and state["roi_id"] == "Inspection_1"
    )
    # Everything anomalous: a threshold under every score.
    assert bus.execute(CalibrateNg(request_id="c", ok_scores=(0.0,), **ROI)).ok
    assert seen.wait("state", 2)[-1].body["calibrated"] is True
    for i in range(3):
        assert bus.execute(infer(ok_pngs[5], f"bad-{i}")).body["is_anomaly"] is True
    batch = InferBatch(request_id="b", items=(infer(ok_pngs[6], "item-0"),))
    assert bus.execute(batch).ok
    verdicts = seen.wait("verdict", 4)
    assert [v.body["request_id"] for v in verdicts] == ["bad-0", "bad-1", "bad-2", "item-0"]
    first = verdicts[0].body
    assert first["seq"] == verdicts[0].seq and first["source"] == "cli"
    assert first["n_regions"] >= 1 and first["max_area_mm2"] > 0 and first["threshold"] == 0.0
    assert len(verdicts[0].data) < 1024 and "heatmap" not in verdicts[0].data
    alerts = seen.wait("alert")
    assert len(alerts) == 1 and alerts[0].body["kind"] == "consecutive_anomalies"
    assert alerts[0].body["count"] == 2 and alerts[0].body["last_request_id"] == "bad-1"
    assert bus.execute(CalibrateNg(request_id="c2", ok_scores=(1e6,), **ROI)).ok
    assert bus.execute(infer(ok_pngs[5], "good")).body["is_anomaly"] is False
    cleared = seen.wait("alert", 2)[-1].body
    assert (
        cleared["kind"] == "cleared"
        and cleared["count"] == 4
        and cleared["roi_id"] == "Inspection_1"
    )
    # Every event in seq order, each once; the recent ring has the verdicts' pictures.
    seqs = [e.seq for e in seen.events]
    assert seqs == sorted(set(seqs))
    recent = bus.recent.newest_first()
    assert [r.verdict["request_id"] for r in recent][:2] == ["good", "item-0"]
    assert recent[0].image_png.startswith(b"\x89PNG") and recent[0].heatmap_png is None
    missed_none, missed = bus.events.since(seqs[0] - 1)
    assert not missed and [e.seq for e in missed_none] == seqs


def test_commands_wait_while_the_model_loads_and_are_served_once_it_is_ready(
    make_agent: Callable[..., Agent], ok_pngs: list[bytes]
) -> None:
    agent = make_agent()
    bus = agent.bus
    assert bus.execute(FitOk(request_id="f", mm_per_px=MM, images=tuple(ok_pngs[:3]), **ROI)).ok
    seen = Recorder(agent)
    agent.services.model_state = "loading"
    bus.health_changed()
    assert seen.wait("health")[-1].body["status"] == "loading"
    waiting = bus.submit(infer(ok_pngs[5], "early"))
    # A command that does not need the model is not held behind it.
    assert bus.execute(Manifest(request_id="m", **ROI), timeout=10).ok
    time.sleep(0.5)
    assert not waiting.done()
    agent.services.model_state = "ready"
    agent._model_changed()
    reply = waiting.result(30)
    assert reply.ok and isinstance(reply.body["score"], float)
    assert seen.wait("health", 2)[-1].body["status"] == "ok"


def test_infer_batch_is_answered_before_a_long_fit(
    make_agent: Callable[..., Agent], ok_pngs: list[bytes]
) -> None:
    agent = make_agent()
    bus = agent.bus
    assert bus.execute(FitOk(request_id="f", mm_per_px=MM, images=tuple(ok_pngs[:2]), **ROI)).ok
    images = tuple(ok_pngs) * 3  # 36 images: the fit runs many backbone chunks
    fit = bus.submit(FitOk(request_id="big", mm_per_px=MM, images=images, **ROI))
    time.sleep(0.3)  # the fit has started
    batch = bus.submit(
        InferBatch(request_id="b", items=(infer(ok_pngs[4], "i0"), infer(ok_pngs[5], "i1")))
    )
    assert batch.result(120).ok
    assert not fit.done(), "the batch waited for the whole fit"
    assert fit.result(300).ok
