"""Damaged files in the data root, and two agents refitting one ROI at once.

A corrupt memory or calibration is the ROI's own problem: that ROI answers with a clear
contract error that says which file and what to do, every other ROI keeps inspecting,
and refitting (or recalibrating) repairs it. Two agents sharing a data root that refit the
same ROI at the same moment both succeed, store every image once, and leave one complete
memory built from the whole dataset.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent.demo.discs import encode_png, make_set
from engine.datasets import DatasetStore
from engine.keys import RoiKey
from engine.store import ModelStore, read_memory
from tests.adapters.test_http_support import Server, serve  # noqa: F401 (fixture)
from tests.reliability.fault_support import (
    MM,
    InFlight,
    body_of,
    check_data_root,
    upload,
    wait_until,
)

A = {"role_id": "Inspection", "roi_id": "Face"}
B = {"role_id": "Inspection", "roi_id": "Hub"}


def form(roi: dict[str, str]) -> dict[str, str]:
    return {**roi, "mm_per_px": str(MM)}


def infer(server: Server, roi: dict[str, str], png: bytes) -> httpx.Response:
    return server.client.post(
        "/infer",
        data={**form(roi), "heatmap": "false"},
        files={"image": ("p.png", png, "image/png")},
    )


def key_of(roi: dict[str, str]) -> RoiKey:
    return RoiKey.of(roi["role_id"], roi["roi_id"])


def test_the_checker_sees_damage(tmp_path: Path, make_agent, ok_pngs: list[bytes]) -> None:
    """The integrity checker is the pass criterion of every fault test: it must fail."""
    root = tmp_path / "data"
    agent = make_agent(data_root=root)
    from agent.parsing import parse_command

    fit = parse_command("fit_ok", {**form(A), "images": ok_pngs[:2]}, "test")
    assert agent.bus.execute(fit).ok
    calibrate = parse_command("calibrate_ng", {**A, "ok_scores": [0.1]}, "test")
    assert agent.bus.execute(calibrate).ok
    clean = check_data_root(root)
    assert clean.clean and (clean.samples, clean.memories, clean.calibrations) == (2, 1, 1)
    store = ModelStore(root / "models")
    sample = next((root / "datasets").rglob("*.png"))
    sample.write_bytes(sample.read_bytes()[:-10])
    store.calibration_path(key_of(A)).write_text("{")
    store.memory_path(key_of(A)).write_bytes(b"PK\x03\x04 not really")
    damaged = check_data_root(root)
    assert len(damaged.problems) == 3, damaged.problems


@pytest.mark.reliability("fault", "corrupt model and calibration files")
def test_a_corrupt_model_file_is_a_clear_error_of_that_roi_only(
    serve: Callable[..., Server],  # noqa: F811
    ok_pngs: list[bytes],
    record_property: Callable[[str, object], None],
) -> None:
    server = serve()
    client = server.client
    root = server.agent.settings.data_root
    store = ModelStore(root / "models")
    for roi in (A, B):
        assert client.post("/fit_ok", data=form(roi), files=upload(ok_pngs[:3])).status_code == 200
        scores = {**roi, "ok_scores": [0.2, 0.3]}
        assert client.post("/calibrate_ng", json=scores).status_code == 200
    memory = store.memory_path(key_of(A))
    good = memory.read_bytes()
    problems: list[str] = []
    faults = {
        "garbage": lambda: memory.write_bytes(b"\x00garbage" * 4096),
        "truncated": lambda: memory.write_bytes(good[: len(good) // 2]),
        "empty": lambda: memory.write_bytes(b""),
    }
    for name, damage in faults.items():
        damage()
        for what, response in (
            ("infer", infer(server, A, ok_pngs[5])),
            ("calibrate_ng", client.post("/calibrate_ng", json={**A, "ok_scores": [0.1]})),
        ):
            error = body_of(response).get("error") or {}
            message = str(error.get("message", ""))
            if (response.status_code, error.get("kind")) != (400, "not_fitted") or not (
                "unreadable" in message and memory.name in message and "fit_ok" in message
            ):
                problems.append(f"{name}: {what} -> {response.status_code} {error}")
        manifest = client.get("/manifest", params=A)
        part = body_of(manifest).get("memory", {})
        if manifest.status_code != 200 or "unreadable" not in str(part.get("error")):
            problems.append(f"{name}: manifest -> {manifest.status_code} {manifest.text[:200]}")
        other = infer(server, B, ok_pngs[5])
        if other.status_code != 200 or body_of(other)["threshold"] is None:
            problems.append(f"{name}: the other ROI -> {other.text[:200]}")
        sent = client.post("/send_ng", data=form(A), files=upload(ok_pngs[6:7]))
        if sent.status_code != 200:
            problems.append(f"{name}: add_ng on the damaged ROI -> {sent.text[:200]}")
        memory.write_bytes(good)  # the next fault starts from a working ROI

    memory.write_bytes(good[:100])
    repaired = client.post("/fit_ok", data=form(A), files=upload(ok_pngs[3:4]))
    if repaired.status_code != 200 or infer(server, A, ok_pngs[5]).status_code != 200:
        problems.append(f"a refit did not repair the ROI: {repaired.text[:200]}")

    calibration = store.calibration_path(key_of(B))
    calibration.write_text('{"threshold": ')
    response = infer(server, B, ok_pngs[5])
    error = body_of(response).get("error") or {}
    message = str(error.get("message", ""))
    if (response.status_code, error.get("kind")) != (428, "not_calibrated") or not (
        "unreadable" in message and calibration.name in message and "calibrate_ng" in message
    ):
        problems.append(f"corrupt calibration: infer -> {response.status_code} {error}")
    if infer(server, A, ok_pngs[5]).status_code != 200:
        problems.append("corrupt calibration of B broke A")
    recalibrated = client.post("/calibrate_ng", json={**B, "ok_scores": [0.2, 0.3]})
    threshold = body_of(infer(server, B, ok_pngs[5])).get("threshold")
    if recalibrated.status_code != 200 or threshold is None:
        problems.append(f"calibrate_ng did not repair B: {recalibrated.text[:200]}")
    integrity = check_data_root(root)
    problems += integrity.problems
    lost = 3 + 3 + 1 - integrity.shas("ok").total()  # every OK sample still stored
    record_property("tried", len(faults) + 2)
    record_property("failures", len(problems))
    record_property("lost", lost)
    record_property("detail", "not_fitted / not_calibrated naming the file; others unaffected")
    assert not problems, problems
    assert lost == 0


@pytest.mark.reliability("fault", "corrupt idempotency journal")
def test_a_corrupt_journal_is_set_aside_and_replaced(
    tmp_path: Path,
    make_agent,
    ok_pngs: list[bytes],
    record_property: Callable[[str, object], None],
) -> None:
    from agent.parsing import parse_command

    root = tmp_path / "data"
    journal = root / "journal" / "requests.sqlite"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"this is not a database" * 100)
    agent = make_agent(data_root=root)
    payload = {**form(A), "images": ok_pngs[:1], "request_id": "ng-1"}
    first = agent.bus.execute(parse_command("add_ng", payload, "test"))
    again = agent.bus.execute(parse_command("add_ng", payload, "test"))
    problems = []
    if not (first.ok and again.ok and again.replayed):
        problems.append(f"add_ng over a corrupt journal: {first.to_dict()} {again.to_dict()}")
    integrity = check_data_root(root)
    problems += integrity.problems
    if integrity.shas("ng").total() != 1:
        problems.append(f"{integrity.shas('ng').total()} NG samples stored for one request")
    if not list(journal.parent.glob("requests.sqlite.corrupt-*")):
        problems.append("the corrupt journal was not kept aside for inspection")
    record_property("tried", 2)
    record_property("failures", len(problems))
    record_property("lost", 0 if integrity.shas("ng").total() else 1)
    record_property("detail", "set aside, a fresh journal recognises duplicates")
    assert not problems, problems


@pytest.mark.reliability("fault", "two agents racing to refit one ROI")
def test_two_agents_refitting_one_roi_at_once(
    tmp_path: Path,
    serve: Callable[..., Server],  # noqa: F811
    record_property: Callable[[str, object], None],
) -> None:
    root = tmp_path / "shared"
    one, two = serve(data_root=root), serve(data_root=root)
    rounds = 3
    pngs = [encode_png(d.image) for d in make_set(seed=81, n_ok=4 * rounds + 2, size=224)]
    pngs, extra = pngs[: 4 * rounds], pngs[4 * rounds :]
    problems: list[str] = []
    for number in range(rounds):
        mine = pngs[4 * number : 4 * number + 2], pngs[4 * number + 2 : 4 * number + 4]
        barrier = threading.Barrier(2)
        replies: dict[int, httpx.Response] = {}

        def send(
            index: int,
            server: Server,
            images: list[bytes],
            barrier: threading.Barrier = barrier,
            replies: dict[int, httpx.Response] = replies,
        ) -> None:
            barrier.wait()
            replies[index] = server.client.post("/fit_ok", data=form(A), files=upload(images))

        threads = [
            threading.Thread(target=send, args=(i, server, images))
            for i, (server, images) in enumerate(zip((one, two), mine, strict=True))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for index, response in sorted(replies.items()):
            if response.status_code != 200:
                problems.append(f"round {number}, agent {index}: {response.text[:200]}")
        if len(replies) != 2:
            problems.append(f"round {number}: {2 - len(replies)} fits never answered")
    problems += _refit_waits_for_the_lock(root, one, two, extra)
    pngs += extra
    integrity = check_data_root(root)
    problems += integrity.problems
    stored = integrity.shas("ok")
    counts = [stored[hashlib.sha256(png).hexdigest()] for png in pngs]
    lost = counts.count(0)
    if any(count > 1 for count in counts):
        problems.append(f"stored more than once: {counts}")
    path = ModelStore(root / "models").find_memory(key_of(A))
    covered = read_memory(path).info.n_samples if path else 0
    if covered != len(pngs):
        # The last save must come from a fit that saw every stored sample.
        problems.append(f"the final memory covers {covered} of {len(pngs)} samples")
    for server in (one, two):
        if infer(server, A, pngs[0]).status_code != 200:
            problems.append("an agent cannot infer after the race")
    record_property("tried", rounds * 2 + 2)
    record_property("failures", len(problems))
    record_property("lost", lost)
    record_property("detail", f"{rounds} rounds; final memory covers {covered}/{len(pngs)}")
    shutil.rmtree(root / "cache", ignore_errors=True)
    assert not problems, problems
    assert lost == 0


def _refit_waits_for_the_lock(
    root: Path, one: Server, two: Server, extra: list[bytes]
) -> list[str]:
    """The schedule the race above rarely hits, made certain: while another process holds
    the ROI's refit lock, agent one's fit stores its image and waits (still answering
    infers); agent two stores a sample meanwhile; once the lock is free, agent one's fit
    builds from both."""
    problems = []
    store = ModelStore(root / "models")
    datasets = DatasetStore(root / "datasets")
    shas = {hashlib.sha256(png).hexdigest() for png in extra}

    def stored() -> set[str]:
        return {s.sha256 for s in datasets.list(key_of(A), "ok")} & shas

    with store.refit_lock(key_of(A)):
        fit = InFlight(lambda: one.client.post("/fit_ok", data=form(A), files=upload(extra[:1])))
        wait_until(lambda: len(stored()) == 1 or fit.done, 60, "agent one to store its image")
        if infer(one, A, extra[0]).status_code != 200:
            problems.append("agent one stopped inspecting while its fit waited for the lock")
        two_form = {**form(A), "memory_fit": "false"}
        if two.client.post("/fit_ok", data=two_form, files=upload(extra[1:])).status_code != 200:
            problems.append("agent two could not store a sample")
        if fit.done:
            problems.append("agent one's fit did not wait for the refit lock")
    fit.join()
    response = fit.response
    total = len(datasets.list(key_of(A), "ok"))
    if response is None or response.status_code != 200:
        problems.append(f"the waiting fit failed: {fit.error or response.text[:200]}")
    elif body_of(response)["n_samples"] != total:
        problems.append(f"the waiting fit covers {body_of(response)['n_samples']} of {total}")
    return problems
