"""SIGKILL of ``python -m agent run`` during a fit and during store writes, then restart.

What a plant sees after a power cut or an OOM kill: every ROI answers again, every stored
sample and memory is whole, and a command the agent acknowledged is on disk. A command cut
short can be sent again with its request id: it is then applied once, never twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent.demo.discs import decode_png, encode_png, make_set
from engine.keys import RoiKey
from engine.store import ModelStore, read_memory
from tests.reliability.fault_support import (
    FORM,
    ROI,
    TEMP_PREFIX,
    HttpAgent,
    InFlight,
    body_of,
    check_data_root,
    upload,
    wait_until,
)

KEY = RoiKey.of(ROI["role_id"], ROI["roi_id"])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def memory_on_disk(root: Path) -> Any:
    path = ModelStore(root / "models").find_memory(KEY)
    assert path is not None, "the ROI lost its memory"
    return read_memory(path)


def saving(folder: Path) -> bool:
    """A temp file of an atomic write is in the ROI's model folder: a save is under way."""
    try:
        return any(name.startswith(TEMP_PREFIX) for name in os.listdir(folder))
    except FileNotFoundError:
        return False


@pytest.mark.reliability("fault", "agent SIGKILL during a fit, then restart")
def test_sigkill_during_a_fit_leaves_old_or_new_memory(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    root = tmp_path / "data"
    pngs = [encode_png(d.image) for d in make_set(seed=71, n_ok=45, size=224)]
    base, rounds, probe = pngs[:4], [pngs[4:24], pngs[24:44]], pngs[44]
    rng = random.Random(71)
    problems: list[str] = []
    lost = 0
    outcomes = []
    temp_files = 0  # left by a kill mid-write: ignored by every reader, the restart included
    agent = HttpAgent(root)
    try:
        agent.wait_ready()
        with agent.client() as client:
            first = client.post("/fit_ok", data=FORM, files=upload(base))
            assert first.status_code == 200, first.text
        expected = list(base)
        model_dir = ModelStore(root / "models").model_dir(KEY)
        # Round 0 kills at a random moment of the fit's first second (storing, embedding);
        # round 1 the moment the new memory's temp file appears (the save itself).
        for number, images in enumerate(rounds):
            request_id = f"fit-{number}"
            before = memory_on_disk(root).info.n_samples
            with agent.client() as client, agent.client(timeout=5) as status:

                def send(
                    client: httpx.Client = client,
                    images: list[bytes] = images,
                    request_id: str = request_id,
                ) -> Any:
                    headers = {"X-Request-Id": request_id}
                    return client.post("/fit_ok", data=FORM, files=upload(images), headers=headers)

                fit = InFlight(send)
                wait_until(
                    lambda status=status, fit=fit: (
                        fit.done or status.get("/train/status").json()["status"] == "running"
                    ),
                    60,
                    "the fit to start",
                )
                if number == 0:
                    offset = rng.uniform(0.0, 1.0)
                    moment = f"{offset:.2f}s into the fit"
                    time.sleep(offset)
                else:
                    moment = "while saving the memory"
                    wait_until(
                        lambda fit=fit: fit.done or saving(model_dir), 120, "the save", poll=0.001
                    )
                    if fit.done:
                        moment = "after the fit (the save was too quick to catch)"
                agent.kill()
                fit.join()
            acknowledged = fit.response is not None and fit.response.status_code == 200
            integrity = check_data_root(root)
            problems += integrity.problems
            temp_files += len(integrity.temp_files)
            after = memory_on_disk(root).info.n_samples
            # The memory on disk is the old one or the complete new one, never a mix.
            if after not in (before, before + len(images)):
                problems.append(f"round {number}: memory has {after} samples")
            if acknowledged and after != before + len(images):
                lost += 1
            outcomes.append(f"killed {moment}: memory {'new' if after > before else 'old'}")

            agent = HttpAgent(root)
            agent.wait_ready()
            with agent.client() as client:
                verdict = client.post(
                    "/infer",
                    data={**FORM, "heatmap": "false"},
                    files={"image": ("p.png", probe, "image/png")},
                )
                if verdict.status_code != 200:
                    problems.append(f"round {number}: infer after restart: {verdict.text}")
                elif body_of(verdict)["model_version"] != memory_on_disk(root).info.model_version:
                    problems.append(f"round {number}: infer answered from another memory")
                manifest = client.get("/manifest", params=ROI)
                if manifest.status_code != 200 or not body_of(manifest)["memory"].get("n"):
                    problems.append(f"round {number}: manifest after restart: {manifest.text}")
                again = client.post(
                    "/fit_ok",
                    data=FORM,
                    files=upload(images),
                    headers={"X-Request-Id": request_id},
                )
                if again.status_code != 200:
                    problems.append(f"round {number}: repeated fit_ok: {again.text}")
            expected += images
            stored = check_data_root(root).shas("ok")
            twice = sum(1 for image in expected if stored[sha(image)] > 1)
            missing = sum(1 for image in expected if stored[sha(image)] == 0)
            if twice:
                problems.append(f"round {number}: {twice} samples stored twice")
            lost += missing
            if memory_on_disk(root).info.n_samples != len(expected):
                problems.append(f"round {number}: the repeated fit does not cover the dataset")
    finally:
        agent.stop()
    record_property("tried", len(rounds))
    record_property("failures", len(problems))
    record_property("lost", lost)
    record_property(
        "detail",
        "; ".join(outcomes) + f"; {temp_files} temp files left; restart clean, repeat applied once",
    )
    assert not problems, problems
    assert lost == 0


def variant(base: np.ndarray, n: int) -> bytes:
    """A distinct image per command (two marker pixels), so each sample is traceable."""
    image = base.copy()
    image[0, 0] = n % 256
    image[0, 1] = n // 256
    return encode_png(image)


class Stream:
    """A client sending add_ng / fit_ok(memory_fit=false) / calibrate_ng in turn, as fast
    as the agent answers, until the connection dies. It remembers what was acknowledged."""

    def __init__(self, url: str, base: np.ndarray, start: int) -> None:
        self.url = url
        self.base = base
        self.n = start
        self.acked: list[dict[str, Any]] = []  # the commands answered 200
        self.refused: list[str] = []  # answered, but not 200: a failure of the agent
        self.in_flight: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _next(self) -> tuple[dict[str, Any], Callable[[httpx.Client], httpx.Response]]:
        n = self.n
        self.n += 1
        request_id = f"cmd-{n}"
        headers = {"X-Request-Id": request_id}
        kind = ("add_ng", "store_ok", "calibrate_ng")[n % 3]
        if kind == "calibrate_ng":
            record = {"kind": kind, "request_id": request_id, "threshold": float(n)}
            payload = {**ROI, "ok_scores": [float(n)] * 5}
            return record, lambda c: c.post("/calibrate_ng", json=payload, headers=headers)
        image = variant(self.base, n)
        record = {"kind": kind, "request_id": request_id, "sha": sha(image), "image": image}
        if kind == "add_ng":
            return record, lambda c: c.post(
                "/send_ng", data=FORM, files=upload([image]), headers=headers
            )
        form = {**FORM, "memory_fit": "false"}
        return record, lambda c: c.post(
            "/fit_ok", data=form, files=upload([image]), headers=headers
        )

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while True:
                record, send = self._next()
                self.in_flight = record
                try:
                    response = send(client)
                except httpx.TransportError:
                    return
                self.in_flight = None
                if response.status_code == 200:
                    self.acked.append(record)
                else:
                    self.refused.append(response.text[:200])

    def join(self) -> None:
        self._thread.join(60)


@pytest.mark.reliability("fault", "agent SIGKILL during store writes, repeated")
def test_sigkill_during_store_writes_keeps_every_acknowledged_sample(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    root = tmp_path / "data"
    pngs = [encode_png(d.image) for d in make_set(seed=72, n_ok=3, size=224)]
    base = decode_png(pngs[0])
    rng = random.Random(72)
    kills = 3
    problems: list[str] = []
    lost = 0
    acked: list[dict[str, Any]] = []
    sent = 0
    agent = HttpAgent(root)
    try:
        agent.wait_ready()
        with agent.client() as client:
            assert client.post("/fit_ok", data=FORM, files=upload(pngs)).status_code == 200
        for kill in range(kills):
            stream = Stream(agent.url, base, start=sent)
            wait_until(lambda stream=stream: len(stream.acked) >= 3, 60, "the stream to flow")
            time.sleep(rng.uniform(0.0, 1.5))
            agent.kill()
            stream.join()
            sent = stream.n
            acked += stream.acked
            problems += [f"kill {kill}: refused {text}" for text in stream.refused]
            integrity = check_data_root(root)
            problems += [f"kill {kill}: {p}" for p in integrity.problems]
            # Acknowledged = durable: every answered store is on disk, exactly once.
            for record in acked:
                if "sha" not in record:
                    continue
                label = "ng" if record["kind"] == "add_ng" else "ok"
                count = integrity.shas(label)[record["sha"]]
                lost += count == 0
                if count > 1:
                    problems.append(f"kill {kill}: {record['request_id']} stored {count} times")
            calibrations = [r for r in acked if r["kind"] == "calibrate_ng"]
            allowed = {calibrations[-1]["threshold"]} if calibrations else set()
            if stream.in_flight and stream.in_flight["kind"] == "calibrate_ng":
                allowed.add(stream.in_flight["threshold"])
            stored = ModelStore(root / "models").load_calibration(KEY)
            if calibrations and (stored is None or stored["threshold"] not in allowed):
                lost += 1  # an older threshold than the last one acknowledged

            agent = HttpAgent(root)
            agent.wait_ready()
            # The last acknowledged store, sent again: answered, not applied twice.
            last = next((r for r in reversed(acked) if "sha" in r), None)
            if last is not None:
                with agent.client() as client:
                    path = "/send_ng" if last["kind"] == "add_ng" else "/fit_ok"
                    form = FORM if last["kind"] == "add_ng" else {**FORM, "memory_fit": "false"}
                    again = client.post(
                        path,
                        data=form,
                        files=upload([last["image"]]),
                        headers={"X-Request-Id": last["request_id"]},
                    )
                if again.status_code != 200:
                    problems.append(f"kill {kill}: repeat of {last['request_id']}: {again.text}")
                label = "ng" if last["kind"] == "add_ng" else "ok"
                if check_data_root(root).shas(label)[last["sha"]] != 1:
                    problems.append(f"kill {kill}: the repeat stored {last['request_id']} again")
        with agent.client() as client:
            manifest = body_of(client.get("/manifest", params=ROI))
    finally:
        agent.stop()
    integrity = check_data_root(root)
    record_property("tried", kills)
    record_property("failures", len(problems))
    record_property("lost", lost)
    record_property(
        "detail",
        f"{sent} commands sent, {len(acked)} acknowledged, all on disk once; "
        f"{len(integrity.temp_files)} temp files and {len(integrity.orphan_meta)} orphan "
        "metadata left by the kills (never read as data)",
    )
    print(json.dumps({"sent": sent, "acked": len(acked), "manifest": manifest["datasets"]}))
    assert not problems, problems
    assert lost == 0
