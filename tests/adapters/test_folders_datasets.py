"""GUI dataset roots: refit once per burst, recalibrate with NG images, never touch a file."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from agent.parsing import parse_command
from tests.adapters.test_folders_support import (
    MM,
    FolderAgents,
    discs,
    wait_for,
)


def gui_save(folder: Path, label: str, i: int, png: bytes, mm: float = MM) -> None:
    """What the GUI's dataset manager writes (seed 001): image, then its metadata JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{label}_20251026_1212{i:05d}"
    (folder / f"{name}.png").write_bytes(png)
    meta = {
        "mm_per_px": mm,
        "source": "gui",
        "timestamp_utc": "2025-10-26T12:12:12Z",
        "role_id": folder.parent.parent.name,
        "roi_id": folder.parent.name,
    }
    (folder / f"{name}.json").write_text(json.dumps(meta))


def files_of(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_gui_dataset_root_refits_once_recalibrates_and_stays_untouched(
    agents: FolderAgents, tmp_path: Path
) -> None:
    gui = tmp_path / "gui"
    roi = gui / "Inspection" / "Inspection_1"
    (roi / "ok").mkdir(parents=True)
    agent, adapter, published = agents.make(dataset_roots=[str(gui)])
    for i, png in enumerate(discs(seed=51, n_ok=20)):  # saved one by one, like the GUI
        gui_save(roi / "ok", "OK", i, png)
        time.sleep(0.02)
    fits = wait_for(lambda: published.of("fit_images"), 120, "the refit")
    time.sleep(1.5)  # three debounce periods: a second refit would have started
    assert len(fits) == len(published.of("fit_images")) == 1
    reply, extra, _ = fits[0]
    body = reply.to_dict()
    assert reply.ok and body["n_samples"] == 20 and body["ok_added"] == 0
    assert body["token_shape"] == [8, 8] and body["model_version"]
    assert extra == {"source": "dataset", "path": str(roi)}
    assert not published.of("calibrate_ng")  # no NG images yet
    manifest = agent.bus.execute(
        parse_command("manifest", {"role_id": "Inspection", "roi_id": "Inspection_1"}, "test")
    ).to_dict()
    assert manifest["memory"]["model_version"] == body["model_version"]
    assert manifest["datasets"] == {"ok": 0, "ng": 0}  # the agent stored nothing of its own

    for i, png in enumerate(discs(seed=52, n_ok=0, n_per_defect=1)):
        gui_save(roi / "ng", "NG", i, png)
    calibrations = wait_for(lambda: published.of("calibrate_ng"), 120, "the recalibration")
    time.sleep(1.5)
    assert len(published.of("calibrate_ng")) == 1 and len(published.of("fit_images")) == 1
    calibration = calibrations[0][0].to_dict()
    assert calibration["method"] == "self_scored" and calibration["threshold"] > 0
    assert calibration["n_ok"] == 20 and calibration["n_ng"] == 5
    assert calibration["model_version"] == body["model_version"]
    assert calibrations[0][1]["source"] == "dataset"

    before = files_of(gui)
    agents.stop(agent, adapter)  # a restart over an unchanged root does nothing
    data_root = agent.settings.data_root
    agent, adapter, published = agents.make(data_root=data_root, dataset_roots=[str(gui)])
    time.sleep(2.0)
    assert not published.items

    gui_save(roi / "ok", "OK", 99, discs(seed=53, n_ok=1)[0], mm=0.3)  # another scale
    refusal = wait_for(lambda: published.of("fit_images"), 60, "the refusal")[0][0]
    assert refusal.error is not None and refusal.error.kind == "scale_mismatch"
    assert "OK_20251026_121200099.png" in refusal.error.message
    manifest = agent.bus.execute(
        parse_command("manifest", {"role_id": "Inspection", "roi_id": "Inspection_1"}, "test")
    ).to_dict()
    assert manifest["memory"]["model_version"] == body["model_version"]  # left as it was
    after = files_of(gui)
    assert {k: v for k, v in after.items() if "OK_20251026_121200099" not in k} == before


def test_the_commands_behind_dataset_roots_work_on_the_bus_too(agents: FolderAgents) -> None:
    agent, _, _ = agents.make()
    roi = {"role_id": "r", "roi_id": "g"}

    def send(name: str, **payload: object) -> dict:
        command = parse_command(name, {**roi, **payload}, "test")
        return agent.bus.execute(command, timeout=300).to_dict()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    ok = [b64(png) for png in discs(seed=54, n_ok=6)]
    ng = [b64(png) for png in discs(seed=55, n_ok=0, n_per_defect=1)[:2]]
    body = send("fit_images", mm_per_px=MM, images=ok, names=[f"{i}.png" for i in range(6)])
    assert body["ok_added"] == 0 and body["samples"] == [] and body["n_samples"] == 6
    assert send("manifest")["datasets"] == {"ok": 0, "ng": 0}  # nothing was stored
    calibration = send("calibrate_ng", ok_images=ok, ng_images=ng)
    assert calibration["method"] == "self_scored" and calibration["n_ng"] == 2
    assert calibration["model_version"] == body["model_version"]
    corrupt = send("fit_images", mm_per_px=MM, images=[ok[0], b64(b"junk")], names=["a", "b.png"])
    assert (
        corrupt["error"]["kind"] == "bad_request"
        and "images[1] (b.png)" in corrupt["error"]["message"]
    )
    refit = send("refit")  # nothing stored for this ROI: the memory came from images
    assert refit["error"]["kind"] == "bad_request" and "no OK samples" in refit["error"]["message"]
